"""GRPO, RLOO, REINFORCE++ and Dr. GRPO as compositions of the RL stage's parts, on tiny models: they
run, log the same core metrics as PPO, use no critic, put the KL where their papers do, and learn a
toy task."""

from __future__ import annotations

import pytest

from rlhflab.io import read_json
from rlhflab.stages.common import run_stage
from tests.stages.test_rl import REWARD_FILE, make_config

@pytest.fixture
def reward_spec(tmp_path):
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    return f"{path}:e_share"


CORE = {"score_mean", "kl", "beta", "entropy", "clip_fraction", "approx_kl", "policy_loss", "response_length",
        "rollout_tokens_per_s", "train_tokens_per_s"}


@pytest.mark.parametrize("algorithm, name, samples_per_prompt, kl_penalty", [
    ("grpo", "grpo", 4, "loss"), ("rloo", "rloo", 4, "reward"), ("ppo", "ppo", 1, "reward"),
    ("reinforce_pp", "reinforce_pp", 1, "reward"), ("reinforce++", "reinforce_pp", 1, "reward"),
    ("dr_grpo", "dr_grpo", 4, "loss")])
def test_each_algorithm_runs_and_logs_the_core_metrics(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm, name,
                                                       samples_per_prompt, kl_penalty):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm=algorithm, steps=2, batch_size=8,
                      minibatch_size=4, kl_horizon=8)
    run_dir = run_stage("rl", cfg, progress=False)
    summary = read_json(run_dir.summary_path)
    assert summary["algorithm"] == name  # an alias is recorded as its algorithm's own name
    assert summary["samples_per_prompt"] == samples_per_prompt
    assert summary["kl_penalty"] == kl_penalty
    train = [r for r in run_dir.read_metrics() if r["split"] == "train"]
    assert len(train) == 2 and CORE <= set(train[0])
    assert ("value_loss" in train[0]) == (name == "ppo")  # only PPO trains a critic
    assert ("kl_loss" in train[0]) == (kl_penalty == "loss")  # the k3 term in the loss, or -beta * KL in the reward
    assert ("non_score_reward" in train[0]) == (name in ("ppo", "reinforce_pp"))  # a per-token KL penalty in the reward
    samples = [r for r in map(__import__("json").loads, (run_dir.path / "samples.jsonl").read_text().splitlines())]
    if samples_per_prompt > 1:  # a step's rows hold each prompt's 4 samples together
        first = [r["prompt"] for r in samples if r["step"] == 1]
        assert first[:4] == [first[0]] * 4


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "reinforce_pp", "dr_grpo"])
def test_critic_free_algorithms_learn_a_toy_task(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm):
    """The share of 'e' in responses goes up clearly within a few dozen steps (as PPO's test)."""
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm=algorithm, steps=30, batch_size=32,
                      minibatch_size=16, ppo_epochs=4, learning_rate=3e-3, eval_every=100, adaptive_kl=False, kl_coef=0.01)
    run_dir = run_stage("rl", cfg, progress=False)
    scores = [r["score_mean"] for r in run_dir.read_metrics() if r["split"] == "train"]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > 1.5 * first and last - first > 0.03, (first, last)


def test_a_group_algorithm_needs_two_samples_per_prompt(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    from rlhflab.errors import RlhfLabError

    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, algorithm="rloo", samples_per_prompt=1)
    with pytest.raises(RlhfLabError, match="samples_per_prompt must be at least 2 for rloo"):
        run_stage("rl", cfg, progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
