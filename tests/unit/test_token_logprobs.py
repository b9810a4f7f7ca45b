"""The chunked token log-prob op against the plain path (full logits, log_softmax, gather)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlhflab.ops.token_logprobs import token_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, H, V = 37, 16, 37  # V = N: the labels below are a permutation, so every id is a label somewhere


def _inputs(seed: int, dtype=torch.float32, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g) * scale).to(dtype)
    weight = torch.randn(V, H, generator=g).to(dtype)
    labels = torch.randperm(V, generator=g)[:N]
    return hidden, weight, labels


def _plain(hidden, weight, labels, temperature):
    """What the policy did before: lm_head logits, fp32, / T, log_softmax, gather; entropy of the softmax."""
    logits = F.linear(hidden, weight).float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    entropy = torch.distributions.Categorical(logits=logits.detach()).entropy()
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), entropy


def _grads(fn, hidden, weight, labels, temperature, upstream):
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logprobs, entropy = fn(h, w, labels, temperature)
    (logprobs * upstream).sum().backward()
    return logprobs.detach(), entropy, h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [1, 8, 36, 37, 512])
@pytest.mark.parametrize("keep_logits_bytes", [0, 2**30])  # recompute each chunk in backward / reuse the forward's
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_values_entropy_and_gradients_equal_the_plain_path(chunk_rows, keep_logits_bytes, temperature):
    hidden, weight, labels = _inputs(0)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(9))  # not all ones: g enters the gradient

    def fused(h, w, y, t):
        return token_logprobs(h, w, y, t, entropy=True, chunk_rows=chunk_rows, keep_logits_bytes=keep_logits_bytes)

    got = _grads(fused, hidden, weight, labels, temperature, upstream)
    want = _grads(_plain, hidden, weight, labels, temperature, upstream)
    for a, b in zip(got, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not got[1].requires_grad  # the entropy is a statistic, never in a loss


def test_gradcheck_in_float64_for_hidden_and_weight():
    hidden, weight, labels = _inputs(1, torch.float64, scale=1.0)
    h, w = hidden[:7].requires_grad_(), weight[:11].requires_grad_()
    y = labels[:7] % 11

    def fn(h, w):
        return token_logprobs(h, w, y, 0.8, chunk_rows=3, keep_logits_bytes=0)[0]

    assert torch.autograd.gradcheck(fn, (h, w))


def test_bf16_autocast_matches_the_plain_path_within_bf16_tolerance():
    """Under autocast the GEMM runs in bf16 (as lm_head(h) does) and everything after it in fp32."""
    hidden, weight, labels = _inputs(2)
    upstream = torch.randn(N, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(lambda h, w, y, t: token_logprobs(h, w, y, t, entropy=True, chunk_rows=8), hidden, weight, labels,
                     0.7, upstream)
        want = _grads(_plain, hidden, weight, labels, 0.7, upstream)
    # log-probs and entropy: the same bf16 logits, then the same fp32 math
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)
    # gradients: bf16 GEMMs on both sides (the weight's summed over chunks in fp32 here)
    for a, b in zip(got[2:], want[2:]):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-2 * b.abs().max().item(), rtol=2e-2)
    # and the bf16 GEMM really ran: fp32 logits differ from these by more than the tolerance above
    fp32 = _plain(hidden, weight, labels, 0.7)[0]
    assert (fp32 - got[0]).abs().max() > 1e-4


def test_bf16_hidden_and_weight_without_autocast_give_bf16_gradients():
    hidden, weight, labels = _inputs(4, torch.bfloat16)
    upstream = torch.ones(N)
    got = _grads(lambda h, w, y, t: token_logprobs(h, w, y, t, entropy=True, chunk_rows=5), hidden, weight, labels, 1.3,
                 upstream)
    want = _grads(_plain, hidden, weight, labels, 1.3, upstream)
    assert got[0].dtype == torch.float32 and got[2].dtype == got[3].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], want[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1], want[1], atol=1e-4, rtol=1e-4)
    for a, b in zip(got[2:], want[2:]):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2 * b.abs().max().item(), rtol=3e-2)


def test_a_frozen_weight_gets_no_gradient_and_leading_dims_are_kept():
    hidden, weight, labels = _inputs(5)
    h = hidden[:36].reshape(4, 9, H).requires_grad_()
    logprobs, entropy = token_logprobs(h, weight, labels[:36].reshape(4, 9), entropy=True, chunk_rows=10)
    assert logprobs.shape == entropy.shape == (4, 9)
    logprobs.sum().backward()
    assert weight.grad is None and h.grad.shape == (4, 9, H)
    plain = _plain(hidden[:36], weight, labels[:36], 1.0)[0]
    torch.testing.assert_close(logprobs.detach().reshape(-1), plain, atol=1e-5, rtol=1e-5)


def test_hand_value_and_no_entropy_unless_asked():
    # h W^T = (1, 2, 3), label 2 -> 3 - log(e + e^2 + e^3)
    logprobs, entropy = token_logprobs(torch.tensor([[1.0]]), torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([2]))
    assert entropy is None
    assert logprobs.item() == pytest.approx(3 - torch.tensor([1.0, 2.0, 3.0]).logsumexp(0).item(), rel=1e-6)


def test_large_logits_stay_finite():
    hidden, weight, labels = _inputs(6, scale=1e3)  # logits ~1e4: exp without the max shift overflows
    logprobs, entropy = token_logprobs(hidden, weight, labels, entropy=True, chunk_rows=8)
    want, want_entropy = _plain(hidden, weight, labels, 1.0)
    assert torch.isfinite(logprobs).all() and torch.isfinite(entropy).all()
    torch.testing.assert_close(logprobs, want, atol=1e-2, rtol=1e-5)
    torch.testing.assert_close(entropy, want_entropy, atol=1e-3, rtol=1e-3)


def test_empty_batch():
    logprobs, entropy = token_logprobs(torch.zeros(0, 3, H), torch.zeros(V, H), torch.zeros(0, 3, dtype=torch.long),
                                       entropy=True)
    assert logprobs.shape == entropy.shape == (0, 3)


@pytest.mark.parametrize("bad", [dict(labels=torch.zeros(N - 1, dtype=torch.long)), dict(weight=torch.zeros(V, H + 1)),
                                 dict(temperature=0.0), dict(chunk_rows=0)])
def test_bad_arguments_are_refused(bad):
    hidden, weight, labels = _inputs(7)
    args = dict(hidden=hidden, weight=weight, labels=labels) | bad
    with pytest.raises(ValueError):
        token_logprobs(**args)
