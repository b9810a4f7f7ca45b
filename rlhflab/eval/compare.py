"""`rlhflab compare RUN_OR_SWEEP ...`: RL runs side by side (a table, curves, the reward-KL frontier).

Arguments: a sweep folder (runs/x/sweep: all its points, in the manifest's order), a run folder
(runs/x: its ppo stage) or an RL stage folder (runs/x/ppo). Reads only the run directory
contract: each RL run's summary.json, metrics.jsonl and config.yaml (a sweep point's point.yaml).
Writes <out>/compare.json, <out>/compare.md and <out>/figures/compare_*.png; the run report
shows compare.json of <run>/sweep/compare as its "Sweep" section.

Runs may come from someone else, so their files are read as data (rlhflab/eval/run_files.py):
only regular files inside the folder an argument names, never through a symbolic link. The
rule for a run's file that cannot be used (a link, JSON or YAML that does not parse, a YAML tag
such as `!!python/object`, a list where an object goes, a string where a number goes): its
numbers show as missing ("-", "not finished") and a sentence names the file and why; the
comparison still builds. An argument that names no RL run, or a sweep.json without a usable
list of points (it says what to compare), is an RlhfLabError.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlhflab.errors import RlhfLabError
from rlhflab.eval.run_files import (
    HandedFileError,
    read_json_lines,
    read_json_object,
    read_yaml_mapping,
    writable_folder,
)
from rlhflab.io import atomic_write_text, write_json

RL_STAGE = "ppo"  # the stage folder of every RL algorithm (ppo, grpo, rloo)
LAST_STEPS = 10  # clip fraction and approximate KL are averaged over this many last steps
MIN_KL = 0.5  # nats; a run that moved less is left out of "reward per nat": a sampled KL near 0 is mostly noise
DEFAULT_KEYS = ("ppo.algorithm", "ppo.learning_rate", "ppo.kl_coef")  # shown for runs outside a sweep
# metrics.jsonl train keys drawn one figure each: key, title, y label
CURVES = (
    ("score_mean", "Mean reward of the training batches", "reward"),
    ("kl", "KL to the reference model", "KL (nats / response)"),
    ("clip_fraction", "Clip fraction", "share of tokens clipped"),
    ("approx_kl", "Approximate KL between the rollout policy and the updated one", "approx. KL (nats / token)"),
    ("policy_loss", "Policy loss", "loss"),
    ("beta", "KL coefficient β", "β"),
)
NOT_FINISHED = "not finished"
USAGE = ("Pass a sweep folder (runs/NAME/sweep, with sweep.json), a run folder (runs/NAME, with a ppo/ stage) or an "
         "RL stage folder (runs/NAME/ppo, with summary.json or metrics.jsonl).")


@dataclass
class RlRun:
    """One RL run to compare: where it is, what was swept, what it wrote."""

    name: str
    folder: Path  # the RL stage folder (runs/x/ppo); need not exist yet
    swept: dict[str, str] = field(default_factory=dict)  # key -> value as typed (sweep points)
    config: dict | None = None
    summary: dict | None = None
    rows: list[dict] = field(default_factory=list)
    root: Path | None = None  # the folder the argument named: nothing outside it is read (default: folder's parent)
    problems: list[str] = field(default_factory=list)  # files of this run that were not used, and why

    @property
    def finished(self) -> bool:
        return isinstance(self.summary, dict) and isinstance(self.summary.get("end"), dict)


@dataclass
class Comparison:
    folder: Path
    markdown: Path
    json: Path
    text: str  # the table and the sentences, for the terminal
    data: dict


# -- reading --------------------------------------------------------------------------------


def _handed(run: RlRun, read, relative: Path, default=None):
    """read(root, relative) of a run's file; a file that cannot be used (HandedFileError) is
    noted in run.problems and gives `default`. A config we cannot read only costs its columns."""
    try:
        return read(run.root, relative.as_posix())
    except HandedFileError as exc:
        run.problems.append(str(exc))
        return default


def _read(run: RlRun) -> RlRun:
    """Fill in summary, metrics and config: from the finished folder, or what an unfinished run left in <stage>.partial."""
    run.root = run.root or run.folder.parent
    folder = run.folder.relative_to(run.root)  # Path(".") when the argument is the stage folder itself
    partial = folder.with_name(f"{folder.name}.partial") if folder.name else None
    run.summary = _handed(run, read_json_object, folder / "summary.json")
    unfinished = run.summary is None and partial is not None and (run.root / partial).is_dir()
    source = partial if unfinished else folder
    run.rows = _handed(run, read_json_lines, source / "metrics.jsonl", [])
    if run.config is None:
        run.config = (_handed(run, read_yaml_mapping, source / "config.yaml") or (None, None))[1]
    return run


def _is_rl_stage(path: Path) -> bool:
    if path.name in (RL_STAGE, f"{RL_STAGE}.partial"):
        return True
    try:
        summary = read_json_object(path, "summary.json")
    except HandedFileError:
        return False
    return summary is not None and "end" in summary and "evaluations" in summary


def _point_names(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(name, swept key -> value) of each point a sweep.json lists; RlhfLabError naming the file
    when it has no usable list (a name must be one folder inside the sweep)."""
    try:
        manifest = read_json_object(path, "sweep.json")
    except HandedFileError as exc:
        raise RlhfLabError(f"{exc} Rerun the sweep to rewrite it.") from None
    points = manifest.get("points") if manifest else None
    if not isinstance(points, list) or not all(isinstance(p, dict) and "name" in p for p in points):
        raise RlhfLabError(f"{path / 'sweep.json'} has no list of points; rerun the sweep to rewrite it.")
    out = []
    for point in points:
        name, overrides = point["name"], point.get("overrides", [])
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise RlhfLabError(f"{path / 'sweep.json'} lists a point named {name!r}, which is not a folder inside "
                               f"{path}; rerun the sweep to rewrite it.")
        if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
            raise RlhfLabError(f"{path / 'sweep.json'}: the overrides of point {name} are not a list of key=value "
                               "strings; rerun the sweep to rewrite it.")
        out.append((name, dict(item.split("=", 1) for item in overrides if "=" in item)))
    return out


def _is_run(path: Path) -> bool:
    from rlhflab.stages.registry import STAGES

    return any((path / stage).is_dir() or (path / f"{stage}.partial").is_dir() for stage in STAGES)


def resolve(argument: str) -> list[RlRun]:
    """The RL runs one argument names. Raises RlhfLabError naming the argument when it is none of the three."""
    path = Path(argument)
    if not path.is_dir():
        raise RlhfLabError(f"{argument} is not a folder. {USAGE}")
    if os.path.lexists(path / "sweep.json"):
        runs = []
        for name, swept in _point_names(path):
            run = RlRun(name, path / name / RL_STAGE, swept, root=path)
            run.config = (_handed(run, read_yaml_mapping, Path(name, "point.yaml")) or (None, None))[1]
            runs.append(run)
        return runs
    if _is_rl_stage(path):
        stage = path.name in (RL_STAGE, f"{RL_STAGE}.partial")
        name = path.resolve().parent.name if stage else path.resolve().name
        folder = path.with_name(RL_STAGE) if path.name == f"{RL_STAGE}.partial" else path
        # runs/x/ppo(.partial): runs/x is the run handed over; a stage folder of another name is its own root
        return [RlRun(name, folder, root=path.parent if stage else path)]
    if _is_run(path):
        return [RlRun(path.resolve().name, path / RL_STAGE, root=path)]
    raise RlhfLabError(f"{argument} holds no sweep.json, no stage folders and no RL summary. {USAGE}")


def collect(arguments: Sequence[str]) -> tuple[list[RlRun], list[str]]:
    """(runs, swept keys) of every argument, each run read; names made unique."""
    if not arguments:
        raise RlhfLabError(f"Nothing to compare. {USAGE}")
    runs: list[RlRun] = []
    keys: list[str] = []
    plain = False
    for argument in arguments:
        found = resolve(argument)
        sweep = (Path(argument) / "sweep.json").is_file()
        plain = plain or not sweep
        for run in found:
            if sweep:
                keys += [k for k in run.swept if k not in keys]
            runs.append(_read(run))
    if plain or not keys:
        keys += [k for k in DEFAULT_KEYS if k not in keys]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # the same point name in two sweeps, or a run given twice
        for run in runs:
            run.name = run.folder.parent.as_posix()
    return runs, keys


# -- numbers ----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite number from a run's file, else None (a string, a list, NaN, an int beyond float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _by_step(rows: list[dict], split: str) -> list[dict]:
    """Rows of one split (rows without a split are train rows), one per step (the last logged), by step."""
    out: dict[int, dict] = {}
    for row in rows:
        step = _number(row.get("step"))
        if row.get("split", "train") == split and step is not None:
            out[int(step)] = row
    return [out[step] for step in sorted(out)]


def evaluations(run: RlRun) -> list[dict]:
    """The held-out evaluations, by step: metrics.jsonl's eval rows, else summary.json's list."""
    rows = _by_step(run.rows, "eval")
    if rows:
        return rows
    listed = (run.summary or {}).get("evaluations")
    listed = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
    return sorted(listed, key=lambda e: _number(e.get("step")) or 0.0)


def reward_key(runs: Sequence[RlRun]) -> str:
    """positive_probability when every run with evaluations has it, else score (one scale for all)."""
    having = [evaluations(r) for r in runs]
    having = [e for e in having if e]
    if having and all(any("positive_probability" in row for row in e) for e in having):
        return "positive_probability"
    return "score"


def _mean_last(rows: list[dict], key: str) -> float | None:
    values = [v for v in (_number(r.get(key)) for r in rows[-LAST_STEPS:]) if v is not None]
    return statistics.fmean(values) if values else None


def numbers(run: RlRun, key: str) -> dict:
    """The table's numbers for one run (None where a run has not got that far)."""
    evals = [e for e in evaluations(run) if _number(e.get(key)) is not None]
    train = _by_step(run.rows, "train")
    out: dict[str, Any] = {"name": run.name, "folder": str(run.folder), "finished": run.finished, "swept": run.swept}
    best = max(evals, key=lambda e: float(e[key]), default=None)
    out["best_reward"] = _number(best[key]) if best else None
    out["best_step"] = best.get("step") if best else None
    out["clip_fraction_last"] = _mean_last(train, "clip_fraction")
    out["approx_kl_last"] = _mean_last(train, "approx_kl")
    steps = _number((run.summary or {}).get("steps")) if run.finished else (_number(train[-1]["step"]) if train else None)
    out["steps"] = None if steps is None else int(steps)
    out["seconds"] = _number((run.summary or {}).get("seconds")) if run.finished else None
    start = _dict((run.summary or {}).get("start")) if run.finished else (evals[0] if evals else {})
    end = _dict((run.summary or {}).get("end")) if run.finished else {}
    out["start_reward"] = _number(start.get(key))
    out["final_reward"] = _number(end.get(key))
    out["final_kl"] = _number(end.get("kl"))
    gain = None if out["final_reward"] is None or out["start_reward"] is None else out["final_reward"] - out["start_reward"]
    out["reward_gain"] = gain
    out["reward_per_kl"] = gain / out["final_kl"] if gain is not None and out["final_kl"] else None
    return out


# -- the table --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)  # YAML dates are not JSON


def _pick(tree: dict | None, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _column_labels(keys: Sequence[str]) -> list[str]:
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return [k if leaves.count(leaf) > 1 else leaf for k, leaf in zip(keys, leaves)]


def table(runs: Sequence[RlRun], keys: Sequence[str], reward: str, rows: Sequence[dict], *, sweep: bool) -> tuple[list[str], list[list[str]]]:
    label = "P(positive)" if reward == "positive_probability" else "reward"
    header = ["point" if sweep else "run", *_column_labels(keys), f"final {label}", f"best {label}", "final KL",
              f"clip fraction (last {LAST_STEPS})", f"approx. KL (last {LAST_STEPS})", "steps", "seconds"]
    body = []
    for run, n in zip(runs, rows):
        swept = [run.swept[k] if k in run.swept else _value(_pick(run.config, k)) for k in keys]
        best = "-" if n["best_reward"] is None else f"{n['best_reward']:.3f} (step {n['best_step']})"
        final = _fmt(n["final_reward"]) if run.finished else NOT_FINISHED
        steps = "-" if n["steps"] is None else (str(n["steps"]) if run.finished else f"{n['steps']} so far")
        body.append([run.name, *swept, final, best, _fmt(n["final_kl"], 2), _fmt(n["clip_fraction_last"]),
                     _fmt(n["approx_kl_last"], 4), steps, _fmt(n["seconds"], 0)])
    return header, body


def sentences(rows: Sequence[dict], reward: str) -> list[str]:
    label = "P(positive)" if reward == "positive_probability" else "reward"
    done = [n for n in rows if n["finished"] and n["final_reward"] is not None]
    out = []
    if not done:
        out.append("No run has finished yet: there is nothing to rank.")
    else:
        best = max(done, key=lambda n: n["final_reward"])
        out.append(f"{best['name']} has the highest final held-out {label}: {best['final_reward']:.3f}.")
        efficient = [n for n in done if n["reward_per_kl"] is not None and n["final_kl"] >= MIN_KL]
        if efficient:
            top = max(efficient, key=lambda n: n["reward_per_kl"])
            out.append(f"Of the runs that moved at least {MIN_KL} nats from their start, {top['name']} gains the most "
                       f"{label} per nat of KL: {top['reward_gain']:+.3f} over its start at a final KL of "
                       f"{top['final_kl']:.2f} ({top['reward_per_kl']:.3f} per nat).")
    left = [n["name"] for n in rows if not n["finished"]]
    if left:
        out.append(f"Not finished: {', '.join(left)}.")
    return out


def problems(runs: Sequence[RlRun]) -> list[str]:
    """A sentence per file of a run that was not used (the rule in the module docstring)."""
    return [f"Left out of {run.name}: {problem}" for run in runs for problem in run.problems]


def _plain_table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown pipe table with aligned columns, for the terminal."""
    cells = [header, *body]
    widths = [max(len(str(row[i]).replace("|", "\\|")) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).replace("|", "\\|").ljust(w) for c, w in zip(row, widths)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


# -- figures -----------------------------------------------------------------------------------


def _figures(runs: Sequence[RlRun], reward: str, folder: Path) -> list[dict]:
    from rlhflab.eval import plots

    label = "P(positive)" if reward == "positive_probability" else "reward"
    written = []
    train = {run.name: _by_step(run.rows, "train") for run in runs}
    for key, title, ylabel in CURVES:
        # only finite numbers reach the plot: a handed metrics.jsonl may hold anything
        series = {name: [{"step": _number(r["step"]), key: _number(r.get(key))} for r in rows
                         if _number(r.get(key)) is not None] for name, rows in train.items()}
        if not any(series.values()):
            continue  # no run logged it (e.g. an algorithm without that statistic)
        path = plots.runs_metric(series, key, folder / f"compare_{key}.png", title=title, ylabel=ylabel)
        written.append({"path": path, "caption": f"{title} ({key} in metrics.jsonl) per step, one colour per run; "
                                                 f"thick lines are rolling means where a run has enough steps."})
    frontier = {}
    for run in runs:
        pairs = [(_number(e.get("kl")), _number(e.get(reward))) for e in evaluations(run)]
        frontier[run.name] = [(kl, value) for kl, value in pairs if kl is not None and value is not None]
    if any(frontier.values()):
        path = plots.reward_kl_frontier(frontier, folder / "compare_frontier.png", ylabel=f"held-out {label}")
        written.append({"path": path, "caption": f"Held-out {label} against KL to the reference at each evaluation, "
                                                 f"one line per run; the star is its last evaluation."})
    for old in folder.glob("compare_*.png"):  # a metric no run logs any more
        if old.resolve() not in {Path(w["path"]).resolve() for w in written}:
            old.unlink(missing_ok=True)
    return written


# -- the whole comparison -----------------------------------------------------------------------


def compare(arguments: Sequence[str], out: str | Path | None = None) -> Comparison:
    """Compare the RL runs of `arguments`; write compare.json, compare.md and figures into `out`
    (default: <first argument>/compare). Raises RlhfLabError for an argument that names no RL run."""
    from rlhflab.eval.document import Code, Document, Heading, Image, Table, para, to_markdown

    runs, keys = collect([str(a) for a in arguments])
    if out is None:  # inside the first argument: its compare/ must be a real folder, not a link to elsewhere
        writable_folder(Path(arguments[0]), "compare/figures")
    out = Path(out) if out is not None else Path(arguments[0]) / "compare"
    reward = reward_key(runs)
    rows = [numbers(run, reward) for run in runs]
    sweep = all((Path(a) / "sweep.json").is_file() for a in arguments)
    header, body = table(runs, keys, reward, rows, sweep=sweep)
    said = sentences(rows, reward) + problems(runs)
    figures = _figures(runs, reward, out / "figures")

    doc = Document("rlhflab compare")
    doc.add(para("Compared: ", *[part for a in arguments for part in (Code(str(a)), " ")]))
    doc.add(Table(header, body, left=1 + len(keys),
                  caption=f"Held-out {'P(positive)' if reward == 'positive_probability' else 'reward'}: the final "
                          f"evaluation and the best one (with its step); KL to the reference model at the end (nats "
                          f"per response); clip fraction and approximate KL averaged over the last {LAST_STEPS} steps."))
    doc.add(*(para(s) for s in said))
    if figures:
        doc.add(Heading("Curves"))
        doc.add(*(Image(Path(f["path"]), f["caption"]) for f in figures))
    data = {
        "sources": [str(a) for a in arguments],
        "reward": reward,
        "columns": list(keys),
        "header": header,
        "rows": body,
        "sentences": said,
        "runs": rows,
        "figures": [{"path": Path(f["path"]).relative_to(out).as_posix(), "caption": f["caption"]} for f in figures],
    }
    json_path, md_path = out / "compare.json", out / "compare.md"
    write_json(json_path, data)
    atomic_write_text(md_path, to_markdown(doc, out))
    text = "\n".join([_plain_table(header, body), "", *said])
    return Comparison(out, md_path, json_path, text, data)
