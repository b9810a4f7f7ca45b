"""GRPO / Dr. GRPO / RLOO / REINFORCE++ advantages, token broadcast and the k3 KL-in-loss term."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.ops.advantages import (
    dr_grpo_advantages,
    grpo_advantages,
    kl_penalty_in_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_advantages_to_tokens,
)
from rlhflab.ops.kl import per_token_rewards

from tests.helpers import close


def group_ids(n_prompts: int, samples_per_prompt: int) -> torch.Tensor:
    """Prompt-major ids [0]*k + [1]*k + ..., as the rollout lays samples out."""
    return torch.arange(n_prompts).repeat_interleave(samples_per_prompt)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------------
# GRPO


SCORES = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])


def test_grpo_hand_values_two_groups_of_three():
    # group 0: [1, 2, 3], mean 2, sample std sqrt(((-1)^2 + 0 + 1^2) / (3 - 1)) = 1
    #   -> (r - 2) / (1 + 1e-6) = [-1, 0, 1] (to 1e-6)
    # group 1: [10, 10, 10], mean 10, std 0 -> 0 / (0 + eps) = [0, 0, 0]
    adv = grpo_advantages(SCORES, group_ids(2, 3))
    assert close(adv, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0], atol=2e-6)
    assert adv.dtype == torch.float32


def test_grpo_uses_the_unbiased_std_like_trl():
    # [0, 4]: mean 2, sample std sqrt((4 + 4) / 1) = 2.828427 (population std would be 2)
    # -> -2 / 2.828427 = -0.707107, +0.707107
    adv = grpo_advantages(torch.tensor([0.0, 4.0]), torch.tensor([0, 0]), eps=0.0)
    assert close(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2)])
    # the same as TRL's (r - mean) / (torch.std(r) + eps)
    r = torch.tensor([0.5, -1.0, 4.0, 2.5])
    expected = (r - r.mean()) / (r.std() + 1e-4)
    assert torch.allclose(grpo_advantages(r, torch.zeros(4, dtype=torch.long), eps=1e-4), expected, atol=1e-6)


def test_grpo_eps_enters_the_denominator():
    # [1, 2, 3]: std 1, eps 1 -> (r - 2) / 2 = [-0.5, 0, 0.5]
    assert close(grpo_advantages(torch.tensor([1.0, 2.0, 3.0]), group_ids(1, 3), eps=1.0), [-0.5, 0.0, 0.5])


def test_dr_grpo_is_mean_centred_only():
    # scale=False: r - mean_g = [1-2, 2-2, 3-2, 10-10, 10-10, 10-10]
    adv = grpo_advantages(SCORES, group_ids(2, 3), scale=False)
    assert close(adv, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # [0, 4, 8]: mean 4 -> [-4, 0, 4] (GRPO would divide by std 4 -> [-1, 0, 1])
    assert close(grpo_advantages(torch.tensor([0.0, 4.0, 8.0]), group_ids(1, 3), scale=False), [-4.0, 0.0, 4.0])
    assert close(grpo_advantages(torch.tensor([0.0, 4.0, 8.0]), group_ids(1, 3)), [-1.0, 0.0, 1.0], atol=1e-5)


def test_grpo_group_of_one_is_zero_not_nan():
    # a singleton has no spread: torch.std would be NaN, we give advantage 0
    scores = torch.tensor([7.0, 1.0, 3.0])
    groups = torch.tensor([0, 1, 1])
    adv = grpo_advantages(scores, groups)
    assert torch.isfinite(adv).all()
    # group 1: [1, 3], mean 2, sample std sqrt((1 + 1) / 1) = sqrt 2 -> -1/sqrt2, +1/sqrt2
    assert close(adv, [0.0, -1 / math.sqrt(2), 1 / math.sqrt(2)], atol=1e-5)
    assert grpo_advantages(torch.tensor([5.0]), torch.tensor([0])).tolist() == [0.0]
    assert grpo_advantages(torch.tensor([5.0]), torch.tensor([0]), scale=False).tolist() == [0.0]


def test_grpo_mixed_group_sizes_and_unsorted_ids():
    # ids need not be contiguous or sorted: group 7 = [2, 6] at positions 0 and 3,
    # group 3 = [1, 1, 4] at positions 1, 2, 4
    scores = torch.tensor([2.0, 1.0, 1.0, 6.0, 4.0])
    groups = torch.tensor([7, 3, 3, 7, 3])
    # group 7: mean 4, sample std sqrt((4 + 4) / 1) = 2*sqrt2 -> [-2, 2] / 2.828427 = -+0.707107
    # group 3: mean 2, deviations [-1, -1, 2], sample std sqrt((1 + 1 + 4) / 2) = sqrt 3
    #   -> [-1, -1, 2] / 1.732051 = [-0.577350, -0.577350, 1.154701]
    adv = grpo_advantages(scores, groups)
    s2, s3 = 1 / math.sqrt(2), 1 / math.sqrt(3)
    assert close(adv, [-s2, -s3, -s3, s2, 2 * s3], atol=1e-5)
    assert close(grpo_advantages(scores, groups, scale=False), [-2.0, -1.0, -1.0, 2.0, 2.0])


def test_grpo_detaches_scores():
    scores = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    assert not grpo_advantages(scores, group_ids(1, 3)).requires_grad
    assert not rloo_advantages(scores, group_ids(1, 3)).requires_grad


def test_grpo_accepts_int32_ids_and_bf16_scores():
    adv = grpo_advantages(torch.tensor([1.0, 3.0], dtype=torch.bfloat16), torch.tensor([5, 5], dtype=torch.int32))
    assert adv.dtype == torch.float32
    assert close(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2)], atol=1e-5)


@pytest.mark.parametrize("fn", [grpo_advantages, rloo_advantages])
def test_bad_shapes_and_dtypes_raise(fn):
    with pytest.raises(ValueError, match="same length"):
        fn(torch.zeros(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="1-D"):
        fn(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        fn(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="integer"):
        fn(torch.zeros(2), torch.tensor([True, False]))


# ---------------------------------------------------------------------------------------------
# RLOO


def test_rloo_hand_values():
    # [1, 2, 3]: leave-one-out means [(2+3)/2, (1+3)/2, (1+2)/2] = [2.5, 2, 1.5]
    #   -> [1 - 2.5, 2 - 2, 3 - 1.5] = [-1.5, 0, 1.5]  (= 3/2 * [r - 2])
    # [10, 10, 10] -> [0, 0, 0]
    adv = rloo_advantages(SCORES, group_ids(2, 3))
    assert close(adv, [-1.5, 0.0, 1.5, 0.0, 0.0, 0.0])
    assert adv.dtype == torch.float32


def test_rloo_mixed_group_sizes():
    scores = torch.tensor([2.0, 1.0, 1.0, 6.0, 4.0])
    groups = torch.tensor([7, 3, 3, 7, 3])
    # group 7 = [2, 6] (k = 2): [2 - 6, 6 - 2] = [-4, 4]
    # group 3 = [1, 1, 4] (k = 3): [1 - (1+4)/2, 1 - (1+4)/2, 4 - (1+1)/2] = [-1.5, -1.5, 3]
    assert close(rloo_advantages(scores, groups), [-4.0, -1.5, -1.5, 4.0, 3.0])


def test_rloo_rejects_a_group_of_one():
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), group_ids(3, 1))
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))


# ---------------------------------------------------------------------------------------------
# invariances (property tests)


@st.composite
def grouped_scores(draw, min_size: int = 1):
    """Integer-valued scores (std is 0 or far above eps) in groups of mixed sizes, shuffled."""
    sizes = draw(st.lists(st.integers(min_size, 6), min_size=1, max_size=5))
    scores, groups = [], []
    for gid, size in enumerate(sizes):
        scores += draw(st.lists(st.integers(-20, 20), min_size=size, max_size=size))
        groups += [gid * 3 + 1] * size  # sparse ids: not 0..G-1
    order = draw(st.permutations(range(len(scores))))
    return (
        torch.tensor([float(scores[i]) for i in order]),
        torch.tensor([groups[i] for i in order]),
    )


def per_group_sums(adv: torch.Tensor, groups: torch.Tensor) -> list[float]:
    return [float(adv[groups == g].sum()) for g in groups.unique()]


@settings(max_examples=60, deadline=None)
@given(data=grouped_scores(min_size=1))
def test_grpo_sums_to_zero_per_group(data):
    scores, groups = data
    for scale in (True, False):
        assert per_group_sums(grpo_advantages(scores, groups, scale=scale), groups) == pytest.approx(
            [0.0] * len(groups.unique()), abs=1e-4
        )


@settings(max_examples=60, deadline=None)
@given(data=grouped_scores(min_size=2))
def test_rloo_sums_to_zero_per_group(data):
    scores, groups = data
    assert per_group_sums(rloo_advantages(scores, groups), groups) == pytest.approx(
        [0.0] * len(groups.unique()), abs=1e-4
    )


@settings(max_examples=60, deadline=None)
@given(data=grouped_scores(min_size=2), shifts=st.lists(st.integers(-50, 50), min_size=32, max_size=32))
def test_adding_a_constant_to_a_group_changes_nothing(data, shifts):
    scores, groups = data
    _, index = groups.unique(return_inverse=True)
    shifted = scores + torch.tensor(shifts, dtype=torch.float32)[index]  # one constant per group
    assert torch.allclose(grpo_advantages(shifted, groups), grpo_advantages(scores, groups), atol=1e-4)
    assert torch.allclose(grpo_advantages(shifted, groups, scale=False), grpo_advantages(scores, groups, scale=False), atol=1e-4)
    assert torch.allclose(rloo_advantages(shifted, groups), rloo_advantages(scores, groups), atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(data=grouped_scores(min_size=2), c=st.floats(0.25, 20.0))
def test_scaling_scores_leaves_grpo_and_scales_rloo_and_dr_grpo(data, c):
    scores, groups = data
    # GRPO: unchanged up to eps (a non-constant integer group has std >= 0.4 here, so eps
    # moves the result by < 1e-5 relative)
    assert torch.allclose(grpo_advantages(c * scores, groups), grpo_advantages(scores, groups), atol=1e-4)
    assert torch.allclose(rloo_advantages(c * scores, groups), c * rloo_advantages(scores, groups), atol=1e-3)
    assert torch.allclose(
        grpo_advantages(c * scores, groups, scale=False), c * grpo_advantages(scores, groups, scale=False), atol=1e-3
    )


@settings(max_examples=60, deadline=None)
@given(data=grouped_scores(min_size=2), seed=st.integers(0, 2**31 - 1))
def test_permuting_samples_permutes_advantages(data, seed):
    scores, groups = data
    perm = torch.randperm(len(scores), generator=torch.Generator().manual_seed(seed))
    for fn in (grpo_advantages, rloo_advantages):
        assert torch.allclose(fn(scores[perm], groups[perm]), fn(scores, groups)[perm], atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(data=grouped_scores(min_size=2))
def test_rloo_matches_the_leave_one_out_definition(data):
    scores, groups = data
    expected = torch.stack(
        [scores[i] - scores[(groups == groups[i]) & (torch.arange(len(scores)) != i)].mean() for i in range(len(scores))]
    )
    assert torch.allclose(rloo_advantages(scores, groups), expected, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# sequence advantages -> token advantages


def test_sequence_advantages_fill_response_tokens_only():
    adv = torch.tensor([1.5, -2.0, 0.25])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])  # right-, left-padded, empty
    tokens = sequence_advantages_to_tokens(adv, mask)
    assert close(tokens, [[1.5, 1.5, 1.5, 0.0], [0.0, -2.0, -2.0, -2.0], [0.0, 0.0, 0.0, 0.0]])
    assert tokens.dtype == torch.float32
    assert close(sequence_advantages_to_tokens(adv, mask.bool()), tokens.tolist())


def test_sequence_advantages_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same B"):
        sequence_advantages_to_tokens(torch.zeros(2), torch.ones(3, 4))
    with pytest.raises(ValueError, match="same B"):
        sequence_advantages_to_tokens(torch.zeros(2, 1), torch.ones(2, 4))


# ---------------------------------------------------------------------------------------------
# k3 KL in the loss


def test_kl_in_loss_is_zero_when_policies_agree():
    logp = torch.tensor([[-0.1, -3.0, -12.5], [-1.0, -2.0, -0.5]])
    assert kl_penalty_in_loss(logp, logp.clone(), torch.ones(2, 3)).item() == 0.0


def test_kl_in_loss_hand_value_and_gradient():
    # token 0: p = 0.5, p_ref = 0.25: d = ref - logp = log 0.5 -> e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    # token 1: p = 0.25, p_ref = 0.5: d = log 2 -> 2 - 0.693147 - 1 = 0.306853
    # token 2: padding (ref -inf must not leak)
    # masked mean over 2 real tokens: (0.193147 + 0.306853) / 2 = 0.25
    logp = torch.tensor([[math.log(0.5), math.log(0.25), -1.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), float("-inf")]])
    mask = torch.tensor([[1, 1, 0]])
    loss = kl_penalty_in_loss(logp, ref, mask)
    assert loss.item() == pytest.approx(0.25, abs=1e-6)
    assert loss.item() == pytest.approx(((0.5 - 1) - math.log(0.5) + (2 - 1) - math.log(2)) / 2, abs=1e-6)
    # d/dlogp (e^(ref - logp) - (ref - logp) - 1) = 1 - e^(ref - logp); / 2 tokens
    #   token 0: (1 - 0.5) / 2 = 0.25; token 1: (1 - 2) / 2 = -0.5; padding: 0
    loss.backward()
    assert close(logp.grad, [[0.25, -0.5, 0.0]])


def test_kl_in_loss_averages_over_all_real_tokens_of_the_batch():
    # row 0 has 1 real token with k3 = 0.193147, row 1 has 3 tokens with k3 = 0:
    # token mean 0.193147 / 4 = 0.048287 (a per-row mean first would give 0.096574)
    logp = torch.tensor([[math.log(0.5), 0.0, 0.0], [-1.0, -2.0, -3.0]])
    ref = torch.tensor([[math.log(0.25), 5.0, 5.0], [-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    k3 = (0.5 - 1) - math.log(0.5)
    assert kl_penalty_in_loss(logp, ref, mask).item() == pytest.approx(k3 / 4, abs=1e-6)


def test_kl_in_loss_empty_mask_is_zero():
    assert kl_penalty_in_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


@settings(max_examples=60, deadline=None)
@given(
    logp=st.lists(st.floats(-20, 0), min_size=6, max_size=6),
    shift=st.lists(st.floats(-5, 5), min_size=6, max_size=6),
)
def test_kl_in_loss_is_positive_when_policies_differ(logp, shift):
    lp = torch.tensor(logp).reshape(2, 3)
    ref = lp + torch.tensor(shift).reshape(2, 3)
    loss = kl_penalty_in_loss(lp, ref, torch.ones(2, 3))
    assert loss.item() >= 0.0
    if max(abs(s) for s in shift) > 1e-2:
        assert loss.item() > 0.0


# ---------------------------------------------------------------------------------------------
# Dr. GRPO


def test_dr_grpo_hand_values_are_the_group_centred_scores():
    # group 0: [1, 2, 3], mean 2 -> [-1, 0, 1]; group 1: [10, 10, 10], mean 10 -> [0, 0, 0]
    assert close(dr_grpo_advantages(SCORES, group_ids(2, 3)), [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    # no division by the group's std (2 here): [0, 4, 8] keeps its scale, [-4, 0, 4], where GRPO gives [-1, 0, 1]
    assert close(dr_grpo_advantages(torch.tensor([0.0, 4.0, 8.0]), group_ids(1, 3)), [-4.0, 0.0, 4.0])
    # unsorted ids, groups of two and one: {0: [1, 3]} mean 2 -> [-1, 1]; {7: [5]} alone -> 0
    assert close(dr_grpo_advantages(torch.tensor([1.0, 5.0, 3.0]), torch.tensor([0, 7, 0])), [-1.0, 0.0, 1.0])


def test_dr_grpo_raises_like_grpo_on_bad_input():
    with pytest.raises(ValueError, match="integer prompt ids"):
        dr_grpo_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]))


# ---------------------------------------------------------------------------------------------
# REINFORCE++

# Two responses, the second one token longer (row 0 padded on the right):
#   row 0 rewards [0, 2, pad]  -> returns (gamma 1) [0 + 2, 2]      = [2, 2]
#   row 1 rewards [0, 1, -2]   -> returns           [0 + 1 - 2, 1 - 2, -2] = [-1, -1, -2]
PP_REWARDS = torch.tensor([[0.0, 2.0, 99.0], [0.0, 1.0, -2.0]])
PP_MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_reinforce_pp_hand_values_returns_normalised_over_the_whole_batch():
    # five real tokens' returns [2, 2, -1, -1, -2]: mean 0, unbiased variance (4+4+1+1+4)/4 = 3.5
    s = math.sqrt(3.5 + 1e-8)
    adv = reinforce_pp_advantages(PP_REWARDS, PP_MASK)
    assert close(adv, [[2 / s, 2 / s, 0.0], [-1 / s, -1 / s, -2 / s]])


def test_reinforce_pp_hand_values_with_a_discount():
    # gamma 0.5: row 0 [0 + 0.5 * 2, 2] = [1, 2]; row 1 [0 + 0.5 * 0, 1 + 0.5 * -2, -2] = [0, 0, -2]
    # tokens [1, 2, 0, 0, -2]: mean 0.2, deviations [0.8, 1.8, -0.2, -0.2, -2.2], squares sum 8.8, var 8.8/4 = 2.2
    s = math.sqrt(2.2 + 1e-8)
    adv = reinforce_pp_advantages(PP_REWARDS, PP_MASK, gamma=0.5)
    assert close(adv, [[0.8 / s, 1.8 / s, 0.0], [-0.2 / s, -0.2 / s, -2.2 / s]], atol=1e-5)


def test_reinforce_pp_folds_the_per_token_kl_into_the_reward():
    # scores [3, -1], beta 0.5, KL row 0 [0.4, 0.2], row 1 [0.0, -0.2, 0.6]:
    #   rewards row 0 [-0.2, -0.1 + 3] -> returns [2.7, 2.9]; the score minus beta * the KL still to come
    #   rewards row 1 [0, 0.1, -0.3 - 1] -> returns [-1.2, -1.2, -1.3]
    # tokens [2.7, 2.9, -1.2, -1.2, -1.3]: mean 0.38, deviations [2.32, 2.52, -1.58, -1.58, -1.68]
    # squares 5.3824 + 6.3504 + 2.4964 + 2.4964 + 2.8224 = 19.548, var 19.548 / 4 = 4.887
    kl = torch.tensor([[0.4, 0.2, 0.0], [0.0, -0.2, 0.6]])
    rewards, _ = per_token_rewards(torch.tensor([3.0, -1.0]), kl, PP_MASK, 0.5)
    s = math.sqrt(4.887 + 1e-8)
    assert close(reinforce_pp_advantages(rewards, PP_MASK), [[2.32 / s, 2.52 / s, 0.0], [-1.58 / s, -1.58 / s, -1.68 / s]],
                 atol=1e-5)


def test_reinforce_pp_statistics_span_every_process():
    # Two processes holding the same rollout: reduce doubles each partial sum, so the result is the
    # one-process result on the rollout twice over (mean the same, variance's Bessel factor 9 vs 4).
    twice = reinforce_pp_advantages(torch.cat([PP_REWARDS, PP_REWARDS]), torch.cat([PP_MASK, PP_MASK]))
    assert close(reinforce_pp_advantages(PP_REWARDS, PP_MASK, reduce=lambda x: 2 * x), twice[:2].tolist())
    assert not close(reinforce_pp_advantages(PP_REWARDS, PP_MASK), twice[:2].tolist())


def test_reinforce_pp_ignores_padding_values_and_takes_no_gradient():
    rewards = PP_REWARDS.clone().requires_grad_(True)
    garbage = PP_REWARDS.clone()
    garbage[0, 2] = float("nan")
    adv = reinforce_pp_advantages(rewards, PP_MASK)
    assert not adv.requires_grad
    assert close(reinforce_pp_advantages(garbage, PP_MASK), adv.tolist())
