"""The DPO stage on a tiny in-test Llama: on-policy and file pairs, the cached reference, the outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhflab.algorithms.dpo import TokenPair, best_and_worst, encode_pairs
from rlhflab.config import Config, DataConfig, DpoConfig, OnPolicyPairsConfig, PairsConfig, PpoConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.ops.preference import sequence_logprobs
from rlhflab.stages.common import run_stage
from tests.helpers import FP32

REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]

def constant(prompts, responses):
    return [1.0 for r in responses]
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    return path


def make_config(tmp_path, model_dir, csv_path, reward, **fields) -> Config:
    settings = dict(policy=str(model_dir), max_steps=4, batch_size=4, learning_rate=5e-3, eval_batch_size=8,
                    eval_prompts=6, log_every=1, warmup_ratio=0.0, beta=0.5,
                    on_policy=OnPolicyPairsConfig(prompts=16, samples_per_prompt=3, batch_size=16))
    settings.update(fields)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(csv_path), per_class=30), reward_fn=RewardFnConfig(source=reward),
                  ppo=PpoConfig(max_new_tokens=6), dpo=DpoConfig(**settings))


def test_best_and_worst_picks_extremes_and_flags_ties():
    chosen, rejected, usable = best_and_worst(torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [2.0, -1.0, 2.0]]))
    assert chosen.tolist() == [1, 0, 0] and rejected.tolist() == [0, 0, 1]
    assert usable.tolist() == [True, False, True]


def test_encoded_pair_logprobs_do_not_depend_on_padding(tiny_llama_dir):
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    short = TokenPair("p", "a", "b", (5, 6), (7, 8), (9,))
    long = TokenPair("q", "c", "d", (5, 6, 7, 8, 9, 10), (11, 12, 13, 14, 15), (16, 17, 18))

    def logprobs(pairs):
        split, mask, _ = encode_pairs(pairs, tokenizer, max_length=32)
        with torch.no_grad():
            logits = model(input_ids=split.input_ids, attention_mask=split.attention_mask).logits
        return sequence_logprobs(logits[:, :-1], split.input_ids[:, 1:], mask[:, 1:])

    alone, together = logprobs([short]), logprobs([short, long])
    assert torch.allclose(alone, together[[0, 2]], atol=1e-5)  # the short pair's chosen and rejected rows


def test_encode_pairs_cuts_the_prompt_from_its_front():
    class Tok:
        bos_token_id, eos_token_id, pad_token_id = None, 0, 0

    split, mask, cut = encode_pairs([TokenPair("", "", "", (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11, 12))], Tok(), max_length=5)
    # The long response keeps its beginning and one prompt token to be predicted from.
    assert split.input_ids.tolist() == [[2, 3, 4, 5, 6], [4, 7, 8, 9, 10]]
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]] and cut == 1
    empty, mask, _ = encode_pairs([TokenPair("", "", "", (), (5,), (6,))], Tok(), max_length=5)
    assert empty.input_ids[:, 0].tolist() == [0, 0] and mask.tolist() == [[0, 1], [0, 1]]  # starts from EOS


def test_on_policy_dpo_runs_and_starts_at_the_reference(tmp_path, tiny_llama_dir, reviews_csv, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share")
    run_dir = run_stage("dpo", cfg, progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    # Step 0: the policy is its own reference, so every pair's h is 0 and the loss is log 2.
    for metrics in summary["before"].values():
        assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert metrics["margin"] == pytest.approx(0.0, abs=1e-5)
    assert summary["start"]["kl"] == 0.0 and "score" in summary["end"]
    assert summary["after"]["train"]["loss"] < math.log(2)  # it learned the training pairs
    pairs = [json.loads(line) for line in (run_dir.path / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == summary["pairs"]["train"] + summary["pairs"]["validation"] + summary["pairs"]["test"]
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert summary["pairs"]["source"] == "on-policy"
    AutoModelForCausalLM.from_pretrained(run_dir.model_dir)  # a plain causal LM


def test_dpo_from_a_pairs_file_with_ipo(tmp_path, tiny_llama_dir, reviews_csv, pairs_jsonl, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", loss="ipo", learning_rate=2e-4,
                      pairs=PairsConfig(source=str(pairs_jsonl), fractions=[0.8, 0.2, 0.0]))
    summary = json.loads((run_stage("dpo", cfg, progress=False).path / "summary.json").read_text())
    assert summary["loss"] == "ipo" and summary["pairs"]["source"] == str(pairs_jsonl)
    assert summary["pairs"]["train"] == 32 and summary["pairs"]["validation"] == 8  # 40 pairs, 80% / 20%
    assert summary["after"]["train"]["loss"] < summary["before"]["train"]["loss"]


def test_all_tied_samples_are_a_clear_error(tmp_path, tiny_llama_dir, reviews_csv, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:constant")
    with pytest.raises(RlhfLabError, match="scored the same"):
        run_stage("dpo", cfg, progress=False)


def test_dpo_resumed_after_an_interrupt_equals_an_uninterrupted_run(tmp_path, tiny_llama_dir, reviews_csv, reward_file,
                                                                   monkeypatch):
    from safetensors.torch import load_file

    from rlhflab.engine import loop as engine_loop
    from rlhflab.errors import RunInterrupted
    from tests.helpers import StopAt

    def config(folder):
        return make_config(folder, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", checkpoint_every=100)

    straight = run_stage("dpo", config(tmp_path / "a"), progress=False)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_stage("dpo", config(tmp_path / "b"), progress=False)
    monkeypatch.undo()
    resumed = run_stage("dpo", config(tmp_path / "b"), resume=True, progress=False)  # the pairs are sampled again, alike
    a, b = load_file(straight.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_at_step_zero_the_policy_scores_every_pair_as_the_cached_reference_does(tiny_llama_dir):
    from rlhflab.algorithms.dpo import DpoObjective
    from rlhflab.engine.runtime import Runtime
    from rlhflab.models.blocks import freeze_all_but_blocks
    from rlhflab.models.encoding import SplitForward, encode_and_cache, make_forward

    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    freeze_all_but_blocks(model, [2, 3])
    pairs = [TokenPair("", "", "", (5, 6, 7)[: 1 + i % 3], tuple(range(8, 9 + i % 4)), tuple(range(20, 22 + i % 2)))
             for i in range(6)]
    split, mask, _ = encode_pairs(pairs, tokenizer, max_length=16)
    runtime = Runtime.create("cpu", "no")
    data, first, _ = encode_and_cache(model, {"train": split}, tokenizer, max_length=16, append_eos=False, device="cpu",
                                      cache_frozen=True, batch_size=4, autocast=runtime.autocast, progress=False)
    assert first == 2  # the frozen lower blocks are cached, as in a real run
    objective = DpoObjective(make_forward(SplitForward(model, first), runtime.autocast), data, {"train": mask}, beta=0.5,
                             loss="sigmoid", batch_size=4, model=model, runtime=runtime)
    # training batches of 3 pairs (6 rows) against the reference scored in batches of 4 rows
    policy = torch.cat([objective.logprobs("train", torch.tensor([i, i + 1, i + 2, i + 6, i + 7, i + 8]))
                        for i in (0, 3)]).detach()
    reference = objective.reference["train"][[0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]]
    assert torch.allclose(policy, reference, atol=1e-5)
    assert objective.metrics("train")["loss"] == pytest.approx(objective.metrics("train", start=True)["loss"], abs=1e-6)
