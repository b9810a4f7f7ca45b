"""GAE, PPO policy/value losses, entropy and token logprobs against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.ops.ppo import entropy_from_logits, gae, logprobs_from_logits, policy_loss, value_loss


from tests.helpers import close

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# GAE


def reference_gae(rewards: list[float], values: list[float], mask: list[int], gamma: float, lam: float) -> list[float]:
    """Slow GAE for one row: walk the valid positions only, V = 0 after the last one."""
    positions = [t for t, m in enumerate(mask) if m]
    advantages = [0.0] * len(mask)
    next_value, next_adv = 0.0, 0.0
    for t in reversed(positions):
        delta = rewards[t] + gamma * next_value - values[t]
        next_adv = delta + gamma * lam * next_adv
        next_value = values[t]
        advantages[t] = next_adv
    return advantages


def test_gae_three_step_hand_example():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    # delta_2 = 2 + 0.9 * 0   - 1.5 = 0.5      (V after the end = 0)
    # delta_1 = 0 + 0.9 * 1.5 - 1.0 = 0.35
    # delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
    # A_2 = 0.5
    # A_1 = 0.35 + 0.72 * 0.5  = 0.71
    # A_0 = 1.4  + 0.72 * 0.71 = 1.9112
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma, lam)
    assert close(advantages, [[1.9112, 0.71, 0.5]])
    assert close(returns, [[1.9112 + 0.5, 0.71 + 1.0, 0.5 + 1.5]])


def test_gae_same_example_left_and_right_padded():
    gamma, lam = 0.9, 0.8
    left_r = torch.tensor([[9.0, 9.0, 1.0, 0.0, 2.0]])
    left_v = torch.tensor([[7.0, 7.0, 0.5, 1.0, 1.5]])
    left_m = torch.tensor([[0, 0, 1, 1, 1]])
    adv, ret = gae(left_r, left_v, left_m, gamma, lam)
    assert close(adv, [[0.0, 0.0, 1.9112, 0.71, 0.5]])
    assert close(ret, [[0.0, 0.0, 2.4112, 1.71, 2.0]])
    # right padding: the values after the end (7.0) must not be bootstrapped from
    right_r = torch.tensor([[1.0, 0.0, 2.0, 9.0, 9.0]])
    right_v = torch.tensor([[0.5, 1.0, 1.5, 7.0, 7.0]])
    right_m = torch.tensor([[1, 1, 1, 0, 0]])
    adv, ret = gae(right_r, right_v, right_m, gamma, lam)
    assert close(adv, [[1.9112, 0.71, 0.5, 0.0, 0.0]])
    assert close(ret, [[2.4112, 1.71, 2.0, 0.0, 0.0]])


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.5, -1.0, 3.0]])
    values = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    advantages, returns = gae(rewards, values, torch.ones(1, 4), 1.0, 1.0)
    to_go = [2.5, 2.5, 2.0, 3.0]
    assert close(advantages, [[g - v for g, v in zip(to_go, values[0].tolist())]])
    assert close(returns, [to_go])


def test_gae_with_lam_zero_is_one_step_td():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 4.0]])
    advantages, _ = gae(rewards, values, torch.ones(1, 3), 0.5, 0.0)
    assert close(advantages, [[1 + 0.5 * 0.25 - 0.5, 2 + 0.5 * 4.0 - 0.25, 3 - 4.0]])


def random_padded_batch(g: torch.Generator, b: int, t: int):
    rewards = torch.randn(b, t, generator=g)
    values = torch.randn(b, t, generator=g)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):
        start = int(torch.randint(0, t, (1,), generator=g))
        end = int(torch.randint(start, t + 1, (1,), generator=g))
        mask[i, start:end] = 1  # left padding before start, right padding after end
    return rewards, values, mask


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 6),
    t=st.integers(1, 10),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_gae_matches_slow_reference_with_random_padding(b, t, gamma, lam, seed):
    g = torch.Generator().manual_seed(seed)
    rewards, values, mask = random_padded_batch(g, b, t)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    assert advantages.shape == returns.shape == (b, t)
    for i in range(b):
        expected = reference_gae(rewards[i].tolist(), values[i].tolist(), mask[i].tolist(), gamma, lam)
        assert advantages[i].tolist() == pytest.approx(expected, abs=1e-4)
    assert (advantages[mask == 0] == 0).all()
    assert (returns[mask == 0] == 0).all()
    assert torch.allclose(returns[mask == 1], (advantages + values)[mask == 1])


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(1, 8),
    left=st.integers(0, 4),
    right=st.integers(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_gae_padding_on_either_side_does_not_change_valid_advantages(t, left, right, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(1, t, generator=g)
    values = torch.randn(1, t, generator=g)
    base_adv, base_ret = gae(rewards, values, torch.ones(1, t), 0.95, 0.9)
    # padding carries junk (large numbers) to show it is never read
    pad_l = torch.full((1, left), 1e3)
    pad_r = torch.full((1, right), -1e3)
    padded_r = torch.cat([pad_l, rewards, pad_r], dim=1)
    padded_v = torch.cat([pad_l, values, pad_r], dim=1)
    mask = torch.cat([torch.zeros(1, left), torch.ones(1, t), torch.zeros(1, right)], dim=1)
    adv, ret = gae(padded_r, padded_v, mask, 0.95, 0.9)
    assert torch.allclose(adv[:, left : left + t], base_adv, atol=1e-6)
    assert torch.allclose(ret[:, left : left + t], base_ret, atol=1e-6)
    assert (adv[:, :left] == 0).all() and (adv[:, left + t :] == 0).all()


def test_gae_skips_a_masked_gap_inside_a_row():
    # mask 1 0 1: the gap is not a step, so the row behaves like the two-token row [1, 2]
    rewards = torch.tensor([[1.0, 50.0, 2.0]])
    values = torch.tensor([[0.5, 50.0, 1.5]])
    advantages, returns = gae(rewards, values, torch.tensor([[1, 0, 1]]), 0.9, 0.8)
    # delta_1 = 2 - 1.5 = 0.5; delta_0 = 1 + 0.9 * 1.5 - 0.5 = 1.85; A_0 = 1.85 + 0.72 * 0.5 = 2.21
    assert close(advantages, [[2.21, 0.0, 0.5]])
    assert close(returns, [[2.71, 0.0, 2.0]])


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 4), t=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_gae_matches_slow_reference_with_arbitrary_masks(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, t, generator=g)
    values = torch.randn(b, t, generator=g)
    mask = (torch.rand(b, t, generator=g) < 0.6).long()
    advantages, _ = gae(rewards, values, mask, 0.97, 0.9)
    for i in range(b):
        expected = reference_gae(rewards[i].tolist(), values[i].tolist(), mask[i].tolist(), 0.97, 0.9)
        assert advantages[i].tolist() == pytest.approx(expected, abs=1e-4)


def test_gae_fully_masked_row_and_non_finite_padding():
    rewards = torch.tensor([[1.0, 2.0], [float("nan"), float("inf")]])
    values = torch.tensor([[0.0, 0.0], [float("inf"), float("nan")]])
    mask = torch.tensor([[1, 1], [0, 0]])
    advantages, returns = gae(rewards, values, mask, 1.0, 1.0)
    assert advantages.tolist() == [[3.0, 2.0], [0.0, 0.0]]
    assert returns.tolist() == [[3.0, 2.0], [0.0, 0.0]]


def test_gae_outputs_carry_no_gradient():
    values = torch.randn(2, 3, requires_grad=True)
    advantages, returns = gae(torch.randn(2, 3), values, torch.ones(2, 3), 0.99, 0.95)
    assert not advantages.requires_grad and not returns.requires_grad


# ---------------------------------------------------------------------------------------------
# policy loss


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    adv = torch.tensor([[1.0, -2.0, 4.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = policy_loss(logp, logp.clone(), adv, mask, 0.2)
    assert loss.item() == pytest.approx(-(1.0 - 2.0 + 4.0) / 3)
    assert stats == {"clip_fraction": 0.0, "approx_kl": 0.0, "ratio_mean": pytest.approx(1.0)}
    assert all(isinstance(v, float) for v in stats.values())


def test_policy_loss_positive_advantage_ratio_above_range_is_clipped():
    # ratio 1.5, c 0.2, A 2: unclipped -1.5 * 2 = -3.0, clipped -1.2 * 2 = -2.4; max -> -2.4
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(1.5)).requires_grad_()
    loss, stats = policy_loss(logp, old, torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(-1.2 * 2.0, rel=1e-6)
    assert stats["clip_fraction"] == 1.0
    assert stats["ratio_mean"] == pytest.approx(1.5, rel=1e-6)
    assert stats["approx_kl"] == pytest.approx(0.5 * math.log(1.5) ** 2, rel=1e-5)
    loss.backward()
    assert logp.grad.item() == 0.0  # clipped: no incentive to move further


def test_policy_loss_negative_advantage_ratio_below_range_is_clipped():
    # ratio 0.5, A -2: unclipped -(-2) * 0.5 = 1.0, clipped -(-2) * 0.8 = 1.6; max -> 1.6 = -0.8 * A
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(0.5)).requires_grad_()
    loss, stats = policy_loss(logp, old, torch.tensor([[-2.0]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(1.6, rel=1e-6)
    assert stats["clip_fraction"] == 1.0
    loss.backward()
    assert logp.grad.item() == 0.0


def test_policy_loss_pessimistic_side_is_not_clipped():
    # A -2 with ratio 1.5: unclipped 3.0, clipped 2.4 -> max keeps the unclipped 3.0
    # A  2 with ratio 0.5: unclipped -1.0, clipped -1.6 -> max keeps the unclipped -1.0
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    logp = (old + torch.tensor([[math.log(1.5), math.log(0.5), 0.0]])).requires_grad_()
    adv = torch.tensor([[-2.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    loss, stats = policy_loss(logp, old, adv, mask, 0.2)
    assert loss.item() == pytest.approx((3.0 - 1.0) / 2, rel=1e-6)
    assert stats["clip_fraction"] == 0.0
    assert stats["ratio_mean"] == pytest.approx(1.0, rel=1e-6)
    loss.backward()
    # d/dlogp (-A * exp(logp - old)) / n_valid = -A * ratio / 2
    assert close(logp.grad, [[2.0 * 1.5 / 2, -2.0 * 0.5 / 2, 0.0]])


def test_policy_loss_clip_fraction_counts_valid_tokens_only():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[math.log(1.5), 0.0, math.log(1.5), math.log(1.5)]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # token 0 clipped (ratio 1.5, A > 0), token 1 ratio 1, token 2 pessimistic, token 3 padding
    _, stats = policy_loss(logp, old, adv, mask, 0.2)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)


def test_policy_loss_empty_mask_and_junk_padding_stay_finite():
    logp = torch.tensor([[-1.0, 80.0]], requires_grad=True)  # exp(80 - (-80)) overflows fp32
    old = torch.tensor([[-1.0, -80.0]])
    loss, stats = policy_loss(logp, old, torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 0]]), 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-1.0)
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 1].item() == 0.0
    loss, stats = policy_loss(logp, old, torch.ones(1, 2), torch.zeros(1, 2), 0.2)
    assert loss.item() == 0.0
    assert all(math.isfinite(v) for v in stats.values())


# ---------------------------------------------------------------------------------------------
# value loss


def test_value_loss_hand_case_with_and_without_clipping():
    values = torch.tensor([[1.0, 2.0, 50.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.0, 0.0]])
    returns = torch.tensor([[3.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    # token 0: v 1.0, clip(1.0, 0.3, 0.7) = 0.7; (1 - 3)^2 = 4, (0.7 - 3)^2 = 5.29 -> 5.29 (clipped)
    # token 1: v = old = 2.0, so both are (2 - 1)^2 = 1 -> 1 (not clipped)
    loss, stats = value_loss(values, old, returns, mask, 0.2)
    assert loss.item() == pytest.approx(0.5 * (5.29 + 1.0) / 2, rel=1e-6)
    assert stats == {"value_clip_fraction": 0.5}
    loss.backward()
    # clipped token: no gradient; token 1: d/dv 0.5 * (v - R)^2 / 2 = (2 - 1) / 2; padding: none
    assert close(values.grad, [[0.0, 0.5, 0.0]])
    # no clipping: 0.5 * (4 + 1) / 2
    plain, plain_stats = value_loss(values, old, returns, mask, None)
    assert plain.item() == pytest.approx(1.25, rel=1e-6)
    assert plain_stats == {"value_clip_fraction": 0.0}
    # a clip range wide enough never binds
    wide, wide_stats = value_loss(values, old, returns, mask, 10.0)
    assert wide.item() == pytest.approx(1.25, rel=1e-6)
    assert wide_stats == {"value_clip_fraction": 0.0}


def test_value_loss_clipping_toward_the_return_keeps_the_larger_error():
    # v jumped past old + c toward R: clip(3.0, 1.8, 2.2) = 2.2; (3 - 3.5)^2 = 0.25 < (2.2 - 3.5)^2 = 1.69
    values = torch.tensor([[3.0]], requires_grad=True)
    loss, stats = value_loss(values, torch.tensor([[2.0]]), torch.tensor([[3.5]]), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.5 * 1.69, rel=1e-6)
    assert stats["value_clip_fraction"] == 1.0
    loss.backward()
    assert values.grad.item() == 0.0


def test_value_loss_empty_mask_is_zero():
    loss, stats = value_loss(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 3), 0.2)
    assert loss.item() == 0.0 and stats == {"value_clip_fraction": 0.0}


# ---------------------------------------------------------------------------------------------
# entropy and logprobs


def test_entropy_of_uniform_logits_is_log_v():
    for v in (2, 7, 50):
        logits = torch.full((2, 3, v), 0.3)
        assert entropy_from_logits(logits, torch.ones(2, 3)).item() == pytest.approx(math.log(v), rel=1e-6)


def test_entropy_hand_value_masking_and_shift_invariance():
    # p = (0.25, 0.75): H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335
    two = torch.tensor([0.0, math.log(3.0)])
    peaked = torch.tensor([0.0, 30.0])
    logits = torch.stack([torch.stack([two, peaked])])  # (1, 2, 2)
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert expected == pytest.approx(0.562335, abs=1e-6)
    assert entropy_from_logits(logits, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-6)
    # a large common offset changes nothing (logsumexp, not exp)
    assert entropy_from_logits(logits + 1e4, torch.tensor([[1, 0]])).item() == pytest.approx(expected, rel=1e-3)
    assert entropy_from_logits(logits, torch.zeros(1, 2)).item() == 0.0


def test_entropy_with_banned_tokens_is_finite_and_differentiable():
    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]], requires_grad=True)
    entropy = entropy_from_logits(logits, torch.ones(1, 1))
    assert entropy.item() == pytest.approx(math.log(2.0), rel=1e-6)
    entropy.backward()
    assert torch.isfinite(logits.grad).all()


def test_entropy_matches_torch_distribution_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 11, generator=g) * 3
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]])
    per_token = torch.distributions.Categorical(logits=logits).entropy()
    assert entropy_from_logits(logits, mask).item() == pytest.approx(per_token[mask.bool()].mean().item(), rel=1e-5)


def test_logprobs_from_logits_equals_log_softmax_gathered():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 13, generator=g) * 4
    labels = torch.randint(0, 13, (3, 5), generator=g)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    result = logprobs_from_logits(logits, labels)
    assert result.shape == (3, 5) and result.dtype == torch.float32
    assert torch.allclose(result, expected, atol=1e-5)
    # hand value: logits (1, 2, 3), label 2 -> 3 - log(e + e^2 + e^3)
    hand = logprobs_from_logits(torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[2]]))
    assert hand.item() == pytest.approx(3 - math.log(math.e + math.e**2 + math.e**3), rel=1e-6)


def test_logprobs_from_logits_gradient_matches_log_softmax():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 3, 7, generator=g)
    labels = torch.randint(0, 7, (2, 3), generator=g)
    a = base.clone().requires_grad_()
    logprobs_from_logits(a, labels).sum().backward()
    b = base.clone().requires_grad_()
    torch.log_softmax(b, -1).gather(-1, labels.unsqueeze(-1)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_logprobs_from_bf16_logits_are_computed_in_fp32():
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 4, 300, generator=g) * 5).to(torch.bfloat16)
    labels = torch.randint(0, 300, (2, 4), generator=g)
    result = logprobs_from_logits(logits, labels)
    assert result.dtype == torch.float32
    # same as upcasting first; a bf16 log-softmax would be off by ~1e-2
    expected = torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(result, expected, atol=1e-5)
    bf16_path = torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1).float()
    assert not torch.allclose(bf16_path, expected, atol=1e-5)
    # entropy accepts bf16 too and returns fp32
    assert entropy_from_logits(logits, torch.ones(2, 4)).dtype == torch.float32


def test_logprobs_from_logits_empty_batch():
    result = logprobs_from_logits(torch.zeros(0, 3, 5), torch.zeros(0, 3, dtype=torch.long))
    assert result.shape == (0, 3) and result.dtype == torch.float32
