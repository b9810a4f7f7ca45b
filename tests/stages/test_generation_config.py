"""Sampling follows rlhflab's config alone (issue 10): a model folder's generation_config.json
(repetition penalty, n-gram bans, top-k, minimum length, ...) changes nothing, in evaluation
and in PPO rollouts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhflab.eval.generate import generate
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.policy import build_policy, policy_forward
from rlhflab import rollout as rollout_module
from rlhflab.rollout import response_mask_from, sample, score_rollout

PROMPTS = ["the film was", "a dull plot and", "the cast", "it was great and the ending"]

# Settings a hub model may ship; any one of them changes what generate() samples.
FOLDER_SETTINGS = {
    "repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "top_k": 5, "min_new_tokens": 10,
    "do_sample": False, "temperature": 0.3, "top_p": 0.5, "bad_words_ids": [[5], [17]],
    "suppress_tokens": [9], "eos_token_id": 3, "max_new_tokens": 2,
}


@pytest.fixture(scope="module")
def opinionated_llama_dir(tmp_path_factory, tiny_llama_dir):
    """The same weights as tiny_llama_dir, with a generation_config.json of its own."""
    folder = tmp_path_factory.mktemp("opinionated-llama")
    shutil.copytree(tiny_llama_dir, folder, dirs_exist_ok=True)
    (folder / "generation_config.json").write_text(json.dumps(FOLDER_SETTINGS))
    return folder


def test_the_folder_settings_would_change_plain_generate(tiny_llama_dir, opinionated_llama_dir):
    """Guard: without our helper the two copies sample differently, so the tests below can fail."""
    outputs = []
    for folder in (tiny_llama_dir, opinionated_llama_dir):
        model, tokenizer = load_causal_lm(str(folder))
        tokenizer.padding_side = "left"
        enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
        torch.manual_seed(0)
        outputs.append(model.generate(**enc, do_sample=True, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id))
    assert outputs[0].shape != outputs[1].shape or not torch.equal(outputs[0], outputs[1])


def test_evaluation_samples_ignore_the_folder_generation_config(tiny_llama_dir, opinionated_llama_dir):
    runs = []
    for folder in (tiny_llama_dir, opinionated_llama_dir):
        model, tokenizer = load_causal_lm(str(folder))
        runs.append(generate(model, tokenizer, PROMPTS * 2, max_new_tokens=12, temperature=1.0, seed=3, batch_size=4))
    assert [g.response_ids for g in runs[0]] == [g.response_ids for g in runs[1]]
    lengths = [len(g.response_ids) for g in runs[1]]
    assert max(lengths) > FOLDER_SETTINGS["max_new_tokens"]  # the folder's max_new_tokens did not apply
    # The folder's generation config itself is left as it was.
    model, _ = load_causal_lm(str(opinionated_llama_dir))
    assert model.generation_config.repetition_penalty == 1.3


def _policy(folder, trainable):
    model, tokenizer = load_causal_lm(str(folder))
    tokenizer.padding_side = "left"
    probe = tokenizer(PROMPTS[:2], return_tensors="pt", padding=True)

    class Lora:
        r, alpha, dropout, target_modules = 4, 8, 0.0, None

    policy = build_policy(model, trainable if trainable == "lora" else list(trainable), Lora(),
                          probe=(probe.input_ids, probe.attention_mask))
    return policy, tokenizer


def _sample(policy, tokenizer, top_k=0):
    nullctx = torch.autocast("cpu", enabled=False)
    torch.manual_seed(5)
    return sample(policy, tokenizer, PROMPTS, max_new_tokens=12, temperature=1.0, top_k=top_k, top_p=1.0,
                  stop_ids=[tokenizer.eos_token_id], autocast=lambda: nullctx)


@pytest.mark.parametrize("trainable", [(-2, -1), "lora"])
def test_rollout_samples_ignore_the_folder_generation_config(tiny_llama_dir, opinionated_llama_dir, trainable):
    clean = _sample(*_policy(tiny_llama_dir, trainable))
    opinionated_policy, tokenizer = _policy(opinionated_llama_dir, trainable)
    opinionated = _sample(opinionated_policy, tokenizer)
    assert torch.equal(clean.sequences, opinionated.sequences)
    # Our own top_k still applies: 1 is greedy, which 0 (off) is not here.
    greedy = _sample(opinionated_policy, tokenizer, top_k=1)
    assert not torch.equal(greedy.sequences, opinionated.sequences)
    assert opinionated_policy.lm.generation_config.repetition_penalty == 1.3  # restored after sampling


@pytest.mark.parametrize("trainable", [(-2, -1), "lora"])
def test_rollout_log_probs_are_those_of_the_sampling_distribution(opinionated_llama_dir, monkeypatch, trainable):
    """The PPO property: log-probs recomputed in training equal the distribution the rollout drew from."""
    seen = {}
    real = rollout_module.sample_tokens

    def recording(*args, **kwargs):  # the rollout's own call, also asked for the processed scores
        out = real(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
        seen["scores"] = out.scores
        return out.sequences

    monkeypatch.setattr(rollout_module, "sample_tokens", recording)
    policy, tokenizer = _policy(opinionated_llama_dir, trainable)
    nullctx = torch.autocast("cpu", enabled=False)
    stop_ids = [tokenizer.eos_token_id]
    torch.manual_seed(7)
    sampled = sample(policy, tokenizer, PROMPTS, max_new_tokens=12, temperature=0.7, top_k=0, top_p=1.0,
                     stop_ids=stop_ids, autocast=lambda: nullctx)
    exp = score_rollout(policy, tokenizer, lambda p, r: torch.ones(len(r)), PROMPTS, sampled, temperature=0.7,
                        stop_ids=stop_ids, non_stop_penalty=None, autocast=lambda: nullctx)
    response = exp.input_ids[:, exp.response_start:]
    drawn = torch.stack([torch.log_softmax(s.float(), -1) for s in seen["scores"]], dim=1)
    drawn = drawn.gather(-1, response[:, :drawn.shape[1]].unsqueeze(-1)).squeeze(-1)
    mask = exp.response_mask.bool()[:, :drawn.shape[1]]
    assert mask.sum() > 8
    torch.testing.assert_close(exp.logprobs[:, :drawn.shape[1]][mask], drawn[mask], atol=1e-4, rtol=0)

    # And the training forward (policy in train mode) gives the same log-probs.
    policy.model.train()
    out = policy_forward(policy, exp.input_ids, exp.attention_mask, exp.response_start, 0.7, exp.lower)
    again = out.logprobs
    torch.testing.assert_close(again[exp.response_mask.bool()], exp.logprobs[exp.response_mask.bool()], atol=1e-5, rtol=0)


def test_a_response_may_end_at_once_whatever_the_folder_minimum(opinionated_llama_dir):
    """min_new_tokens=10 in the folder would forbid an early stop; ours is 0."""
    policy, tokenizer = _policy(opinionated_llama_dir, (-2, -1))
    eos = tokenizer.eos_token_id

    def eos_first(module, inputs, logits):  # makes EOS all but certain at every position
        logits[..., eos] += 100.0
        return logits

    hook = policy.lm.lm_head.register_forward_hook(eos_first)
    sampled = _sample(policy, tokenizer)
    hook.remove()
    mask, stopped = response_mask_from(sampled.sequences[:, sampled.width:], [eos])
    assert stopped.all() and mask.sum(-1).tolist() == [1] * len(PROMPTS)
