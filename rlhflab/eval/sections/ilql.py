"""The report section and pipeline line of the ilql stage (rlhflab/stages/ilql.py)."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval.document import Block, Heading
from rlhflab.eval.sections.base import Figures, Stage, _counts, _facts, _num, _split_table, _stage_lines, _text
from rlhflab.eval.sections.tuned import (
    _beta,
    _held_out_table,
    _panel_curves,
    _samples_table,
    _training_facts,
    _tuning_section,
    held_out_parts,
    tuned_rows,
)
from rlhflab.summaries import IlqlSummary


ILQL_PANELS = (("Loss", ("loss",)), ("TD loss of the Q heads, expectile loss of V", ("q", "v")),
               ("CQL and AWAC terms", ("cql", "awac")), ("Learning rate", ("lr",)))


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    return _tuning_section(stage, run_root, _panel_curves(stage, figures, ILQL_PANELS), _ilql_blocks)


def _ilql_blocks(stage: Stage, curves) -> list[Block]:
    s: IlqlSummary = stage.summary
    beta = _beta(s.beta)
    blocks: list[Block] = [_held_out_table(
        {"start": s.start, **{f"β = {_beta(b)}": v for b, v in (s.by_beta or {}).items()}}, change=False,
        caption="The held-out prompts at the start and after ILQL at each generation β: tokens are sampled from "
                "logits + β(Q − V), β the steering strength, and β = 0 is the AWAC-trained language model alone. "
                f"The saved model generates at β = {beta}.")]
    after, terms = s.after or {}, ("loss", "q", "v", "cql", "awac")
    blocks.append(_split_table(
        after, [*terms, "actions"], lambda n, m: [*(_num(m.get(k)) for k in terms), _num(m.get("actions"))],
        caption="The ILQL loss terms per action (token) after training: the TD loss of the Q heads (q), the expectile "
                "loss of V (v), the CQL term and the advantage-weighted LM loss (awac); loss is their weighted sum."))
    if stage.rows:
        blocks.append(curves("ILQL training: the loss (train, mean over each log window, and validation), its terms on "
                             "validation, and the learning rate."))
    samples = s.samples or {}
    blocks.append(_facts([
        ("samples", f"{samples.get('source', '-')}; {_counts(samples)}"),
        ("reward normalisation", f"mean {_num(samples.get('reward_mean'))}, std {_num(samples.get('reward_std'))} over the "
                                 "training texts (each text's normalised reward sits on its last token)"),
        ("generation β (default)", beta),
        ("policy (start)", _text(s.policy)),
        ("held-out reward", str(s.reward or "none (KL only)")),
        *_training_facts(s, "tokens", s.train_tokens_per_s, 0),
    ]))
    rows = [r for r in _stage_lines(stage, "eval_after.jsonl") if _beta(r.get("beta")) == beta]
    if rows:
        blocks.append(Heading(f"Held-out samples at β = {beta}", level=3))
        blocks.append(_samples_table(rows))
    return blocks


def line(summary: IlqlSummary) -> str:
    """At ILQL's default β, the one its held-out numbers were measured at."""
    parts = held_out_parts(summary)
    parts[0] += f" at beta {summary.beta:g}"
    return ", ".join(parts)


rows = tuned_rows  # the tuned stages share their overview rows
