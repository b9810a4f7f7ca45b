"""The report section, overview rows and pipeline line of the sft stage (rlhflab/stages/sft.py)."""

from __future__ import annotations

import json
from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Table
from rlhflab.eval.sections.base import Figures, Stage, _facts, _num, _params, _seconds, _splits, _unfinished
from rlhflab.stages.registry import STAGES


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["sft"].title, anchor="sft")]
    curves = lambda caption: figures.draw(plots.sft_curves, "sft_loss", stage.rows, caption=caption)
    if not stage.done:
        return blocks + _unfinished(stage, run_root, curves, "SFT train and validation loss so far.")
    s = stage.summary
    before, after = s.get("before", {}), s.get("after", {})
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
    examples = s.get("examples") or {}
    blocks.append(_facts([
        ("model", str(s.get("model", "-"))),
        ("trainable blocks", json.dumps(s.get("trainable"))),
        ("parameters", _params(s.get("parameters"))),
        ("examples", ", ".join(f"{k} {v}" for k, v in examples.items()) or "-"),
        ("optimizer steps", s.get("steps")),
        ("epochs completed", s.get("epochs_completed")),
        ("stopped early", str(s.get("stopped_early", "-"))),
        ("train tokens/s", _num(s.get("train_tokens_per_s"), 0)),
        ("peak memory", f"{_num(s.get('peak_memory_mb'), 0)} MB"),
        ("device / precision", f"{s.get('device', '-')} / {s.get('mixed_precision', '-')}"),
        ("wall time", _seconds(s.get("seconds"))),
    ]))
    return blocks


def rows(sft: dict, name: str) -> list[list[str]]:
    before = (sft.get("before") or {}).get("validation", {})
    after = (sft.get("after") or {}).get("validation", {})
    return [["SFT", "validation perplexity", _num(before.get("perplexity")), _num(after.get("perplexity"))]] if after else []


def line(summary: dict) -> str:
    before = summary.get("before", {}).get("validation", {}).get("perplexity")
    after = summary["after"].get("validation", summary["after"].get("train", {})).get("perplexity")
    return f"validation perplexity {before:.1f} -> {after:.1f}" if before else f"validation perplexity {after:.1f}"
