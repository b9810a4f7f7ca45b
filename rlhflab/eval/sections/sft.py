"""The report section, overview rows and pipeline line of the sft stage (rlhflab/stages/sft.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Table
from rlhflab.eval.sections.base import Figures, Stage, _facts, _num, _params, _seconds, _splits, _text, _unfinished
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import SftSummary


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["sft"].title, anchor="sft")]
    curves = lambda caption: figures.draw(plots.sft_curves, "sft_loss", stage.rows, caption=caption)
    if not stage.done:
        return blocks + _unfinished(stage, run_root, curves, "SFT train and validation loss so far.")
    s: SftSummary = stage.summary
    before, after = s.before or {}, s.after
    rows = []
    for split in _splits(after):
        b = before.get(split, {})
        rows.append([split, _num(after[split].get("loss")), _num(after[split].get("perplexity")),
                     _num(b.get("loss")), _num(b.get("perplexity"))])
    blocks.append(Table(["split", "loss", "perplexity", "loss before SFT", "perplexity before SFT"], rows,
                        caption="Loss (nats per token) and perplexity per split after SFT, and before it where "
                                "measured."))
    if stage.rows:
        blocks.append(curves("SFT loss: train (mean over each log window) and validation."))
    examples = s.examples or {}
    blocks.append(_facts([
        ("model", _text(s.model)),
        ("trainable blocks", json.dumps(s.trainable)),
        ("parameters", _params(s.parameters)),
        ("examples", ", ".join(f"{k} {v}" for k, v in examples.items()) or "-"),
        ("optimizer steps", s.steps),
        ("epochs completed", s.epochs_completed),
        ("stopped early", _text(s.stopped_early)),
        ("train tokens/s", _num(s.train_tokens_per_s, 0)),
        ("peak memory", f"{_num(s.peak_memory_mb, 0)} MB"),
        ("device / precision", f"{_text(s.device)} / {_text(s.mixed_precision)}"),
        ("wall time", _seconds(s.seconds)),
    ]))
    return blocks


def rows(sft: SftSummary, name: str) -> list[list[str]]:
    before = (sft.before or {}).get("validation", {})
    after = sft.after.get("validation", {})
    return [["SFT", "validation perplexity", _num(before.get("perplexity")), _num(after.get("perplexity"))]] if after else []


def line(summary: SftSummary) -> str:
    before = (summary.before or {}).get("validation", {}).get("perplexity")
    after = summary.after.get("validation", summary.after.get("train", {})).get("perplexity")
    return f"validation perplexity {before:.1f} -> {after:.1f}" if before else f"validation perplexity {after:.1f}"
