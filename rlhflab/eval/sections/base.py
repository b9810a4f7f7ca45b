"""What every report section reads and writes with: a stage folder read as data (`Stage`,
`load_stage`, through rlhflab/eval/run_files.py), number formatting, the figures folder
(`Figures`) and the notes for a stage that is missing or was left out."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable

from rlhflab.errors import RlhfLabError
from rlhflab.eval.document import Block, Code, Image, Table, para
from rlhflab.eval.run_files import HandedFileError, read_json_lines, read_json_object, read_yaml_mapping, run_file
from rlhflab.stages.registry import STAGES, stage_dir


SPLITS = ("train", "validation", "test")


SAMPLES_PER_SENTIMENT = 3


SAMPLE_CHARS = 400  # responses longer than this are cut in the side-by-side tables


@dataclass
class Stage:
    name: str
    path: Path
    summary: Any = None  # its summary.json as the registry's type for it (rlhflab/summaries.py), or None
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    config: str | None = None
    config_data: dict | None = None
    problems: list[str] = field(default_factory=list)  # files of this stage that were not used, and why

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def done(self) -> bool:
        return self.summary is not None


def load_stage(run_root: Path, name: str) -> Stage:
    """A stage's files, each through run_files; one that cannot be used is left out and said in
    `problems` (a summary.json left out, or one without the keys and types of its stage's summary
    type, makes the stage not done). A run made before a stage was renamed has its folder under
    the old name (registry.stage_dir)."""
    stage = Stage(name, stage_dir(run_root, name))
    if not stage.exists:
        return stage
    folder = stage.path.name
    try:
        run_file(run_root, folder, folder=True)
    except HandedFileError as exc:
        stage.problems.append(str(exc))
        return stage
    try:
        data = read_json_object(run_root, f"{folder}/summary.json")
        stage.summary = None if data is None else STAGES[name].parse_summary(data, stage.path / "summary.json")
    except RlhfLabError as exc:  # HandedFileError, or a summary of another shape (rlhflab/summaries.py)
        stage.problems.append(str(exc))
    for attribute, file in (("rows", "metrics.jsonl"), ("samples", "samples.jsonl")):
        try:
            setattr(stage, attribute, read_json_lines(run_root, f"{folder}/{file}"))
        except HandedFileError as exc:
            stage.problems.append(str(exc))
    try:
        stage.config, stage.config_data = read_yaml_mapping(run_root, f"{folder}/config.yaml") or (None, None)
    except HandedFileError as exc:
        stage.problems.append(str(exc))
    return stage


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int):
        return str(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _text(value: Any, missing: str = "-") -> str:
    """A summary's value as text, `missing` for one it does not hold (None)."""
    return missing if value is None else str(value)


def _signed(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:+.3f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _number(value: Any) -> float | None:
    """A finite number from a handed summary, else None (a string, a list, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.0f} s" if value < 90 else f"{value:.0f} s ({value / 60:.1f} min)"


def _params(parameters: Any) -> str:
    """`{"trainable": t, "total": n}` or a bare count."""
    if isinstance(parameters, dict):
        total, trainable = parameters.get("total"), parameters.get("trainable")
        if total and trainable is not None:
            return f"{trainable:,} trainable of {total:,} ({trainable / total:.1%})"
        return "-"
    return "-" if parameters is None else f"{parameters:,} ({parameters / 1e6:.1f} M)"


def _short(text: Any, limit: int = SAMPLE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _command(stage: str, run_root: Path) -> str:
    """The command that (re)creates a stage folder of this run."""
    command = f"rlhflab {stage} name={run_root.name}"
    runs_dir = run_root.parent
    if runs_dir.as_posix() not in ("runs", "./runs"):
        command += f" runs_dir={runs_dir.as_posix()}"
    return command


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


class Figures:
    """Draws PNGs into one folder and remembers which it wrote (the rest are stale)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: set[Path] = set()

    def draw(self, function, name: str, *args, caption: str, **kwargs) -> Block:
        """The figure as an Image block; data a plot refuses (nothing to draw) becomes a note
        instead of costing the whole report."""
        try:
            path = function(*args, self.folder / f"{name}.png", **kwargs)
        except RlhfLabError as exc:
            return para(f"Figure {name} was not drawn: {exc}", note=True)
        self.written.add(path.resolve())
        return Image(path, caption)

    def remove_stale(self) -> None:
        """Delete figures an earlier build drew that this one did not (a stage since removed);
        only names this module writes, in case --out points at a folder holding other PNGs."""
        for old in self.folder.glob("*.png"):
            if old.name.startswith(tuple(stage.figure_prefix for stage in STAGES.values())) and \
                    old.resolve() not in self.written:
                old.unlink(missing_ok=True)


def _stage_lines(stage: Stage, file: str) -> list[dict]:
    """The rows of another JSON-lines file of the stage ([] and a note when it may not be read)."""
    try:
        return read_json_lines(stage.path.parent, f"{stage.path.name}/{file}")
    except HandedFileError as exc:
        stage.problems.append(str(exc))
        return []


def _problems(stage: Stage) -> list[Block]:
    return [para(f"Left out: {problem}", note=True) for problem in stage.problems]


def _not_run(stage: Stage, run_root: Path) -> list[Block]:
    """What to say for a stage without a usable summary.json."""
    command = _command(stage.name, run_root)
    if stage.path.is_symlink() or os.path.lexists(stage.path / "summary.json"):
        return []  # there but not used: the notes at the top of the section say why
    if not stage.exists:
        return [para(f"Not run: {stage.path} does not exist. Produce it with ", Code(command), ".", note=True)]
    return [para(f"Not run to the end: {stage.path} has no summary.json (the run was interrupted or is still "
                 "going). Continue it with ", Code(command + " --resume"), ".", note=True)]


def _unfinished(stage: Stage, run_root: Path, curves: Callable[[str], Block], caption: str) -> list[Block]:
    """A stage without a usable summary.json: how to finish it (`_not_run`), then its training
    curves so far, `curves(caption)`, when its metrics.jsonl has rows."""
    return _not_run(stage, run_root) + ([curves(caption)] if stage.rows else [])


def _facts(pairs: list[tuple[str, Any]]) -> Table:
    return Table(["fact", "value"], [[k, v if isinstance(v, str) else _num(v)] for k, v in pairs if v is not None],
                 numeric=False)


def _splits(by_split: dict) -> list[str]:
    """The keys of a per-split dict, train / validation / test first."""
    return [x for x in SPLITS if x in by_split] + [x for x in by_split if x not in SPLITS]


def _split_table(by_split: dict, header: list[str], cells, caption: str) -> Table:
    """A row per split of `by_split` (train / validation / test first): its name, then cells(split, its metrics)."""
    return Table(["split", *header], [[n, *cells(n, by_split[n])] for n in _splits(by_split)], caption=caption)


def _counts(by_split: dict) -> str:
    return " / ".join(f"{split} {by_split[split]}" for split in SPLITS if split in by_split) or "-"


def _change(a: Any, b: Any) -> str:
    return _signed(b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"


def yaml_config(stage: Stage) -> dict | None:
    """The stage's config.yaml as data (read with the safe loader); None when it has none or it
    could not be used."""
    return stage.config_data


def _listed_images(root: Path, folder: str, figures: list[tuple[str, str]]) -> list[Block]:
    """Image blocks of the PNGs a handed file lists (paths relative to `root / folder`): only
    regular files inside `root`, checked by run_file; any other is a note, never embedded."""
    blocks: list[Block] = []
    for relative, caption in figures:
        try:
            image = run_file(root, PurePath(folder, relative))  # an absolute `relative` stays absolute: refused
        except HandedFileError as exc:
            blocks.append(para(f"Figure {caption or relative} skipped: {exc}", note=True))
            continue
        if image is not None and image.suffix == ".png":
            blocks.append(Image(image, caption))
    return blocks
