"""`rlhflab pipeline`: SFT -> reward model -> PPO -> evaluation -> report, one config, resumable.

Each stage writes `runs/<name>/<stage>/`. A stage whose run finished (summary.json) with the
same settings is skipped; one that was interrupted resumes from its checkpoint; one whose
settings changed, or that comes after a stage that ran again, starts over.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Callable

from rlhflab.config import Config, parse_yaml, to_dict
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.io import RunDir, read_json

STAGES = ("sft", "reward", "ppo", "evaluate", "report")

# The config sections each stage's output depends on: a change elsewhere does not rerun it.
INPUTS = {
    "sft": ("seed", "data", "sft"),
    "reward": ("seed", "data", "reward"),
    "ppo": ("seed", "data", "reward_fn", "ppo"),
    "evaluate": ("seed", "data", "reward_fn", "evaluate", "ppo.max_new_tokens"),
}


def _pick(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def stage_inputs(config: dict, stage: str) -> dict:
    return {key: _pick(config, key) for key in INPUTS[stage]}


def stage_state(cfg: Config, stage: str) -> str:
    """'done' (finished with these inputs), 'partial' (same full config, checkpoint to resume), 'stale' or 'missing'."""
    run_dir = RunDir(Path(cfg.runs_dir) / cfg.name / stage)
    config_path = run_dir.path / "config.yaml"
    if not config_path.exists():
        return "missing"
    saved = parse_yaml(config_path.read_text(encoding="utf-8"))
    if not isinstance(saved, dict) or stage_inputs(saved, stage) != stage_inputs(to_dict(cfg), stage):
        return "stale"
    if run_dir.summary_path.exists():
        return "done"
    return "partial" if saved == to_dict(cfg) and run_dir.has_checkpoint() else "stale"


def run(cfg: Config, *, force: str | None = None, progress: bool = True, echo: Callable[[str], None] = print) -> Path:
    """Run every stage that is not up to date; returns the path of report.html."""
    if force is not None and force not in STAGES:
        raise RlhfLabError(f"--force takes one of {', '.join(STAGES)}; got {force!r}.")
    root = Path(cfg.runs_dir) / cfg.name
    rerun = False  # once a stage runs, everything after it runs too
    for stage in STAGES[:-1]:
        state = stage_state(cfg, stage)
        rerun = rerun or state != "done" or force == stage
        if not rerun:
            echo(f"{stage:<9} up to date   {headline(stage, read_json(root / stage / 'summary.json'))}")
            continue
        resume = state == "partial" and force != stage
        echo(f"{stage:<9} {'resuming' if resume else 'running'} ...")
        started = time.perf_counter()
        module = importlib.import_module(f"rlhflab.stages.{stage}")
        try:
            run_dir = module.run(cfg, resume=resume, overwrite=not resume, progress=progress)
        except RunInterrupted:
            raise RunInterrupted(f"{stage} stopped and saved a checkpoint in {root / stage}; "
                                 f"run the same pipeline command to pick up from there.") from None
        echo(f"{stage:<9} done in {_duration(time.perf_counter() - started):<6} {headline(stage, read_json(run_dir.summary_path))}")
    from rlhflab.eval.report import build_report

    started = time.perf_counter()
    html, _ = build_report(root)
    echo(f"{'report':<9} done in {_duration(time.perf_counter() - started)}")
    return html


def headline(stage: str, summary: dict) -> str:
    """One line of the numbers that matter for a finished stage."""
    if stage == "sft":
        before = summary.get("before", {}).get("validation", {}).get("perplexity")
        after = summary["after"].get("validation", summary["after"].get("train", {})).get("perplexity")
        return f"validation perplexity {before:.1f} -> {after:.1f}" if before else f"validation perplexity {after:.1f}"
    if stage == "reward":
        metrics = summary["metrics"]
        split = "test" if "test" in metrics else next(iter(metrics))
        key = "pairwise_accuracy" if summary.get("objective") == "pairs" else "accuracy"
        return f"{split} accuracy {metrics[split][key]:.3f}"
    if stage == "ppo":
        start, end = summary["start"], summary["end"]
        key = "positive_probability" if "positive_probability" in start else "score"
        return f"{key} {start[key]:.3f} -> {end[key]:.3f}, KL {end['kl']:.2f}"
    if stage == "evaluate":
        parts = []
        for name, model in summary["models"].items():
            prob = model.get("positive_probability")
            value = f"P(positive) {prob['mean']:.3f}" if prob else f"score {model['score']['mean']:.3f}"
            parts.append(f"{name} {value}")
        return ", ".join(parts)
    return ""


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
