"""The report section and pipeline line of the RL stage (rlhflab/stages/rl.py: PPO, GRPO, RLOO, ...)."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Table
from rlhflab.eval.sections.base import Figures, Stage, _facts, _num, _params, _text
from rlhflab.eval.sections.tuned import (
    HELD_OUT,
    _algorithm,
    _held_out_table,
    _run_facts,
    _samples_table,
    _tuning_section,
    held_out_parts,
    tuned_rows,
)
from rlhflab.summaries import RlSummary


# metrics.jsonl train keys drawn in the diagnostics figure, a panel each where the run logged them
# (the value panels only for algorithms with a critic): (panel title, key)
DIAGNOSTICS = (("Policy entropy (nats / token)", "entropy"), ("Response length (tokens)", "response_length"),
               ("Value loss", "value_loss"), ("Explained variance of the value head", "explained_variance"))


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    curves = lambda caption: figures.draw(plots.training_curves, "ppo_training", stage.rows, caption=caption)
    return _tuning_section(stage, run_root, curves, lambda stage, curves: _rl_blocks(stage, curves, figures))


def _diagnostics(stage: Stage, figures: Figures, algorithm: str) -> list[Block]:
    """Entropy, response length, value loss and explained variance per step, those the run logged."""
    panels = [(title, (key,)) for title, key in DIAGNOSTICS
              if any(row.get("split", "train") == "train" and key in row for row in stage.rows)]
    if not panels:
        return []
    return [figures.draw(plots.metric_panels, "ppo_diagnostics", stage.rows, panels=panels, title=f"{algorithm} diagnostics",
                         caption=f"{algorithm} training per step: " + ", ".join(
                             f"{title[:1].lower()}{title[1:]} ({key})" for title, (key,) in panels)
                         + " from metrics.jsonl. Entropy falling towards 0 or responses running to the length limit "
                           "are the usual signs of a policy collapsing onto what the reward likes.")]


def _all_samples(samples: list[dict]) -> list[Block]:
    """Every row of samples.jsonl, one collapsible table per training step, full text."""
    steps: dict = {}
    for row in samples:
        steps.setdefault(row.get("step", 0), []).append(row)
    if not steps:
        return []
    prob = any(r.get("positive_probability") is not None for r in samples)
    blocks: list[Block] = [Heading(f"All {len(samples)} samples", level=3)]
    for step in sorted(steps, key=lambda s: _num_key(s)):
        rows = steps[step]
        scores = [float(r["score"]) for r in rows if isinstance(r.get("score"), (int, float)) and not isinstance(r.get("score"), bool)]
        mean = f", mean reward {sum(scores) / len(scores):.3f}" if scores else ""
        blocks.append(Table(["prompt", "response", "reward", *(["P(positive)"] if prob else []), "KL"],
                            [[str(r.get("prompt", "")), str(r.get("response", "")), _num(r.get("score")),
                              *([_num(r.get("positive_probability"))] if prob else []), _num(r.get("kl"))] for r in rows],
                            numeric=False, summary=f"step {step}: {len(rows)} sample{'s' * (len(rows) != 1)}{mean}"))
    return blocks


def _num_key(step) -> float:
    try:
        return float(step)
    except (TypeError, ValueError):
        return float("inf")


def _rl_blocks(stage: Stage, curves, figures: Figures) -> list[Block]:
    s: RlSummary = stage.summary
    start, end = s.start, s.end
    blocks: list[Block] = [_held_out_table(
        {f"start (step {start.get('step', 0)})": start, f"end (step {end.get('step', _text(s.steps, '?'))})": end},
        caption="Mean reward, probability of positive sentiment and KL to the starting model on the held-out evaluation "
                f"prompts, before and after {_algorithm(s)}.")]
    if stage.rows:
        blocks.append(curves(f"{_algorithm(s)} training: mean reward per step with a rolling mean and the held-out evaluations"
                             ", KL to the starting model, the KL coefficient β and the clip fraction."))
        blocks += _diagnostics(stage, figures, _algorithm(s))
    evaluations = s.evaluations or []
    keys = [k for k in HELD_OUT if k in start or k in end]
    if len(evaluations) > 2:
        blocks.append(Table(["step", *(HELD_OUT[k] for k in keys)],
                            [[str(e.get("step")), *(_num(e.get(k)) for k in keys)] for e in evaluations],
                            caption="Every held-out evaluation during training."))
    blocks.append(_facts([
        ("algorithm", _algorithm(s) + (f", {s.samples_per_prompt} samples per prompt" if (s.samples_per_prompt or 1) > 1 else "")),
        ("KL penalty", {"reward": "-β·KL in the reward", "loss": "β·KL (k3) in the loss"}.get(s.kl_penalty or "reward", "-")),
        ("processes", s.processes or 1),
        ("policy (start)", _text(s.policy)),
        ("reward", _text(s.reward)),
        ("reference", _text(s.reference)),
        ("parameters", _params(s.parameters)),
        ("steps", s.steps),
        ("final β", _num(s.final_beta, 4)),
        ("rollout tokens/s", _num(s.rollout_tokens_per_s, 0)),
        ("train tokens/s", _num(s.train_tokens_per_s, 0)),
        *_run_facts(s),
    ]))
    if stage.samples:
        last = max(r.get("step", 0) for r in stage.samples)
        blocks.append(Heading(f"Samples at training step {last}", level=3))
        blocks.append(_samples_table([r for r in stage.samples if r.get("step", 0) == last]))
        blocks += _all_samples(stage.samples)
    return blocks


def line(summary: RlSummary) -> str:
    return ", ".join(held_out_parts(summary))


rows = tuned_rows  # the tuned stages share their overview rows
