"""rlhflab's decode loop: the distribution it draws from, and the same model computation as `generate`."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhflab.models import sampling
from rlhflab.models.causal_lm import sample_tokens
from rlhflab.models.sampling import decode, draw_tokens

PROMPTS = ["the film was", "a long and rather dull story about", "I"]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_draws_follow_the_softmax_at_the_temperature(temperature):
    torch.manual_seed(0)
    logits = torch.tensor([2.0, 0.5, -1.0, 0.0, 1.2, -3.0])
    n = 200_000
    tokens = draw_tokens(logits.expand(n, -1), temperature)
    freq = torch.bincount(tokens, minlength=6).double() / n
    p = torch.softmax(logits.double() / temperature, -1)
    sigma = (p * (1 - p) / n).sqrt()
    assert torch.all((freq - p).abs() < 5 * sigma), (freq, p)


@pytest.mark.parametrize("block", [1, 2, 3, 256])
def test_blocks_of_any_size_and_empty_blocks_leave_the_distribution_alone(block):
    torch.manual_seed(0)
    inf = float("-inf")
    logits = torch.tensor([inf, inf, 0.0, 1.0, inf, inf, 2.0, inf, -1.0])
    before = logits.clone()
    n = 100_000
    tokens = draw_tokens(logits.expand(n, -1), 1.0, block=block)
    assert torch.equal(logits, before)  # the caller's logits are not overwritten
    freq = torch.bincount(tokens, minlength=9).double() / n
    p = torch.softmax(logits.double(), -1)
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt()), (freq, p)


def test_a_token_of_probability_zero_is_never_drawn_and_a_certain_one_always():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")], [float("-inf"), float("-inf"), 5.0, float("-inf")]])
    tokens = draw_tokens(logits.repeat(5000, 1))
    assert set(tokens[0::2].tolist()) == {0, 2}
    assert set(tokens[1::2].tolist()) == {2}


def test_a_large_vocabulary_in_bf16_keeps_the_tail():
    """49,152 entries: fp32 cumulative sums would smear the boundaries; float64 keeps a 1e-4 token at 1e-4."""
    torch.manual_seed(0)
    v, n = 49152, 20_000
    logits = torch.full((v,), -30.0)
    logits[7], logits[v - 1] = 0.0, float(torch.log(torch.tensor(1e-1 / 0.9)))  # p = 0.9, 0.1
    tokens = draw_tokens(logits.to(torch.bfloat16).expand(n, -1))
    share = (tokens == v - 1).double().mean()
    assert abs(share - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    assert set(tokens.tolist()) <= {7, v - 1}


def _model(folder):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_decoding_equals_generate(family, tiny_llama_dir, tiny_gpt2_dir, monkeypatch):
    """With the draw replaced by argmax, the loop must reproduce generate's greedy output token for
    token: the same forward passes, cache, positions and masks for left-padded prompts."""
    model, tokenizer = _model(tiny_llama_dir if family == "llama" else tiny_gpt2_dir)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    monkeypatch.setattr(sampling, "draw_tokens", lambda logits, temperature: logits.argmax(-1))
    ours = decode(model, enc.input_ids, enc.attention_mask, max_new_tokens=10, temperature=1.0,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    model.generation_config.eos_token_id = None  # no stop token on either side
    theirs = model.generate(**enc, do_sample=False, max_new_tokens=10, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(ours, theirs)


def test_the_logits_drawn_from_are_the_models_over_the_whole_sequence(tiny_llama_dir, monkeypatch):
    """The PPO property for this loop: log-probs recomputed by one forward pass over prompt +
    response equal those of the distributions the tokens were drawn from."""
    model, tokenizer = _model(tiny_llama_dir)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    seen, real = [], sampling.draw_tokens

    def recording(logits, temperature):
        seen.append(torch.log_softmax(logits.float() / temperature, -1))
        return real(logits, temperature)

    monkeypatch.setattr(sampling, "draw_tokens", recording)
    torch.manual_seed(3)
    out = decode(model, enc.input_ids, enc.attention_mask, max_new_tokens=8, temperature=0.7,
                 pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    width = enc.input_ids.shape[1]
    response = out[:, width:]
    drawn = torch.stack(seen, 1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    mask = torch.cat([enc.attention_mask, torch.ones_like(response)], 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=out, attention_mask=mask, position_ids=positions).logits[:, width - 1 : -1]
    recomputed = torch.log_softmax(logits / 0.7, -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(recomputed, drawn, atol=1e-4, rtol=0)


def test_rows_stop_at_their_stop_token_and_are_padded_after_it(tiny_llama_dir, monkeypatch):
    model, tokenizer = _model(tiny_llama_dir)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    stop, pad = 5, tokenizer.pad_token_id
    script = iter([[1, stop, 9], [stop, 2, 9], [3, 3, stop], [4, 4, 4]])  # every row has stopped after step 3
    monkeypatch.setattr(sampling, "draw_tokens", lambda logits, temperature: torch.tensor(next(script)))
    out = decode(model, enc.input_ids, enc.attention_mask, max_new_tokens=10, temperature=1.0,
                 pad_token_id=pad, eos_token_id=[stop])
    response = out[:, enc.input_ids.shape[1]:].tolist()
    assert response == [[1, stop, pad], [stop, pad, pad], [9, 9, stop]]


def test_sample_tokens_runs_the_loop_only_for_pure_sampling(tiny_llama_dir, monkeypatch):
    model, tokenizer = _model(tiny_llama_dir)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    calls = []
    monkeypatch.setattr(sampling, "decode", lambda *a, **k: calls.append("decode") or a[1])
    common = dict(max_new_tokens=4, temperature=1.0, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    sample_tokens(model, enc.input_ids, enc.attention_mask, top_k=0, top_p=1.0, **common)
    assert calls == ["decode"]
    for top_k, top_p in ((5, 1.0), (0, 0.9)):
        out = sample_tokens(model, enc.input_ids, enc.attention_mask, top_k=top_k, top_p=top_p, **common)
        assert out.shape[1] > enc.input_ids.shape[1]  # generate ran (the stub returns the prompt)
    assert calls == ["decode"]


def test_frozen_weights_are_cast_once_per_rollout_with_the_same_samples(tiny_llama_dir, monkeypatch):
    """casts_kept changes how often autocast casts a frozen weight, never what it samples, and leaves
    every requires_grad flag as it found it - also when sampling fails."""
    from rlhflab import rollout
    from rlhflab.models.causal_lm import load_causal_lm
    from rlhflab.models.policy import build_policy

    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    policy = build_policy(model, [-1])
    flags = [p.requires_grad for p in policy.model.parameters()]
    assert not all(flags) and any(flags)
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    args = dict(max_new_tokens=6, temperature=1.0, top_k=0, top_p=1.0, stop_ids=[], autocast=bf16)
    casts = []

    def runs(kept: bool):
        # casts_kept on its own: on a CPU with bf16 kernels the linear layers take packed weights instead
        monkeypatch.setattr(sampling, "packed_linears", lambda model, rows: contextlib.nullcontext())
        if not kept:
            monkeypatch.setattr(rollout, "casts_kept", lambda model: contextlib.nullcontext())
        torch.manual_seed(5)
        with torch.profiler.profile() as prof:
            out = rollout.sample(policy, tokenizer, PROMPTS, **args)
        casts.append(sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy"))
        monkeypatch.undo()
        return out.sequences

    assert torch.equal(runs(True), runs(False))
    assert casts[0] < casts[1]  # fewer casts with the frozen weights kept
    assert [p.requires_grad for p in policy.model.parameters()] == flags

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(rollout, "sample_tokens", broken)
    with pytest.raises(ValueError):
        rollout.sample(policy, tokenizer, PROMPTS, **args)
    assert [p.requires_grad for p in policy.model.parameters()] == flags
    with pytest.raises(RuntimeError):
        with rollout.casts_kept(policy.model):
            pass


bf16_kernels = pytest.mark.skipif(not sampling.onednn_bf16(),
                                  reason="this CPU has no oneDNN bf16 kernels: packed_linears does nothing here")


def _logits(model, ids, mask):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return model(input_ids=ids, attention_mask=mask).logits


@bf16_kernels
def test_packed_linears_give_autocasts_logits_to_the_bit_and_restore_the_layers(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.randint(5, 100, (3, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    plain = _logits(model, ids, mask)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), sampling.packed_linears(model, rows=3):
        assert all("forward" in vars(m) for m in linears)  # every linear layer, the LM head too
        packed = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(packed, plain)
    assert not any("forward" in vars(m) for m in linears)
    with pytest.raises(ValueError):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), sampling.packed_linears(model, rows=3):
            raise ValueError("boom")
    assert not any("forward" in vars(m) for m in linears)


def test_packed_linears_do_nothing_outside_bf16_inference(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for region in (torch.no_grad, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):  # fp32; with gradients
        with region(), sampling.packed_linears(model, rows=2):
            assert not any("forward" in vars(m) for m in linears)


@bf16_kernels
@pytest.mark.parametrize("foreach", [False, True])
def test_a_weight_written_in_place_is_packed_again(tiny_llama_dir, foreach):
    """A kept copy serves while its weight is unchanged; an optimizer step or a loaded state
    dict writes in place, and the next call packs the new values."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids = torch.randint(5, 100, (2, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)

    def packed_logits():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), sampling.packed_linears(model, rows=2):
            return model(input_ids=ids, attention_mask=mask).logits

    before = packed_logits()
    assert torch.equal(packed_logits(), before)  # the kept copies
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=foreach)
    model(input_ids=ids, attention_mask=mask).logits.sum().backward()
    optimizer.step()
    stepped = packed_logits()
    assert not torch.equal(stepped, before) and torch.equal(stepped, _logits(model, ids, mask))
    model.load_state_dict(AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict())
    assert torch.equal(packed_logits(), before)
    model.to(torch.float64).to(torch.float32)  # new storage, no new version
    for layer in model.model.layers:
        layer.mlp.down_proj.weight.data = layer.mlp.down_proj.weight.data * 2
    assert torch.equal(packed_logits(), _logits(model, ids, mask)) and not torch.equal(packed_logits(), before)
