"""`rlhflab pretrain` on a tiny synthetic corpus: it learns beyond n-gram counts, the model is a
plain Hugging Face causal LM the reward stage can put a scalar head on, and bad inputs are one
clear error."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhflab.config import Config, DataConfig, PretrainConfig, RewardConfig
from rlhflab.errors import RlhfLabError
from rlhflab.io import read_json
from rlhflab.stages.common import run_stage
from tests.helpers import FP32, typed_summary


def write_corpus(path, lines: int = 900, seed: int = 0):
    """Verse with structure an n-gram model cannot see: each line repeats its speaker's word."""
    rng = random.Random(seed)
    names, verbs, things = ["ROMEO", "JULIET", "NURSE", "FRIAR"], ["loves", "fears", "keeps", "finds"], ["the night", "a rose", "the moon", "my heart"]
    out = []
    for _ in range(lines):
        name = rng.choice(names)
        out.append(f"{name}.\n{name.lower()} {rng.choice(verbs)} {rng.choice(things)}, and {name.lower()} stays.\n")
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def config(tmp_path, corpus, **fields) -> Config:
    settings = dict(corpus=str(corpus), tokenizer="word", vocab_size=64, min_frequency=1, layers=2, width=32, heads=2,
                    context=16, epochs=3, batch_size=16, warmup_steps=20, lr_mul=1.0, eval_batch_size=64,
                    sample_prompts=["ROMEO.\n"], sample_tokens=8, log_every=5)
    settings.update(fields)
    return Config(runtime=FP32, name="pre", runs_dir=str(tmp_path / "runs"), stages=["pretrain"],
                  pretrain=PretrainConfig(**settings))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pretrain")
    corpus = write_corpus(tmp_path / "verse.txt")
    run_dir = run_stage("pretrain", config(tmp_path, corpus), progress=False)
    return tmp_path, run_dir, read_json(run_dir.summary_path)


def test_pretraining_learns_beyond_the_ngram_baselines(pretrained):
    _, run_dir, summary = pretrained
    assert typed_summary("pretrain", run_dir.path).after == summary["after"]
    validation = summary["after"]["validation"]["perplexity"]
    assert validation < 0.5 * summary["baselines"]["unigram"]
    assert validation < summary["baselines"]["bigram"]
    assert summary["tokens"]["train"] > 8 * summary["tokens"]["validation"]  # 90:10
    epochs = summary["epochs"]
    assert [row["epoch"] for row in epochs] == [1, 2, 3] and all("validation_loss" in row and "train_loss" in row for row in epochs)
    assert epochs[-1]["validation_loss"] < epochs[0]["validation_loss"]
    assert summary["samples"] and summary["samples"][0]["prompt"] == "ROMEO.\n"


def test_the_model_round_trips_through_auto_classes_and_takes_a_scalar_head(pretrained, reviews_csv):
    tmp_path, run_dir, _ = pretrained
    model = AutoModelForCausalLM.from_pretrained(run_dir.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir.model_dir)
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}) == 3
    ids = tokenizer("romeo loves the night", return_tensors="pt").input_ids
    again = AutoModelForCausalLM.from_pretrained(run_dir.model_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits, atol=0, rtol=0)
    cfg = Config(runtime=FP32, name="pre", runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(reviews_csv), per_class=30),
                 reward=RewardConfig(model=str(run_dir.final), trainable="all", max_length=16, epochs=1, batch_size=8))
    summary = read_json(run_stage("reward", cfg, progress=False).summary_path)
    assert summary["model"] == str(run_dir.final) and "accuracy" in summary["metrics"]["test"]


@pytest.mark.parametrize("case, fields, message", [
    ("empty", {}, "no text"),
    ("tiny", {"context": 64}, "fewer than one block"),
    ("vocab", {"vocab_size": 2}, "pretrain.vocab_size"),
])
def test_bad_inputs_are_one_clear_error_and_leave_nothing(tmp_path, case, fields, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("" if case == "empty" else "to be or not to be\n" * (8 if case == "tiny" else 50), encoding="utf-8")
    with pytest.raises(RlhfLabError, match=message):
        run_stage("pretrain", config(tmp_path, corpus, **fields), progress=False)
    assert not (tmp_path / "runs").exists()


def test_rl_refuses_a_context_the_policy_cannot_hold(tmp_path, tiny_gpt2_dir, reviews_csv):
    """A GPT-2 style policy (128 positions here) cannot embed prompt + 200 new tokens: one clear error."""
    from rlhflab.config import PpoConfig, RewardFnConfig

    reward = tmp_path / "r.py"
    reward.write_text("def f(prompts, responses):\n    return [0.0] * len(responses)\n")
    cfg = Config(runtime=FP32, name="ctx", runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(reviews_csv), per_class=30),
                 reward_fn=RewardFnConfig(source=f"{reward}:f"),
                 ppo=PpoConfig(policy=str(tiny_gpt2_dir), steps=1, batch_size=8, minibatch_size=4, max_new_tokens=200))
    with pytest.raises(RlhfLabError, match="holds 128 positions"):
        run_stage("rl", cfg, progress=False)
