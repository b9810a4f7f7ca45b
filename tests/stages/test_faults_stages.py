"""Faults users found (issue 10) at the stage level: training that happened is kept, what the
reader left out is reported, beta stays non-negative."""

from __future__ import annotations

import csv

import pytest

from rlhflab.config import Config, DataConfig, PpoConfig, SftConfig, check_rl
from rlhflab.errors import RlhfLabError
from rlhflab.io import read_json
from rlhflab.ops.kl import adaptive_kl_update
from rlhflab.pipeline import headline
from rlhflab.stages.common import run_stage
from tests.helpers import synthetic_reviews
from tests.helpers import FP32


def sft_config(tmp_path, model_dir, csv_path, **fields) -> Config:
    settings = dict(model=str(model_dir), max_length=24, epochs=2, batch_size=6, learning_rate=2e-2, eval_batch_size=16,
                    warmup_ratio=0.0)
    settings.update(fields)
    return Config(runtime=FP32, name="f", runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(csv_path), per_class=30),
                  sft=SftConfig(**settings))


def test_a_budget_that_ends_before_any_validation_still_keeps_the_training(tmp_path, tiny_llama_dir, reviews_csv):
    """sft.max_steps=3 with validation once per epoch: the final model is validated and kept."""
    run_dir = run_stage("sft", sft_config(tmp_path, tiny_llama_dir, reviews_csv, max_steps=3), progress=False)
    summary = read_json(run_dir.summary_path)
    assert summary["steps"] == 3
    before = summary["before"]["validation"]["perplexity"]
    after = summary["after"]["validation"]["perplexity"]
    assert after < 0.9 * before  # lr 2e-2 on a tiny model: three steps move it a lot
    validations = [r for r in run_dir.read_metrics() if r["split"] == "validation"]
    assert [r["step"] for r in validations] == [3]


def test_rows_the_reader_left_out_are_in_the_summary_and_on_the_output_line(tmp_path, tiny_llama_dir):
    path = tmp_path / "with-gaps.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(synthetic_reviews(30))
        writer.writerows([["", 1], ["   ", 0], ["", 0]])
    run_dir = run_stage("sft", sft_config(tmp_path, tiny_llama_dir, path, max_steps=1), progress=False)
    summary = read_json(run_dir.summary_path)
    assert sum(summary["left_out"].values()) == 3
    assert "left out 3" in headline("sft", summary)


def test_beta_never_goes_negative_and_a_horizon_that_would_overshoot_is_refused():
    assert adaptive_kl_update(0.05, 0.0, 5.0, 1, 64) == 0.0  # was 0.05 * (1 - 0.2 * 64) = -0.59
    beta = 0.05
    for kl in (0.0, 0.0, 100.0, 0.0):
        beta = adaptive_kl_update(beta, kl, 5.0, 10, 64)
        assert beta >= 0.0
    with pytest.raises(RlhfLabError, match="kl_horizon"):
        check_rl(PpoConfig(kl_horizon=1, batch_size=64))
    check_rl(PpoConfig(kl_horizon=1, batch_size=64, adaptive_kl=False))  # a fixed beta ignores the horizon
    check_rl(PpoConfig(kl_horizon=64, batch_size=64))
