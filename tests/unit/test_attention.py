"""rlhflab's matmul attention gives what sdpa gives, for causal LMs with grouped key/value heads
(Llama) and without (GPT-2), padded or not, with gradients, and at every decode step."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhflab.models import attention
from rlhflab.models.attention import MATMUL_ATTENTION, use_matmul_attention


def _pair(folder):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    assert use_matmul_attention(model) and model.config._attn_implementation == MATMUL_ATTENTION
    return reference, model


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
@pytest.mark.parametrize("padded", [True, False])
def test_causal_lm_outputs_and_gradients_equal_sdpa(request, which, padded):
    reference, model = _pair(request.getfixturevalue(which))
    ids = torch.randint(5, 100, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:  # left padding, as rlhflab's rollouts have it, and a right-padded response
        mask[0, :4] = 0
        mask[2, 8:] = 0
    outputs = []
    for m in (reference, model):
        m.eval()  # no dropout (GPT-2 has some), gradients all the same
        logits = m(input_ids=ids, attention_mask=mask).logits
        (logits * mask.unsqueeze(-1)).sum().backward()
        outputs.append((logits.detach(), [p.grad for p in m.parameters()]))
    real = mask.bool()
    torch.testing.assert_close(outputs[1][0][real], outputs[0][0][real], atol=1e-5, rtol=1e-5)
    # Gradients to fp32 rounding at each tensor's scale (transformers' eager attention differs from
    # sdpa by 4e-6 of it here: summing a whole vocabulary's logits leaves small entries of big sums)
    for theirs, ours in zip(outputs[0][1], outputs[1][1]):
        assert (ours - theirs).abs().max() <= 2e-5 * theirs.abs().max()


@pytest.mark.parametrize("which", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_decode_steps_take_the_grouped_matmuls_and_equal_sdpa(request, which, monkeypatch):
    reference, model = _pair(request.getfixturevalue(which))
    if which == "tiny_llama_dir":
        assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped-query attention
    decode_steps, sdpa_calls = [], []
    real_decode, real_sdpa = attention._decode_step, attention._sdpa
    monkeypatch.setattr(attention, "_decode_step", lambda q, *a: decode_steps.append(q.shape) or real_decode(q, *a))
    monkeypatch.setattr(attention, "_sdpa", lambda *a, **k: sdpa_calls.append(1) or real_sdpa(*a, **k))
    ids = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: the decode steps need a mask
    kwargs = dict(attention_mask=mask, do_sample=False, max_new_tokens=5, pad_token_id=0,
                  output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        ours, theirs = model.generate(ids, **kwargs), reference.generate(ids, **kwargs)
    torch.testing.assert_close(ours.sequences, theirs.sequences, atol=0, rtol=0)
    # Every step's logits, the decode steps' too, to fp32 rounding at their scale: on a Xeon with AMX one
    # decode step differs by 2.6e-5 at logits up to 5.5, where sdpa's own error to a float64 forward is 6.3e-5.
    for step_ours, step_theirs in zip(ours.scores, theirs.scores):
        assert (step_ours - step_theirs).abs().max() <= 2e-5 * step_theirs.abs().max()
    assert len(decode_steps) == 4 * model.config.num_hidden_layers and not sdpa_calls
    assert {shape[2] for shape in decode_steps} == {1}


def test_long_keys_go_to_sdpa_for_causal_lms(tiny_llama_dir, monkeypatch):
    reference, model = _pair(tiny_llama_dir)
    calls = []
    real = attention._sdpa
    monkeypatch.setattr(attention, "_sdpa", lambda m, q, k, *a, **kw: calls.append(k.shape[2]) or real(m, q, k, *a, **kw))
    monkeypatch.setattr(attention, "MATMUL_MAX_KEYS", 8)
    for width, sdpa_calls in ((8, 0), (12, model.config.num_hidden_layers)):
        calls.clear()
        ids = torch.randint(5, 100, (2, width), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        assert len(calls) == sdpa_calls


def test_load_causal_lm_switches_to_matmul_attention(tiny_llama_dir):
    from rlhflab.models.causal_lm import load_causal_lm

    model, _ = load_causal_lm(str(tiny_llama_dir))
    assert model.config._attn_implementation == MATMUL_ATTENTION
