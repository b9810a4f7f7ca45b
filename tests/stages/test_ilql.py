"""The ILQL stage on a tiny in-test Llama: labels or a scored-text file, the saved heads, steering at load time."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhflab.algorithms.ilql import rewards_at_last_token
from rlhflab.config import Config, DataConfig, IlqlConfig, OnPolicySamplesConfig, PpoConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.stages.common import run_stage
from tests.helpers import FP32, synthetic_reviews, typed_summary

REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]
'''


def make_config(tmp_path, model_dir, csv_path, **fields) -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD_FILE)
    settings = dict(policy=str(model_dir), max_steps=3, batch_size=8, learning_rate=1e-3, eval_batch_size=8,
                    eval_prompts=4, log_every=1, warmup_ratio=0.0, max_length=24, eval_betas=[0.0, 2.0], beta=1.0)
    settings.update(fields)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(csv_path), per_class=30), reward_fn=RewardFnConfig(source=f"{reward}:e_share"),
                  ppo=PpoConfig(max_new_tokens=5), ilql=IlqlConfig(**settings))


def test_rewards_sit_on_each_texts_last_action():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    rewards = rewards_at_last_token(mask, torch.tensor([2.0, -1.0, 5.0]))
    # actions are tokens 1..3; a one-token text has no action, so its reward has nowhere to go
    assert rewards.tolist() == [[0.0, 2.0, 0.0], [0.0, 0.0, -1.0], [0.0, 0.0, 0.0]]


def test_ilql_on_labelled_reviews_saves_a_steerable_model(tmp_path, tiny_llama_dir, reviews_csv):
    run_dir = run_stage("ilql", make_config(tmp_path, tiny_llama_dir, reviews_csv), progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert summary["steps"] == 3 and set(summary["by_beta"]) == {"0.0", "2.0", "1.0"}
    assert typed_summary("ilql", run_dir.path).by_beta == summary["by_beta"]
    assert summary["start"]["kl"] == 0.0 and summary["end"] == summary["by_beta"]["1.0"]
    assert summary["samples"]["train"] == 36 and "label as reward" in summary["samples"]["source"]
    assert {"q", "v", "cql", "awac"} <= set(summary["after"]["train"])
    # model/ is a plain causal LM for transformers, and a steered one for rlhflab
    plain = AutoModelForCausalLM.from_pretrained(run_dir.model_dir)
    steered, tokenizer = load_causal_lm(str(run_dir.path))
    assert steered.ilql_beta == 1.0 and load_causal_lm(f"{run_dir.path}@beta=3")[0].ilql_beta == 3.0
    ids = tokenizer(["the film was"], return_tensors="pt").input_ids
    with torch.no_grad():
        base = torch.log_softmax(plain(ids).logits, -1)
        at_zero = load_causal_lm(f"{run_dir.path}@beta=0")[0](ids).logits
        at_one = steered(ids).logits
    assert torch.allclose(base, at_zero, atol=1e-5)  # β = 0 is the trained LM's own distribution
    assert not torch.allclose(at_zero, at_one, atol=1e-4)  # the heads learned something that moves it


def test_ilql_from_a_scored_file_and_its_errors(tmp_path, tiny_llama_dir, reviews_csv):
    path = tmp_path / "scored.jsonl"
    rows = [{"text": t, "reward": 2.0 * label - 1.0} for t, label in synthetic_reviews(10)] + [{"text": "", "reward": 1.0}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    run_dir = run_stage("ilql", make_config(tmp_path, tiny_llama_dir, reviews_csv, samples=str(path), max_steps=1), progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert summary["samples"]["train"] + summary["samples"]["validation"] == 20
    assert summary["left_out"]["rows with empty text"] == 1
    path.write_text(json.dumps({"text": "a fine film", "reward": "great"}))
    with pytest.raises(RlhfLabError, match="not a number"):
        run_stage("ilql", make_config(tmp_path, tiny_llama_dir, reviews_csv, samples=str(path)), progress=False)
    with pytest.raises(RlhfLabError, match="has no ILQL heads"):
        load_causal_lm(f"{tiny_llama_dir}@beta=2")


def test_ilql_on_the_policys_own_scored_samples(tmp_path, tiny_llama_dir, reviews_csv):
    """ilql.samples=on_policy: k samples of the starting model on each training prompt, scored by reward_fn
    before training, written to samples.jsonl; validation prompts are ones training never sees."""
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, samples="on_policy", max_steps=1,
                      on_policy=OnPolicySamplesConfig(prompts=10, samples_per_prompt=3, batch_size=8, max_new_tokens=4))
    run_dir = run_stage("ilql", cfg, progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir.path / "samples.jsonl").read_text().splitlines()]
    assert summary["samples"]["train"] == 27 and summary["samples"]["validation"] == 3 and len(rows) == 30
    assert summary["samples"]["source"].startswith("on-policy: 3 samples")
    by_split = {split: {r["prompt"] for r in rows if r["split"] == split} for split in ("train", "validation")}
    assert len(by_split["train"]) == 9 and len(by_split["validation"]) == 1 and not by_split["train"] & by_split["validation"]
    for row in rows:  # each reward is reward_fn's score of that response, of at most 4 tokens (so 4 words)
        assert row["reward"] == pytest.approx(row["response"].count("e") / max(len(row["response"]), 1))
        assert len(row["response"].split()) <= 4
    assert len({r["response"] for r in rows}) > 10  # sampled, not one answer repeated
    # the scores are normalised over the training texts, as a file's rewards are
    train = torch.tensor([r["reward"] for r in rows if r["split"] == "train"])
    assert summary["samples"]["reward_mean"] == pytest.approx(float(train.mean()), abs=1e-6)


def test_on_policy_samples_need_a_reward_and_no_columns(tmp_path, tiny_llama_dir, reviews_csv):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, samples="on_policy")
    cfg.reward_fn = RewardFnConfig()
    with pytest.raises(RlhfLabError, match="reward"):
        run_stage("ilql", cfg, progress=False)
    with pytest.raises(RlhfLabError, match="drop the column settings, or point ilql.samples at a file"):
        run_stage("ilql", make_config(tmp_path, tiny_llama_dir, reviews_csv, samples="on_policy", text_column="text"),
                  progress=False)


def test_ilql_resumed_after_an_interrupt_equals_an_uninterrupted_run(tmp_path, tiny_llama_dir, reviews_csv, monkeypatch):
    from safetensors.torch import load_file

    from rlhflab.engine import loop as engine_loop
    from rlhflab.errors import RunInterrupted
    from tests.helpers import StopAt

    settings = dict(max_steps=4, checkpoint_every=100, eval_betas=[0.0])
    straight = run_stage("ilql", make_config(tmp_path / "a", tiny_llama_dir, reviews_csv, **settings), progress=False)
    cfg = make_config(tmp_path / "b", tiny_llama_dir, reviews_csv, **settings)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_stage("ilql", cfg, progress=False)
    monkeypatch.undo()
    resumed = run_stage("ilql", cfg, resume=True, progress=False)
    for name in ("model.safetensors", "ilql_heads.safetensors"):  # the Polyak targets too
        a, b = load_file(straight.model_dir / name), load_file(resumed.model_dir / name)
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (name, key)


def test_a_steered_model_name_is_fingerprinted_as_its_run(tmp_path):
    from rlhflab.fingerprint import fingerprint

    run = tmp_path / "runs" / "x" / "ilql"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    assert fingerprint(f"{run}@beta=2") == fingerprint(str(run)) is not None  # a retrained ILQL run makes evaluate stale


class _Loaded(Exception):
    """Stops a stage right after it loaded its starting model."""


def test_training_starts_from_the_plain_lm_of_an_ilql_run(tmp_path, tiny_llama_dir, reviews_csv, monkeypatch):
    from safetensors.torch import save_file

    from rlhflab.config import SftConfig
    from rlhflab.models import causal_lm
    from rlhflab.models.reward_model import load_reward_backbone
    from rlhflab.models.snapshot import SNAPSHOT_FILE
    from rlhflab.stages import ilql as ilql_stage
    from rlhflab.stages import rl as rl_stage
    from rlhflab.stages import sft as sft_stage

    eval_prompts = tmp_path / "eval.txt"
    eval_prompts.write_text("the film was\n\na plot that\n", encoding="utf-8")
    cfg = make_config(tmp_path / "a", tiny_llama_dir, reviews_csv, max_steps=1, eval_betas=[0.0])
    cfg.data.eval_prompts = str(eval_prompts)
    run_dir = run_stage("ilql", cfg, progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert summary["left_out"] == {"prompts left blank in data.eval_prompts": 1}
    run = str(run_dir.path)

    plain, tokenizer = load_causal_lm(run, steering=False)
    assert not hasattr(plain, "ilql_beta")  # evaluation and generation keep steering (see above)
    plain.set_attn_implementation("sdpa")  # as a plain Hugging Face load has it (rlhflab's CPU matmuls differ in the last bit)
    ids = tokenizer(["the film was"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, AutoModelForCausalLM.from_pretrained(run_dir.model_dir)(ids).logits)

    # A steered name is refused by every training stage, naming the setting, before any model loads.
    fix = rf"drop the @beta=2 part \(.*{re.escape(run)}\); training starts from the plain language model"
    bad = make_config(tmp_path / "b", tiny_llama_dir, reviews_csv)
    for stage, section in (("ilql", "ilql"), ("rl", "rl"), ("dpo", "dpo")):
        getattr(bad, section).policy = f"{run}@beta=2"
        with pytest.raises(RlhfLabError, match=rf"{section}\.policy={re.escape(run)}@beta=2 asks for ILQL steering.*{fix}"):
            run_stage(stage, bad, progress=False)
    bad.sft = SftConfig(model=f"{run}@beta=2")
    with pytest.raises(RlhfLabError, match=rf"sft\.model=.*{fix}"):
        run_stage("sft", bad, progress=False)
    with pytest.raises(RlhfLabError, match=rf"reward\.model=.*{fix}"):
        load_reward_backbone(f"{run}@beta=2")
    with pytest.raises(RlhfLabError, match=fix):
        load_causal_lm(f"{run}@beta=2", steering=False)

    # A plain ILQL run as the starting policy loads without its heads.
    steered = []

    def load_and_stop(name, **kwargs):
        steered.append(hasattr(causal_lm.load_causal_lm(name, **kwargs)[0], "ilql_beta"))
        raise _Loaded

    start = make_config(tmp_path / "c", tiny_llama_dir, reviews_csv, policy=run)
    start.ppo.policy, start.sft = run, SftConfig(model=run)
    for stage, module in (("ilql", ilql_stage), ("rl", rl_stage), ("sft", sft_stage)):
        monkeypatch.setattr(module, "load_causal_lm", load_and_stop)
        with pytest.raises(_Loaded):
            run_stage(stage, start, progress=False)
    assert steered == [False, False, False]

    # So does a policy snapshot that started from it (the RL policy itself, not the ILQL model).
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    save_file({}, str(snapshot / "weights.safetensors"))
    (snapshot / SNAPSHOT_FILE).write_text(json.dumps({"base": run, "kind": "tensors", "dtype": "float32"}))
    assert not hasattr(load_causal_lm(str(snapshot))[0], "ilql_beta")
