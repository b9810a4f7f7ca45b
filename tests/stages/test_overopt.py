"""Snapshots and the over-optimisation study on a tiny PPO run; gold judges in the evaluation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhflab.config import Config, DataConfig, EvaluateConfig, OveroptConfig, PpoConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.eval.report import build_report
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.policy import build_policy
from rlhflab.models.snapshot import save_snapshot
from rlhflab.stages import evaluate, overopt
from rlhflab.stages.common import run_stage
from tests.helpers import FP32, typed_summary

REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]

def e_judge(prompts, responses):
    return [r.count("e") / max(len(r), 1) - 0.1 for r in responses]
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    return path


def make_config(tmp_path, model_dir, csv_path, toy, **ppo) -> Config:
    settings = dict(policy=str(model_dir), steps=10, batch_size=8, minibatch_size=4, ppo_epochs=1, learning_rate=1e-3,
                    max_new_tokens=6, eval_prompts=8, eval_every=5, checkpoint_every=100)
    settings.update(ppo)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(csv_path), per_class=30),
                  reward_fn=RewardFnConfig(source=f"{toy}:e_share"), ppo=PpoConfig(**settings),
                  evaluate=EvaluateConfig(prompts=12, batch_size=6, gold={"vader": "vader", "e": f"{toy}:e_judge"},
                                          gold_data=str(csv_path), gold_reviews=20),
                  overopt=OveroptConfig(prompts=10, samples=2))


def logits(model, ids=((5, 17, 42, 9, 3),)):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


@pytest.mark.parametrize("trainable", [[-1], "lora"])
def test_a_float32_snapshot_loads_as_the_policy_it_saved(tmp_path, tiny_llama_dir, trainable):
    model, _ = load_causal_lm(str(tiny_llama_dir))
    policy = build_policy(model, trainable, PpoConfig().lora)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_snapshot(policy, str(tiny_llama_dir), tmp_path / "snap", dtype="float32")
    loaded, tokenizer = load_causal_lm(str(tmp_path / "snap"))
    expected = policy.model.merge_and_unload() if trainable == "lora" else policy.model
    torch.testing.assert_close(logits(loaded), logits(expected), atol=1e-5, rtol=1e-5)
    assert tokenizer.pad_token is not None


def test_a_bf16_snapshot_holds_only_the_trainable_tensors_and_survives_a_moved_runs_folder(tmp_path, tiny_llama_dir):
    base = tmp_path / "runs" / "r" / "sft"
    shutil.copytree(tiny_llama_dir, base)
    model, _ = load_causal_lm(str(base))
    policy = build_policy(model, [-1])
    folder = tmp_path / "runs" / "r" / "rl" / "checkpoints" / "epoch-1"
    save_snapshot(policy, str(base), folder)
    saved = folder / "weights.safetensors"
    assert saved.stat().st_size < 0.5 * sum(f.stat().st_size for f in base.glob("*.safetensors"))
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    loaded, _ = load_causal_lm(str(tmp_path / "moved" / "r" / "rl" / "checkpoints" / "epoch-1"))
    torch.testing.assert_close(logits(loaded), logits(policy.model), atol=0.05, rtol=0.05)  # bf16 rounding of one block
    shutil.rmtree(tmp_path / "moved" / "r" / "sft")
    with pytest.raises(RlhfLabError, match="no longer exists"):
        load_causal_lm(str(tmp_path / "moved" / "r" / "rl" / "checkpoints" / "epoch-1"))


def test_the_study_reads_every_snapshot_and_states_a_verdict(tmp_path, tiny_llama_dir, reviews_csv, toy):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, toy)
    run_stage("rl", cfg, progress=False)
    run_dir = run_stage("overopt", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    names = [p["name"] for p in summary["points"]]
    assert names == ["start", "epoch-1", "epoch-2", "final"]  # 80 prompts drawn from 36
    start, final = summary["points"][0], summary["points"][-1]
    assert start["kl"] == 0.0 and start["sqrt_kl"] == 0.0 and final["kl"] != 0.0  # a sampled estimate: may dip below 0
    assert set(summary["judges"]) == {"proxy", "vader", "e"}
    assert all(0 <= c["accuracy"] <= 1 and c["n"] == 20 for c in summary["judges"].values())
    for p in summary["points"]:
        assert set(p["gold"]) == {"vader", "e"} and 0 <= p["proxy"] <= 1 and 0 <= p["separator_ratio"] <= 1
    assert summary["verdict"]["max_kl"] == max(p["kl"] for p in summary["points"])
    assert summary["verdict"]["rule"].startswith("onset = ")
    rows = [json.loads(line) for line in (run_dir.path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 10 and set(rows[0]["scores"]) == {"proxy", "vader", "e"}
    for figure in summary["figures"].values():
        assert (run_dir.path / figure).stat().st_size > 1000
    text = overopt.format_summary(typed_summary("overopt", run_dir.path))
    assert "verdict:" in text and "epoch-2" in text
    _, markdown = build_report(tmp_path / "runs" / "tiny")
    report = markdown.read_text()
    assert "Over-optimisation study" in report and "Samples: epoch-1" in report


def test_the_study_needs_gold_judges_and_snapshots(tmp_path, tiny_llama_dir, reviews_csv, toy):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, toy, steps=2, snapshot_each_epoch=False)
    with pytest.raises(RlhfLabError, match="not a finished RL run"):
        run_stage("overopt", cfg, progress=False)
    run_stage("rl", cfg, progress=False)
    with pytest.raises(RlhfLabError, match="no epoch-N snapshots"):
        run_stage("overopt", cfg, progress=False)
    cfg.evaluate.gold = None
    with pytest.raises(RlhfLabError, match="evaluate.gold is empty"):
        run_stage("overopt", cfg, progress=False)


def test_the_evaluation_scores_with_every_gold_judge_and_flags_disagreement(tmp_path, tiny_llama_dir, reviews_csv, toy):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, toy)
    cfg.evaluate.models = {"sft": str(tiny_llama_dir), "same": str(tiny_llama_dir)}
    run_dir = run_stage("evaluate", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert set(summary["judges"]) == {"proxy", "vader", "e"}
    for name in ("sft", "same"):
        judges = summary["models"][name]["judges"]
        assert set(judges) == {"proxy", "vader", "e"} and all(0 <= j["positive_rate"] <= 1 for j in judges.values())
    # The same model sampled with the same seed: no gain anywhere, so no disagreement.
    assert summary["gold_agreement"]["same"]["vader"] == {"proxy_gain": 0.0, "gold_gain": 0.0, "disagree": False}
    row = json.loads((run_dir.path / "samples.jsonl").read_text().splitlines()[0])
    assert set(row["judges"]) == {"proxy", "vader", "e"}
    assert "accuracy" in evaluate.format_summary(typed_summary("evaluate", run_dir.path))
