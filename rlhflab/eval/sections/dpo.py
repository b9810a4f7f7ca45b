"""The report section and pipeline line of the dpo stage (rlhflab/stages/dpo.py)."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval.document import Block, Heading, Table
from rlhflab.eval.sections.base import Figures, Stage, _counts, _facts, _num, _short, _split_table, _stage_lines, _text
from rlhflab.eval.sections.tuned import (
    _held_out_table,
    _panel_curves,
    _training_facts,
    _tuning_section,
    held_out_parts,
    tuned_rows,
)
from rlhflab.summaries import DpoSummary


DPO_PANELS = (("Loss", ("loss",)), ("Pair accuracy", ("pair_accuracy",)),
              ("Implicit rewards β·log(π/π_ref)", ("chosen_reward", "rejected_reward", "margin")), ("Learning rate", ("lr",)))


DPO_LOSSES = {"sigmoid": "sigmoid (DPO, Rafailov et al. 2023)", "ipo": "IPO (Azar et al. 2023)"}


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    return _tuning_section(stage, run_root, _panel_curves(stage, figures, DPO_PANELS), _dpo_blocks)


def _dpo_blocks(stage: Stage, curves) -> list[Block]:
    s: DpoSummary = stage.summary
    rounds = [r for r in s.by_round or [] if isinstance(r, dict)]
    if len(rounds) > 1:
        ends = {f"round {r.get('round')} (step {r.get('step', '?')})": r.get("end") or {} for r in rounds}
        reference = "the policy as each round began" if s.reference == "previous_round" else "the starting model"
        caption = (f"Mean reward, probability of positive sentiment and KL to the starting model on the held-out evaluation "
                   f"prompts, at the start and after each of {len(rounds)} rounds of on-policy DPO (each round's pairs "
                   f"sampled from the policy as it was; reference: {reference}).")
    else:
        ends = {f"end (step {_text(s.steps, '?')})": s.end}
        caption = ("Mean reward, probability of positive sentiment and KL to the starting model on the held-out "
                   "evaluation prompts, before and after DPO (measured as for RL training).")
    blocks: list[Block] = [_held_out_table({"start": s.start, **ends}, caption=caption)]
    before, after = s.before or {}, s.after or {}
    keys = ("loss", "pair_accuracy", "margin", "chosen_reward", "rejected_reward")
    blocks.append(_split_table(
        after, ["pairs", *(k.replace("_", " ") for k in keys)],
        lambda n, m: [_num(m.get("pairs")), *(f"{_num((before.get(n) or {}).get(k))} → {_num(m.get(k))}" for k in keys)],
        caption="Preference pairs per split, before → after DPO: the loss; pair accuracy, the share of pairs whose chosen "
                "response has the higher implicit reward β·log(π/π_ref); the mean margin between the two; and each side's "
                "mean implicit reward. Before training the policy is its own reference, so every implicit reward is 0"
                + (" (in the last round, when its reference is the starting model, it is not)." if len(rounds) > 1 else ".")))
    if stage.rows:
        blocks.append(curves("DPO training: the loss (train, mean over each log window, and validation), validation pair "
                             "accuracy, implicit rewards and margin, and the learning rate."))
    pairs = s.pairs or {}
    on_policy = pairs.get("source") == "on-policy"
    source = (f"on-policy (AI feedback): {pairs.get('samples_per_prompt', '-')} samples of the starting policy for each of "
              f"{pairs.get('prompts', '-')} training prompts, the reward's best against its worst") if on_policy \
        else str(pairs.get("source", "-"))
    blocks.append(_facts([
        ("loss", DPO_LOSSES.get(s.loss, _text(s.loss))),
        ("β", _num(s.beta)),
        ("pairs", f"{source}; {_counts(pairs)}"),
        ("pairs left out", ", ".join(f"{v} ({k})" for k, v in (pairs.get("left_out") or {}).items()) or "none"),
        ("responses cut to max_length", pairs.get("responses_cut_to_max_length")),
        ("policy (start and reference)", _text(s.policy)),
        *([("rounds", f"{len(rounds)}, each on new pairs from the policy as it was; reference: "
                      f"{'the policy as the round began' if s.reference == 'previous_round' else 'the start'}; "
                      f"pairs, loss and pair accuracy above are the last round's")] if len(rounds) > 1 else []),
        ("reward", str(s.reward or "-")),
        *_training_facts(s, "pairs", s.train_pairs_per_s, 1),
    ]))
    examples = _stage_lines(stage, "pairs.jsonl")
    if examples:
        blocks.append(Heading("Example pairs", level=3))
        blocks.append(Table(["prompt", "chosen", "rejected", "chosen reward", "rejected reward"],
                            [[_short(r.get("prompt", "")), _short(r.get("chosen", "")), _short(r.get("rejected", "")),
                              _num(r.get("chosen_score")), _num(r.get("rejected_score"))] for r in examples[:4]],
                            numeric=False,
                            caption=f"The first {min(4, len(examples))} of {len(examples)} pairs (pairs.jsonl). AI feedback: "
                                    "the reward function ranked the starting policy's own samples; no person chose."))
    return blocks


def line(summary: DpoSummary) -> str:
    validation = summary.after.get("validation")
    return ", ".join(held_out_parts(summary) + ([f"validation pair accuracy {validation['pair_accuracy']:.3f}"] if validation else []))


rows = tuned_rows  # the tuned stages share their overview rows
