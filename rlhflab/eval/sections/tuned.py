"""What the report shows of every stage that tunes the policy (rl, dpo, ilql): the held-out
prompts at its start and its end, its facts and curves, and its overview rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhflab.algorithms.recipes import display_name
from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Table
from rlhflab.eval.sections.base import Figures, Stage, _change, _num, _params, _seconds, _short, _unfinished
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import DpoSummary, IlqlSummary, RlSummary

Tuned = RlSummary | DpoSummary | IlqlSummary  # the summaries of the stages that tune the policy

HELD_OUT = {"score": "reward (score)", "positive_probability": "P(positive)", "kl": "KL to the starting model (nats / response)"}


def _algorithm(summary: Tuned) -> str:
    return display_name(str(summary.algorithm or "ppo"))  # none: a run from before RL had algorithms


def _beta(value: Any) -> str:
    """A generation β as written in the report ("1" for 1.0)."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _held_out_table(columns: dict[str, dict], caption: str, change: bool = True) -> Table:
    """Mean reward, P(positive) and KL on the held-out prompts: a column per (title, metrics), the
    first the start; with `change`, a last column of the last minus the first."""
    values = list(columns.values())
    rows = [[label, *(_num(v.get(key)) for v in values), *([_change(values[0].get(key), values[-1].get(key))] if change else [])]
            for key, label in HELD_OUT.items() if any(key in v for v in values)]
    return Table(["held-out prompts", *columns, *(["change"] if change else [])], rows, caption=caption)


def _samples_table(rows: list[dict]) -> Table:
    """Prompt, response, reward (P(positive) where scored) and KL of the first four samples."""
    rows = rows[:4]
    prob = any(r.get("positive_probability") is not None for r in rows)
    return Table(["prompt", "response", "reward", *(["P(positive)"] if prob else []), "KL"],
                 [[_short(r.get("prompt", "")), _short(r.get("response", "")), _num(r.get("score")),
                   *([_num(r.get("positive_probability"))] if prob else []), _num(r.get("kl"))] for r in rows], numeric=False)


def _tuning_section(stage: Stage, run_root: Path, curves, body) -> list[Block]:
    """The section of a stage that tunes the policy: its heading, then body(stage, curves) when it
    finished, else how to finish it and its training curves so far. `curves(caption)` draws them."""
    blocks: list[Block] = [Heading(STAGES[stage.name].title, anchor=stage.name)]
    if not stage.done:
        return blocks + _unfinished(stage, run_root, curves, "Training curves so far.")
    return blocks + body(stage, curves)


def _panel_curves(stage: Stage, figures: Figures, panels: tuple):
    return lambda caption: figures.draw(plots.metric_panels, f"{stage.name}_training", stage.rows, panels=panels,
                                        title=STAGES[stage.name].title, caption=caption)


def _run_facts(s: Tuned) -> list[tuple[str, Any]]:
    return [("peak memory", f"{_num(s.peak_memory_mb, 0)} MB"), ("wall time", _seconds(s.seconds))]


def _training_facts(s: DpoSummary | IlqlSummary, unit: str, rate: Any, digits: int) -> list[tuple[str, Any]]:
    """The closing facts of a stage trained by the Supervised algorithm (dpo, ilql); `rate`: its
    train_<unit>_per_s."""
    return [("parameters", _params(s.parameters)), ("steps", s.steps), ("epochs completed", s.epochs_completed),
            (f"train {unit}/s", _num(rate, digits)), *_run_facts(s)]


def tuned_rows(tuned: Tuned, name: str) -> list[list[str]]:
    start, end = tuned.start, tuned.end
    title = _algorithm(tuned) + (f" at β = {_beta(tuned.beta)}" if name == "ilql" else "")
    return [[title, label, _num(start.get(key)), _num(end[key])] for key, label in
            (("score", "held-out reward"), ("positive_probability", "held-out P(positive)"),
             ("kl", "KL to the starting model")) if key in end]


def held_out_parts(summary: Tuned) -> list[str]:
    """The pipeline line's numbers of a tuned stage: the held-out prompts at its start and its end
    (the reward or P(positive), then KL)."""
    start, end = summary.start, summary.end
    key = next((k for k in ("positive_probability", "score") if k in start), None)
    parts = [f"{'P(positive)' if key == 'positive_probability' else 'score'} {start[key]:.3f} -> {end[key]:.3f}"] if key else []
    return parts + [f"KL {end['kl']:.2f}"]
