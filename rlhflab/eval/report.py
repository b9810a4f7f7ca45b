"""`rlhflab report RUN_DIR`: report.md and one self-contained report.html from a run's stage folders.

Reads only the run directory contract (DESIGN.md): each stage's summary.json, metrics.jsonl,
samples.jsonl and config.yaml (and dpo's pairs.jsonl and ilql's eval_after.jsonl), plus
the run's own human ratings (`human/<task>/rating_summary.json`). No model is loaded, so a
report of any run builds in seconds on a laptop. Any stage may be missing; its section then
says so and names the command that produces it.

This module is the page: the overview, each stage's section in the pipeline's order, the sweep,
the human ratings and the configs. What a stage shows (its section, its overview rows) is its own
module, rlhflab/eval/sections/<stage>.py, which rlhflab/stages/registry.py names.

A run folder may come from someone else, so it is read as data (rlhflab/eval/run_files.py): only
regular files inside it are read or embedded, never a symbolic link or a figure path that is
absolute or climbs out with `..`. The rule for a file that cannot be used (such a path, JSON or
YAML that does not parse, a YAML tag such as `!!python/object`, a list where an object goes, a
string where a number goes): what it feeds is shown as missing, with a note naming the file and
why, and the rest of the report still builds (exit 0). Only a run folder that is no run at all, or
an output folder that is a link, is an error (RlhfLabError).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhflab.config import Config
from rlhflab.errors import RlhfLabError
from rlhflab.eval.document import Block, Code, Document, Heading, Preformatted, Table, para, to_html, to_markdown
from rlhflab.eval.run_files import (
    SHAPE_ERRORS,
    HandedFileError,
    debug,
    first_line,
    read_json_object,
    run_file,
    writable_folder,
)
from rlhflab.eval.sections.base import (
    Figures,
    Stage,
    _command,
    _listed_images,
    _num,
    _number,
    _problems,
    _seconds,
    load_stage,
    yaml_config,
)
from rlhflab.io import atomic_write_text
from rlhflab.stages.registry import RENAMED, STAGES, stage_folders  # each stage's title, overview rows and section


# -- human ratings, configs, overview -----------------------------------------------------


def _inline(text: str) -> tuple[str | Code, ...]:
    """A Markdown line's `code` spans as Code parts, the rest as text."""
    pieces = re.split(r"`([^`]*)`", text)
    return tuple(Code(p) if i % 2 else p for i, p in enumerate(pieces) if p)


def markdown_blocks(text: str) -> list[Block]:
    """The small Markdown the format_* helpers return (paragraphs and pipe tables, separated
    by blank lines) as blocks, so it renders natively and escaped in both outputs."""
    blocks: list[Block] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in chunk.splitlines() if line.strip()]
        if len(lines) >= 2 and all(line.startswith("|") and line.endswith("|") for line in lines):
            cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines]
            body = [row for row in cells[1:] if not all(re.fullmatch(r":?-{3,}:?", c) for c in row)]
            blocks.append(Table(cells[0], body, numeric=False))
        elif lines:
            blocks.append(para(*_inline(" ".join(lines))))
    return blocks


def _json_value(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "-" if value is None else str(value)


def _records_table(records: list[dict], caption: str | None = None) -> Table:
    columns = list(dict.fromkeys(k for r in records for k in r))
    return Table(columns, [[_json_value(r.get(c)) for c in columns] for r in records[:200]], caption=caption, numeric=False)


def json_tables(data: Any) -> list[Block]:
    """Any JSON document as tables: top-level values as a key/value table, lists of objects
    and objects of objects as tables of their own."""
    if isinstance(data, list):
        if data and all(isinstance(r, dict) for r in data):
            return [_records_table(data)]
        return [Table(["value"], [[_json_value(v)] for v in data[:200]], numeric=False)]
    if not isinstance(data, dict):
        return [para(_json_value(data))]
    blocks: list[Block] = []
    simple = [[k, _json_value(v)] for k, v in data.items()
              if not (isinstance(v, list) and v and all(isinstance(r, dict) for r in v))
              and not (isinstance(v, dict) and v and all(isinstance(r, dict) for r in v.values()))]
    if simple:
        blocks.append(Table(["field", "value"], simple, numeric=False))
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            blocks.append(_records_table(value, caption=key))
        elif isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            blocks.append(_records_table([{"name": k, **r} for k, r in value.items()], caption=key))
    return blocks


def _rating_formatter():
    """The rating app's own table formatter (rlhflab.human), when it is importable."""
    try:
        from rlhflab.human.summary import format_rating_table
    except ImportError:
        return None
    return format_rating_table


def ratings_section(run_root: Path) -> list[Block]:
    """The run's own human ratings: `<run>/human/<task>/rating_summary.json`, which `rlhflab rate
    summary` writes for a task made from this run's samples. Ratings of other runs live in theirs,
    so none show here; files that may not be read (see run_files) are named in a note."""
    blocks: list[Block] = [Heading("Human ratings", anchor="ratings")]
    found, notes = [], []
    try:
        human = run_file(run_root, "human", folder=True)
        tasks = sorted(entry.name for entry in os.scandir(human)) if human else []
    except (HandedFileError, OSError) as exc:
        notes.append(para(f"Left out: {first_line(exc)}", note=True))
        tasks = []
    for task in tasks:
        relative = f"human/{task}/rating_summary.json"
        try:
            data = read_json_object(run_root, relative)
        except HandedFileError as exc:
            notes.append(para(f"Left out: {exc}", note=True))
            continue
        if data is not None:
            found.append((str(data.get("created_at") or ""), task, run_root / relative, data))
    if not found:
        return blocks + notes + [para(
            f"No human ratings of this run ({run_root / 'human'} holds no rating_summary.json). Rate its samples with "
            f"`rlhflab rate create --from-samples {run_root / 'evaluate' / 'samples.jsonl'}` and the web app, then "
            "`rlhflab rate summary` writes them here.", note=True)]
    formatter = _rating_formatter()
    for _, _, path, data in sorted(found, key=lambda f: f[:2]):  # oldest task first
        blocks.append(para("From ", Code(str(path)), "."))
        text = None
        if formatter is not None:
            try:
                text = formatter(data)
            except Exception:  # noqa: BLE001 -- a summary of another schema must not cost the whole report: show it generically
                text = None
        blocks += markdown_blocks(text) if isinstance(text, str) and text.strip() else json_tables(data)
    return blocks + notes


def configs_section(stages: dict[str, Stage]) -> list[Block]:
    blocks: list[Block] = [Heading("Configs", anchor="configs")]
    found = [s for s in stages.values() if s.config is not None]
    unused = [para(f"Left out: {p}", note=True) for s in stages.values() for p in s.problems
              if p.startswith(str(s.path / "config.yaml"))]
    if not found:
        return blocks + unused + [para("No stage left a usable config.yaml.", note=True)]
    blocks.append(para("The resolved config each stage ran with (its config.yaml)."))
    return blocks + unused + [Preformatted(s.config, summary=f"{s.path.name}/config.yaml", language="yaml") for s in found]


def _headline(stages: dict[str, Stage]) -> tuple[list[list[str]], str]:
    """[stage, metric, before, after] rows: the numbers a reader looks for first, and the table's
    caption, which says what before and after are for the stages that gave rows. A summary whose
    values have other types than these read gives no rows; its own section says why."""
    rows, compares = [], []
    for name, declared in STAGES.items():
        if stages[name].summary:
            try:
                found = declared.report_rows(stages[name].summary, name)
            except SHAPE_ERRORS:
                if debug():
                    raise
                continue
            rows += found
            if found and declared.compares and declared.compares not in compares:
                compares.append(declared.compares)
    if not compares:
        return rows, "The headline numbers of the finished stages."
    last = compares.pop()
    joined = ", ".join(compares) + (", and " if len(compares) > 1 else " and " if compares else "")
    return rows, f"Before → after: {joined}{last}."


def overview_section(run_root: Path, stages: dict[str, Stage]) -> list[Block]:
    blocks: list[Block] = [Heading("Overview", anchor="overview"),
                           para("Run ", Code(run_root.name), " in ", Code(str(run_root)), ", report built "
                                f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC.")]
    rows, total = [], 0.0
    for name in pipeline_stages(stages):
        stage = stages[name]
        if stage.done:
            status = "done"
            seconds = _number(stage.summary.get("seconds") if isinstance(stage.summary, dict) else stage.summary.seconds)
            total += seconds or 0.0
        else:
            status = ("left out (see its section)" if stage.problems else "incomplete") if stage.exists else "not run"
            seconds = None
        rows.append([STAGES[name].title, status, _seconds(seconds), str(stage.path)])
    rows.append(["total", "", _seconds(total), ""])
    blocks.append(Table(["stage", "status", "wall time", "folder"], rows, numeric=False,
                        caption="Wall time: the seconds field of each stage's summary.json."))
    missing = [n for n in pipeline_stages(stages) if not stages[n].done]
    if missing:
        blocks.append(para("Not finished: " + ", ".join(missing) + ". ", Code(_command("pipeline", run_root)),
                           " runs (or resumes) the stages that are missing.", note=True))
    headline, caption = _headline(stages)
    if headline:
        blocks.append(Table(["stage", "headline", "before", "after"], headline, left=2, caption=caption))
    return blocks


# -- the report ---------------------------------------------------------------------------


def pipeline_stages(stages: dict[str, Stage]) -> list[str]:
    """The stages this run's pipeline has (its configs' `stages` list), plus any stage folder present."""
    listed = None
    for stage in stages.values():
        listed = (yaml_config(stage) or {}).get("stages")
        if isinstance(listed, list) and listed:
            break
        listed = None  # none, or not a list of stage names
    listed = listed or Config().stages  # a run from before stages was a setting: the default pipeline
    listed = [RENAMED.get(name, name) if isinstance(name, str) else name for name in listed]  # ppo: rl
    return [name for name in STAGES if name in listed or stages[name].exists]


def sweep_section(run_root: Path) -> list[Block]:
    """`rlhflab sweep` under this run: the table and figures of <run>/sweep/compare/compare.json
    (rlhflab/eval/compare.py); nothing when there is none."""
    relative = "sweep/compare/compare.json"
    path = run_root / relative
    if not os.path.lexists(path):
        return []
    blocks: list[Block] = [Heading("Sweep", anchor="sweep"),
                           para("The points of the sweep in ", Code(str(path.parents[1])), ", each its own run; from ",
                                Code(str(path)), " (", Code(f"rlhflab compare {path.parents[1]}"), " rebuilds it).")]
    try:
        data = read_json_object(run_root, relative)
    except HandedFileError as exc:
        return blocks + [para(f"Left out: {exc}", note=True)]
    if not data or not data.get("header"):
        return blocks + [para(f"{path} holds no table; rerun the sweep or rlhflab compare.", note=True)]
    try:
        # one table per reward that scored the points (compare.py never puts two rewards in one column),
        # each with its seeds' means and ranges where a setting ran several
        tables = data.get("tables") or [{"header": data["header"], "rows": data.get("rows")}]
        for table in tables:
            scored = f" Scored with {table['reward']}." if len(tables) > 1 else ""
            blocks.append(Table([str(h) for h in table["header"]], [[str(c) for c in row] for row in table.get("rows") or []],
                                left=1 + len(data.get("columns") or []),
                                caption="Held-out reward at the last and the best evaluation, KL to the reference at the "
                                        f"end, clip fraction and approximate KL over the last steps, per point.{scored}"))
            if table.get("seeds"):
                blocks.append(Table([str(h) for h in table["seeds"]["header"]],
                                    [[str(c) for c in row] for row in table["seeds"]["rows"]], left=1,
                                    caption=f"Settings run with several seeds: mean and range over the seeds.{scored}"))
        blocks += [para(str(sentence)) for sentence in data.get("sentences") or []]
        figures = [(str(f.get("path", "")), str(f.get("caption", ""))) for f in data.get("figures") or []]
    except SHAPE_ERRORS as exc:
        if debug():
            raise
        return blocks[:2] + [para(f"Left out: {path} does not have the shape of compare.json ({first_line(exc)}).",
                                  note=True)]
    blocks += _listed_images(run_root, "sweep/compare", figures)
    return blocks


def _section(build, stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    """A stage's section with a note per file of it that was left out; a summary whose values
    have other types than the section reads leaves the section out with a note (the rule in
    the module docstring), not a traceback."""
    try:
        blocks = build(stage, run_root, figures)
    except SHAPE_ERRORS as exc:
        if debug():
            raise
        stage.problems.append(f"{stage.path / 'summary.json'} (or metrics.jsonl, samples.jsonl, config.yaml beside it) "
                              f"does not have the shape this report reads ({first_line(exc)}), so its section is left out.")
        stage.summary = None
        blocks = [Heading(STAGES[stage.name].title, anchor=stage.name)]
    return blocks[:1] + _problems(stage) + blocks[1:]


def build_report(run_root: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.html and report.md (plus figures/*.png) for `run_root` = runs/<name>, into
    `out_dir` (default run_root/report); returns (html path, markdown path)."""
    run_root = Path(run_root)
    if not run_root.is_dir():
        raise RlhfLabError(f"{run_root} is not a folder. Pass a run folder such as runs/default "
                           "(runs_dir/name, with sft/, reward/, rl/ or evaluate/ inside).")
    stages = {name: load_stage(run_root, name) for name in STAGES}
    if not any(s.exists for s in stages.values()) and not (run_root / "sweep" / "sweep.json").is_file():
        runs = sorted(d.name for d in run_root.iterdir() if d.is_dir() and any((d / x).is_dir() for x in stage_folders()))
        hint = (f"It holds the runs {', '.join(runs)}: pass one of them, e.g. {run_root / runs[0]}." if runs
                else "Run a stage first (e.g. `rlhflab sft name=NAME`) and pass its runs/NAME folder.")
        raise RlhfLabError(f"{run_root} has none of the stage folders {', '.join(STAGES)}: nothing to report. {hint}")
    if out_dir is None:  # inside the handed run: its report/ must be a real folder, not a link to elsewhere
        writable_folder(run_root, "report/figures")
    out_dir = Path(out_dir) if out_dir is not None else run_root / "report"
    figures = Figures(out_dir / "figures")

    doc = Document(f"rlhflab report: {run_root.name}")
    built = [_section(STAGES[name].report_section, stages[name], run_root, figures) for name in pipeline_stages(stages)]
    doc.add(*overview_section(run_root, stages))  # after the sections: a section left out is not "done"
    for blocks in built:
        doc.add(*blocks)
    doc.add(*sweep_section(run_root))
    doc.add(*ratings_section(run_root))
    doc.add(*configs_section(stages))

    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, to_markdown(doc, out_dir))
    atomic_write_text(html_path, to_html(doc))
    figures.remove_stale()
    return html_path, md_path
