"""GRPO and RLOO as compositions of the RL stage's parts, on tiny models: they run, log the same
core metrics as PPO, use no critic, put the KL where their papers do, and learn a toy task."""

from __future__ import annotations

import pytest

from rlhflab.io import read_json
from rlhflab.stages.common import run_stage
from tests.stages.test_ppo import REWARD_FILE, make_config

@pytest.fixture
def reward_spec(tmp_path):
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    return f"{path}:e_share"


CORE = {"score_mean", "kl", "beta", "entropy", "clip_fraction", "approx_kl", "policy_loss", "response_length",
        "rollout_tokens_per_s", "train_tokens_per_s"}


@pytest.mark.parametrize("algorithm, kl_term", [("grpo", "kl_loss"), ("rloo", None), ("ppo", None)])
def test_each_algorithm_runs_and_logs_the_core_metrics(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm, kl_term):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm=algorithm, steps=2, batch_size=8,
                      minibatch_size=4, kl_horizon=8)
    run_dir = run_stage("ppo", cfg, progress=False)
    summary = read_json(run_dir.summary_path)
    assert summary["algorithm"] == algorithm
    assert summary["samples_per_prompt"] == (1 if algorithm == "ppo" else 4)
    assert summary["kl_penalty"] == ("loss" if algorithm == "grpo" else "reward")
    train = [r for r in run_dir.read_metrics() if r["split"] == "train"]
    assert len(train) == 2 and CORE <= set(train[0])
    assert ("value_loss" in train[0]) == (algorithm == "ppo")  # only PPO trains a critic
    assert (kl_term in train[0]) if kl_term else "kl_loss" not in train[0]
    samples = [r for r in map(__import__("json").loads, (run_dir.path / "samples.jsonl").read_text().splitlines())]
    if algorithm != "ppo":  # a step's rows hold each prompt's 4 samples together
        first = [r["prompt"] for r in samples if r["step"] == 1]
        assert first[:4] == [first[0]] * 4


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_group_baselines_learn_a_toy_task(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm):
    """The share of 'e' in responses goes up clearly within a few dozen steps (as PPO's test)."""
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm=algorithm, steps=30, batch_size=32,
                      minibatch_size=16, ppo_epochs=4, learning_rate=3e-3, eval_every=100, adaptive_kl=False, kl_coef=0.01)
    run_dir = run_stage("ppo", cfg, progress=False)
    scores = [r["score_mean"] for r in run_dir.read_metrics() if r["split"] == "train"]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > 1.5 * first and last - first > 0.03, (first, last)


def test_a_group_algorithm_needs_two_samples_per_prompt(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    from rlhflab.errors import RlhfLabError

    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm="rloo", samples_per_prompt=1)
    with pytest.raises(RlhfLabError, match="samples_per_prompt must be at least 2 for rloo"):
        run_stage("ppo", cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
