"""Numbers stay numbers in real stages (issue 19 §2): ILQL rewards of ±1e39 are refused before training,
rewards at float32's edge train to finite losses, and a learning rate that makes SFT's loss NaN stops
the run at that step with one line, the finished run untouched."""

from __future__ import annotations

import json
import math

import pytest

from rlhflab.config import dump_yaml
from rlhflab.errors import RlhfLabError
from rlhflab.stages.common import run_stage
from tests.helpers import assert_user_error, cli_run, synthetic_reviews
from tests.stages.test_ilql import make_config as ilql_config
from tests.stages.test_sft import make_config as sft_config


def _scored(tmp_path, rewards) -> str:
    path = tmp_path / "scored.jsonl"
    texts = [text for text, _ in synthetic_reviews(10)]
    path.write_text("\n".join(json.dumps({"text": t, "reward": r}) for t, r in zip(texts, rewards)))
    return str(path)


@pytest.mark.parametrize("huge", [1e39, -1e39])
def test_ilql_with_a_reward_beyond_float32_exits_2_naming_the_file_and_row(tmp_path, tiny_llama_dir, reviews_csv,
                                                                           capsys, huge):
    samples = _scored(tmp_path, [1.0, 0.0, 1.0, huge] + [0.0] * 16)
    config = tmp_path / "config.yaml"
    config.write_text(dump_yaml(ilql_config(tmp_path, tiny_llama_dir, reviews_csv, samples=samples)), encoding="utf-8")
    result = cli_run(capsys, "ilql", "--config", config, "--no-progress")
    assert_user_error(result, f"The reward ('reward') at line 4 of {samples} is {huge!r}: beyond the ±3.403e+38",
                      "rescale the rewards")
    assert not (tmp_path / "runs" / "tiny").exists()  # refused before anything was written


def test_ilql_rewards_of_a_huge_scale_train_to_finite_losses(tmp_path, tiny_llama_dir, reviews_csv):
    rewards = [1e37 if label else -1e37 for _, label in synthetic_reviews(10)]  # squares overflow float32; normalised, they are ±1
    cfg = ilql_config(tmp_path, tiny_llama_dir, reviews_csv, samples=_scored(tmp_path, rewards), max_steps=2,
                      eval_betas=[0.0])
    run_dir = run_stage("ilql", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["samples"]["reward_std"] == pytest.approx(1e37, rel=0.1)
    losses = [row["loss"] for row in run_dir.read_metrics() if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)  # 2 steps and the validation
    assert all(math.isfinite(summary["after"][split]["loss"]) for split in summary["after"])


def test_ilql_rewards_whose_sum_overflows_float32_are_refused_before_training(tmp_path, tiny_llama_dir, reviews_csv):
    rewards = [3e38 if label else -3e38 for _, label in synthetic_reviews(10)]
    cfg = ilql_config(tmp_path, tiny_llama_dir, reviews_csv, samples=_scored(tmp_path, rewards))
    with pytest.raises(RlhfLabError, match=r"training rewards of .*scored\.jsonl overflow the 32-bit floats"):
        run_stage("ilql", cfg, progress=False)
    assert not (tmp_path / "runs" / "tiny").exists()


def test_sft_whose_loss_becomes_nan_stops_at_that_step_and_keeps_the_finished_run(tmp_path, tiny_llama_dir, reviews_csv):
    finished = run_stage("sft", sft_config(tmp_path, tiny_llama_dir, reviews_csv, max_steps=2), progress=False)
    summary = finished.summary_path.read_bytes()
    # 1e30: every weight Adam moves jumps by about 1e30, and the next forward pass overflows. log_every=100
    # would log nothing until the end: the NaN step is returned anyway.
    cfg = sft_config(tmp_path, tiny_llama_dir, reviews_csv, learning_rate=1e30, log_every=100, checkpoint_every=1000)
    with pytest.raises(RlhfLabError) as info:
        run_stage("sft", cfg, overwrite=True, progress=False)
    message = str(info.value)
    # step 2 of 12 trains at 1e30 * (1 + cos(pi / 12)) / 2 (cosine decay, no warm-up)
    assert message.startswith("sft stopped at step 2: the training loss became nan. Likely causes: a learning rate too "
                              "high (9.83e+29 at this step; lower it in the sft: settings)")
    assert message.endswith(f"No checkpoint had been saved, so nothing of this run is kept; the finished run "
                            f"{finished.path} is unchanged. Fix the cause and start again with --overwrite.")
    assert finished.summary_path.read_bytes() == summary
    assert not finished.partial.exists()  # a failed start without a checkpoint leaves nothing behind
