"""KL estimators, the shaped per-token reward and the KL controllers, against hand values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.config import PpoConfig, check_rl
from rlhflab.errors import RlhfLabError
from rlhflab.ops.kl import (adaptive_kl_update, kl_optimal_values, kl_per_token, kl_regularised_optimum, last_valid_index,
                             per_token_rewards, tilt)


from tests.helpers import close

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_k1_and_k3_hand_values():
    logp = torch.tensor([[math.log(0.5)]])
    ref = torch.tensor([[math.log(0.25)]])
    assert kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2.0), rel=1e-6)
    # r = p_ref / p = 0.25 / 0.5 = 0.5 -> (0.5 - 1) - log 0.5 = -0.5 + 0.693147 = 0.193147
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx((0.5 - 1) - math.log(0.5), rel=1e-6)
    assert kl_per_token(logp, ref, "k3").item() == pytest.approx(0.193147, abs=1e-6)
    # the other way round: k1 goes negative, k3 stays positive: r = 2 -> 1 - log 2
    assert kl_per_token(ref, logp, "k1").item() == pytest.approx(-math.log(2.0), rel=1e-6)
    assert kl_per_token(ref, logp, "k3").item() == pytest.approx(1 - math.log(2.0), rel=1e-6)


def test_default_estimator_is_k1_and_output_is_fp32():
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.bfloat16)
    ref = torch.tensor([[-1.5, -1.0]], dtype=torch.bfloat16)
    kl = kl_per_token(logp, ref)
    assert kl.dtype == torch.float32
    assert close(kl, [[0.5, -1.0]])


@settings(max_examples=100, deadline=None)
@given(
    logp=st.lists(st.floats(-30, 0), min_size=1, max_size=16),
    shift=st.lists(st.floats(-15, 15), min_size=16, max_size=16),
)
def test_k3_is_never_negative(logp, shift):
    lp = torch.tensor(logp)
    ref = lp + torch.tensor(shift[: len(logp)])
    assert (kl_per_token(lp, ref, "k3") >= 0).all()


def test_both_estimators_are_zero_when_policies_agree():
    logp = torch.tensor([[-0.1, -3.0, -12.5]])
    for estimator in ("k1", "k3"):
        assert kl_per_token(logp, logp.clone(), estimator).tolist() == [[0.0, 0.0, 0.0]]


def test_k3_matches_its_definition_on_random_values():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(4, 7, generator=g) * 5
    ref = -torch.rand(4, 7, generator=g) * 5
    r = torch.exp(ref.double() - logp.double())
    expected = (r - 1) - torch.log(r)
    assert torch.allclose(kl_per_token(logp, ref, "k3").double(), expected, atol=1e-5)


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k2")


def test_last_valid_index_with_left_right_and_empty_rows():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    assert last_valid_index(mask).tolist() == [1, 3, 2, 0, 3]


def test_per_token_rewards_right_padding():
    kl = torch.tensor([[0.5, 1.0, 2.0, 9.0], [1.0, -1.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    scores = torch.tensor([3.0, -2.0])
    rewards, non_score = per_token_rewards(scores, kl, mask, beta=0.1)
    assert close(rewards, [[-0.05, -0.1, -0.2 + 3.0, 0.0], [-0.1, 0.1 - 2.0, 0.0, 0.0]])
    assert non_score.tolist() == pytest.approx([-0.1 * 3.5, -0.1 * 0.0])


def test_per_token_rewards_left_padding():
    kl = torch.tensor([[9.0, 9.0, 1.0, 2.0], [9.0, 0.5, 0.5, 0.5]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]).float()
    scores = torch.tensor([1.0, 4.0])
    rewards, non_score = per_token_rewards(scores, kl, mask, beta=0.2)
    assert close(rewards, [[0.0, 0.0, -0.2, -0.4 + 1.0], [0.0, -0.1, -0.1, -0.1 + 4.0]])
    assert non_score.tolist() == pytest.approx([-0.2 * 3.0, -0.2 * 1.5])


def test_per_token_rewards_padding_on_both_sides_and_empty_row():
    kl = torch.full((2, 5), float("inf"))  # padding may hold anything; it must not leak
    kl[0, 1:4] = torch.tensor([1.0, 1.0, 1.0])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    rewards, non_score = per_token_rewards(torch.tensor([5.0, 6.0]), kl, mask, beta=0.5)
    assert close(rewards, [[0.0, -0.5, -0.5, 4.5, 0.0], [0.0] * 5])
    assert non_score.tolist() == pytest.approx([-1.5, 0.0])


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(1, 8), beta=st.floats(0.0, 1.0), seed=st.integers(0, 2**31 - 1))
def test_per_token_rewards_invariants(b, t, beta, seed):
    g = torch.Generator().manual_seed(seed)
    kl = torch.randn(b, t, generator=g)
    scores = torch.randn(b, generator=g)
    # contiguous responses with random left/right padding
    mask = torch.zeros(b, t)
    for i in range(b):
        start = int(torch.randint(0, t, (1,), generator=g))
        end = int(torch.randint(start, t + 1, (1,), generator=g))
        mask[i, start:end] = 1
    rewards, non_score = per_token_rewards(scores, kl, mask, beta)
    assert (rewards[mask == 0] == 0).all()
    assert torch.allclose(non_score, -beta * (kl * mask).sum(1), atol=1e-5)
    # the score is added exactly once per non-empty row
    has_tokens = mask.sum(1) > 0
    assert torch.allclose(rewards.sum(1), non_score + scores * has_tokens, atol=1e-5)
    assert rewards.dtype == torch.float32


def test_adaptive_kl_worked_example():
    # kl 12 vs target 6: e = clip(12 / 6 - 1, -0.2, 0.2) = clip(1, ...) = 0.2
    # beta = 0.1 * (1 + 0.2 * 256 / 10000) = 0.1 * 1.00512 = 0.100512
    assert adaptive_kl_update(0.1, 12.0, 6.0, 10000, 256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000), rel=1e-12)
    assert adaptive_kl_update(0.1, 12.0, 6.0, 10000, 256) == pytest.approx(0.1005120, rel=1e-12)
    # kl 3 vs target 6: e = clip(3 / 6 - 1) = clip(-0.5) = -0.2 -> 0.1 * (1 - 0.00512) = 0.099488
    assert adaptive_kl_update(0.1, 3.0, 6.0, 10000, 256) == pytest.approx(0.0994880, rel=1e-12)
    # inside the clip band: kl 6.6 -> e = 0.1 -> 0.1 * (1 + 0.1 * 256 / 10000) = 0.100256
    assert adaptive_kl_update(0.1, 6.6, 6.0, 10000, 256) == pytest.approx(0.100256, rel=1e-9)
    # on target: unchanged
    assert adaptive_kl_update(0.1, 6.0, 6.0, 10000, 256) == pytest.approx(0.1, rel=1e-12)
    assert isinstance(adaptive_kl_update(0.1, 12.0, 6.0, 10000, 256), float)


def test_adaptive_kl_rejects_nonpositive_target_or_horizon():
    with pytest.raises(ValueError):
        adaptive_kl_update(0.1, 1.0, 0.0, 10000, 256)
    with pytest.raises(ValueError):
        adaptive_kl_update(0.1, 1.0, 6.0, 0, 256)


# ---------------------------------------------------------------------------------------------


def test_beta_never_goes_negative_and_a_horizon_that_would_overshoot_is_refused():
    assert adaptive_kl_update(0.05, 0.0, 5.0, 1, 64) == 0.0  # was 0.05 * (1 - 0.2 * 64) = -0.59
    beta = 0.05
    for kl in (0.0, 0.0, 100.0, 0.0):
        beta = adaptive_kl_update(beta, kl, 5.0, 10, 64)
        assert beta >= 0.0
    with pytest.raises(RlhfLabError, match="kl_horizon"):
        check_rl(PpoConfig(kl_horizon=1, batch_size=64))
    check_rl(PpoConfig(kl_horizon=1, batch_size=64, adaptive_kl=False))  # a fixed beta ignores the horizon
    check_rl(PpoConfig(kl_horizon=64, batch_size=64))



# --- the most value a KL budget buys (kl_optimal_values) -----------------------------------------


def test_the_optimum_of_two_samples_against_hand_values():
    # values 0 and 1: the optimum puts q on the 1 at KL q log 2q + (1 - q) log 2(1 - q)
    # q = 0.75: 0.75 log 1.5 + 0.25 log 0.5 = 0.304099 - 0.173287 = 0.130812 nats
    values = torch.tensor([[0.0, 1.0]])
    assert kl_optimal_values(values, [0.130812])[0] == pytest.approx(0.75, abs=1e-5)
    assert kl_optimal_values(values, [0.0]) == [pytest.approx(0.5)]  # no budget: the samples' own mean
    # log 2 puts all weight on the best sample, which the samples cannot tell from "more is possible"
    assert kl_optimal_values(values, [math.log(2), 5.0]) == [None, None]


def test_ties_for_the_best_share_the_weight_and_equal_values_need_no_kl():
    # two best of four: all weight on them costs log 4 - log 2 = log 2
    values = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert kl_optimal_values(values, [math.log(2) - 1e-3])[0] == pytest.approx(1.0, abs=2e-3)
    assert kl_optimal_values(values, [math.log(2)]) == [None]
    assert kl_optimal_values(torch.full((3, 4), 0.7), [0.5, 9.0]) == [pytest.approx(0.7)] * 2


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 0.6), st.floats(0.1, 3.0))
def test_one_lambda_for_all_prompts_beats_every_other_split_of_the_budget(budget, scale):
    """Two prompts of two samples; every split of the mean KL between them (a grid) reaches no more."""
    values = torch.tensor([[0.0, 1.0], [0.0, scale]], dtype=torch.float64)
    best = kl_optimal_values(values, [budget])[0]

    def kl(q):  # weight q on the better of two samples
        return sum(x * math.log(2 * x) for x in (q, 1 - q) if x > 0)

    def q_at(b):  # the weight one prompt reaches with b nats (bisection; kl rises with q on [0.5, 1])
        low, high = 0.5, 1.0
        for _ in range(60):
            middle = (low + high) / 2
            low, high = (middle, high) if kl(middle) <= b else (low, middle)
        return low

    for share in [i / 20 for i in range(21)]:  # prompt 1 gets 2 x budget x share, prompt 2 the rest
        b1, b2 = 2 * budget * share, 2 * budget * (1 - share)
        if max(b1, b2) >= math.log(2):
            continue
        assert (q_at(b1) + scale * q_at(b2)) / 2 <= best + 1e-6


def test_more_budget_never_buys_less():
    values = torch.rand(16, 8, generator=torch.Generator().manual_seed(0))
    found = kl_optimal_values(values, [0.0, 0.1, 0.5, 1.0, 1.5, 2.0])
    measured = [v for v in found if v is not None]
    assert measured == sorted(measured) and len(measured) >= 5
    assert measured[0] == pytest.approx(float(values.mean())) and measured[-1] <= float(values.amax(dim=1).mean())


@pytest.mark.parametrize("values, budgets", [(torch.zeros(4), [1.0]), (torch.zeros(2, 1), [1.0]),
                                             (torch.tensor([[0.0, float("nan")]]), [1.0]),
                                             (torch.zeros(2, 2), [-0.1]), (torch.zeros(2, 2), [float("inf")])])
def test_the_optimum_refuses_what_it_cannot_measure(values, budgets):
    with pytest.raises(RlhfLabError):
        kl_optimal_values(values, budgets)


# --- the optimum at a KL coefficient (kl_regularised_optimum) -------------------------------------


def test_the_regularised_optimum_of_two_samples_against_hand_values():
    # values 0 and 1 at β = 1 / ln 3: weights ∝ exp(v / β) = 1 : 3, so π* = (0.25, 0.75);
    # KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812; J* = β ln((1 + 3) / 2) = ln 2 / ln 3 = 0.630930
    out = kl_regularised_optimum(torch.tensor([[0.0, 1.0]]), 1 / math.log(3))
    assert out["value"] == pytest.approx(0.75, abs=1e-9)
    assert out["kl"] == pytest.approx(0.130812, abs=1e-6)
    assert out["objective"] == pytest.approx(math.log(2) / math.log(3), abs=1e-9)
    assert out["objective"] == pytest.approx(out["value"] - out["kl"] / math.log(3), abs=1e-9)


def test_the_tilt_prompt_by_prompt_against_hand_values():
    # the first prompt as above; the second's samples score alike, so π* is its reference: KL 0
    weights, kl = tilt(torch.tensor([[0.0, 1.0], [2.0, 2.0]], dtype=torch.float64), 1 / math.log(3))
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(kl, torch.tensor([0.130812, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6), st.floats(0.05, 5.0), st.integers(0, 10_000))
def test_no_policy_over_the_samples_beats_the_regularised_optimum(values, beta, seed):
    v = torch.tensor([values], dtype=torch.float64)
    q = torch.rand(len(values), generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 1e-6
    q = q / q.sum()  # any policy over the samples
    objective = float((q * v[0]).sum() - beta * (q * torch.log(q * len(values))).sum())
    assert objective <= kl_regularised_optimum(v, beta)["objective"] + 1e-9


@pytest.mark.parametrize("values, beta", [(torch.zeros(3), 0.1), (torch.tensor([[0.0, float("nan")]]), 0.1),
                                          (torch.zeros(2, 2), 0.0), (torch.zeros(2, 2), float("inf"))])
def test_the_regularised_optimum_refuses_bad_input(values, beta):
    with pytest.raises(RlhfLabError):
        kl_regularised_optimum(values, beta)
