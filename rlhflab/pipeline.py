"""`rlhflab pipeline`: the config's stages in the registry's order (SFT -> reward model -> RL ->
evaluation by default), then the report; one config, resumable.

Each stage writes `runs/<name>/<stage>/`. A finished stage whose key is unchanged (the same
settings, the same data bytes, the same upstream runs: rlhflab/stages/registry.py) is skipped;
an interrupted one with the same config and key resumes from its checkpoint; any other runs
again, and then so does every stage that read its output.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import yaml

from rlhflab.config import Config, parse_yaml, to_dict, upgrade_names
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.interrupt import stop_at_once, stop_with_parent
from rlhflab.io import RunDir, read_json
from rlhflab.stages.common import one_writer, run_stage
from rlhflab.stages.registry import STAGES, current_stage, stage_dir, stage_key
from rlhflab.summaries import dropped

def _stored_key(folder: Path) -> str | None:
    try:
        return read_json(folder / "stage.json").get("key")
    except (RlhfLabError, AttributeError):
        return None


def stage_state(cfg: Config, stage: str) -> str:
    """'done' (finished with this key), 'partial' (same config and key, checkpoint to resume), 'stale' or 'missing'."""
    run_dir = RunDir(stage_dir(Path(cfg.runs_dir) / cfg.name, stage))
    run_dir.recover()
    key = stage_key(cfg, stage)["key"]
    if run_dir.is_finished() and _stored_key(run_dir.final) == key:
        return "done"
    partial = run_dir.partial
    if run_dir.has_checkpoint(partial) and _stored_key(partial) == key and (partial / "config.yaml").exists():
        try:
            saved = upgrade_names(parse_yaml((partial / "config.yaml").read_text(encoding="utf-8")))
            same = _stage_view(saved) == _stage_view(to_dict(cfg))
        except (yaml.YAMLError, UnicodeDecodeError):  # not plain YAML (e.g. a Python tag): not resumable
            same = False
        if same:
            return "partial"
    return "stale" if run_dir.final.exists() or partial.exists() else "missing"


def _stage_view(tree: dict) -> dict:
    """A config as one stage sees it: the frontier section (which runs other runs, and came later) left out."""
    return {key: value for key, value in tree.items() if key != "frontier"} if isinstance(tree, dict) else tree


def run(cfg: Config, *, force: str | None = None, progress: bool = True, echo: Callable[[str], None] = print,
        only: Sequence[str] | None = None, report: bool = True) -> Path:
    """Run every stage that is not up to date; returns the path of report.html.

    `only`: just these of cfg.stages (`rlhflab sweep` runs the stages its points share this way);
    `report=False`: no report, and the run folder is returned instead.
    Under `accelerate launch` every process runs this; the main one decides what is up to date
    (and tells the others), prints, and builds the report."""
    from rlhflab.engine.runtime import Runtime

    if cfg.frontier.points is not None:
        raise RlhfLabError("This config lists frontier points, each a run of its own: run it with `rlhflab pipeline "
                           "--config FILE` (rlhflab.sweep.run(..., frontier=True)), which runs them all and draws them.")
    force = force if force is None else current_stage(force, "--force {}")
    if force is not None and force not in (*STAGES, "report"):
        raise RlhfLabError(f"--force takes one of {', '.join((*STAGES, 'report'))}; got {force!r}.")
    if only is not None and set(only) - set(STAGES):
        raise RlhfLabError(f"Unknown stages {', '.join(sorted(set(only) - set(STAGES)))}; stages are {', '.join(STAGES)}.")
    root = Path(cfg.runs_dir) / cfg.name
    with stop_at_once():
        try:
            stop_with_parent()  # a sweep's point: stop when the sweep's driver dies
            runtime = Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
            with one_writer(cfg, runtime):  # stage_state cleans leftovers: only the run's one writer may
                return _run(cfg, runtime, root, force=force, progress=progress, echo=echo, only=only, report=report)
        except KeyboardInterrupt:  # between stages (a stage converts its own)
            raise RunInterrupted("the pipeline stopped outside a stage; the finished stages are kept: run the same "
                                 "pipeline command to continue.") from None


def _run(cfg: Config, runtime, root: Path, *, force: str | None, progress: bool, echo: Callable[[str], None],
         only: Sequence[str] | None, report: bool) -> Path:
    say = echo if runtime.is_main else (lambda line: None)
    forced = False
    for stage in (name for name in STAGES if name in cfg.stages and (only is None or name in only)):
        forced = forced or force == stage  # --force STAGE reruns it and everything after it
        # after the stages before it ran, so their new run ids count
        state = runtime.broadcast(stage_state(cfg, stage) if runtime.is_main else None)
        if state == "done" and not forced:
            say(f"{stage:<9} up to date   {headline(stage, read_json(stage_dir(root, stage) / 'summary.json'))}")
            continue
        resume = state == "partial" and not forced
        say(f"{stage:<9} {'resuming' if resume else 'running'} ...")
        started = time.perf_counter()
        try:
            run_dir = run_stage(stage, cfg, runtime=runtime, resume=resume, overwrite=not resume, progress=progress)
        except RunInterrupted:
            run_dir = RunDir(stage_dir(root, stage))
            if not run_dir.has_checkpoint(run_dir.partial):
                raise RunInterrupted(f"{stage} stopped before its first checkpoint, and nothing of it was kept; "
                                     f"run the same pipeline command to start it again.") from None
            raise RunInterrupted(f"{stage} stopped and saved a checkpoint in {run_dir.partial}; "
                                 f"run the same pipeline command to pick up from there.") from None
        say(f"{stage:<9} done in {_duration(time.perf_counter() - started):<6} {headline(stage, read_json(run_dir.summary_path))}")
    if not report:
        return root
    from rlhflab.eval.report import build_report

    started = time.perf_counter()
    html = root / "report" / "report.html"
    if runtime.is_main:
        html, _ = build_report(root)
    runtime.barrier()
    say(f"{'report':<9} done in {_duration(time.perf_counter() - started)}")
    return html


def headline(stage: str, summary: dict) -> str:
    """One line of the numbers that matter for a finished stage (`summary`: its summary.json's
    data), and what its data reader left out."""
    from rlhflab.data import describe_dropped

    try:
        summary = STAGES[stage].parse_summary(summary, "summary.json")
        line = STAGES[stage].line(summary)
    except (RlhfLabError, KeyError, IndexError, TypeError, ValueError, AttributeError, StopIteration):
        return "(its summary.json is not one rlhflab wrote; `rlhflab report` shows what it holds)"
    return f"{line}; data: {describe_dropped(dropped(summary))}" if dropped(summary) else line


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
