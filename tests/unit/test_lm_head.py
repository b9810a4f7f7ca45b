"""SplitForward(nll=True) gives what the logits path gives (SFT and pretraining train on it):
the same NLL sum, token count and gradients, from the full model and from cached frozen blocks."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhflab.models.blocks import lower_hidden
from rlhflab.models.encoding import SplitForward
from rlhflab.models.lm_head import next_token_nll
from rlhflab.ops.lm_loss import token_nll_sum


def _batch():
    ids = torch.randint(5, 100, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding, as SFT's splits have it
    mask[2, 2:] = 0
    return ids, mask


@pytest.mark.parametrize("first", [None, 2])
def test_nll_forward_equals_the_logits_path_with_gradients(tiny_llama_dir, first):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ids, mask = _batch()
    hidden = lower_hidden(model, first, ids, mask) if first is not None else None
    results = []
    for nll in (False, True):
        model.zero_grad()
        out = SplitForward(model, first, nll=nll)(ids, mask, hidden)
        total, count = out if nll else token_nll_sum(out, ids, mask)
        total.backward()
        results.append((total.detach(), count, [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (plain, n_plain, g_plain), (fused, n_fused, g_fused) = results
    assert n_fused == n_plain == 8 + 5 + 1
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-5)
    assert len(g_fused) == len(g_plain) > 0
    for ours, theirs in zip(g_fused, g_plain):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_a_head_with_a_bias_takes_the_plain_path(tiny_gpt2_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    model.lm_head.bias = torch.nn.Parameter(torch.randn(model.lm_head.out_features))
    ids, mask = _batch()
    states = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    total, count = next_token_nll(model, states, ids, mask)
    expected, n = token_nll_sum(model(input_ids=ids, attention_mask=mask).logits, ids, mask)
    assert count == n
    torch.testing.assert_close(total, expected)
