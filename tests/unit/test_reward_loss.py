"""Reward-model losses and score normalisation against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.ops.reward_loss import bradley_terry_loss, label_loss, normalization


def test_label_loss_is_binary_cross_entropy_on_log_odds():
    loss = label_loss(torch.tensor([0.0, 2.0]), torch.tensor([1, 0]))
    expected = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_loss_accepts_integer_and_half_inputs():
    loss = label_loss(torch.tensor([3.0, -1.0], dtype=torch.bfloat16), torch.tensor([1, 1]))
    assert loss.dtype == torch.float32
    expected = (math.log1p(math.exp(-3.0)) + math.log1p(math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_loss_rewards_confident_correct_scores():
    labels = torch.tensor([1, 0, 1])
    good = label_loss(torch.tensor([5.0, -5.0, 5.0]), labels)
    bad = label_loss(torch.tensor([-5.0, 5.0, -5.0]), labels)
    assert good.item() < 0.01 < 4.0 < bad.item()


def test_label_loss_gradient_points_scores_toward_their_labels():
    scores = torch.zeros(2, requires_grad=True)
    label_loss(scores, torch.tensor([1, 0])).backward()
    # d/ds BCE = (sigmoid(s) - y) / N  ->  (0.5 - 1) / 2, (0.5 - 0) / 2
    assert scores.grad.tolist() == pytest.approx([-0.25, 0.25])


def test_bradley_terry_hand_values():
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    assert bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2.0), rel=1e-6)
    # averaged over pairs
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bradley_terry_margin_is_subtracted_from_the_difference():
    loss = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    per_pair = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]), margin=torch.tensor([0.0, 1.0]))
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(-2.0))) / 2
    assert per_pair.item() == pytest.approx(expected, rel=1e-6)
    # a margin makes the same pair cost more
    assert per_pair.item() > bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item()


def test_bradley_terry_is_stable_for_large_gaps():
    loss = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0]))
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(400.0, rel=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    rejected = torch.tensor([0.0, 1.0, 3.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, 0.0, 0.5])).backward()
    assert (chosen.grad < 0).all()  # gradient descent raises chosen scores
    assert (rejected.grad > 0).all()  # and lowers rejected ones
    assert torch.allclose(chosen.grad, -rejected.grad)
    # d/d chosen = -(1 - sigmoid(d)) / N
    diff = torch.tensor([0.5 - 0.0 - 1.0, -1.0 - 1.0, 2.0 - 3.0 - 0.5])
    assert torch.allclose(chosen.grad, -(1 - torch.sigmoid(diff)) / 3, atol=1e-7)


def test_normalization_hand_example():
    gain, bias = normalization(torch.tensor([1.0, 3.0]))
    assert isinstance(gain, float) and isinstance(bias, float)
    assert gain == pytest.approx(1.0)
    assert bias == pytest.approx(-2.0)


@pytest.mark.parametrize("scores", [[4.0, 4.0, 4.0], [-2.5], [7.0]])
def test_normalization_of_constant_scores_only_centres(scores):
    gain, bias = normalization(torch.tensor(scores))
    assert gain == 1.0
    assert bias == pytest.approx(-scores[0])


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 64),
    loc=st.floats(-100, 100),
    scale=st.floats(0.01, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_normalized_scores_have_mean_zero_and_population_std_one(n, loc, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=generator, dtype=torch.float64) * scale + loc
    if float(x.std(unbiased=False)) < 1e-6:
        return
    gain, bias = normalization(x.float())
    y = gain * x.float().double() + bias
    assert float(y.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(y.std(unbiased=False)) == pytest.approx(1.0, rel=1e-6)
    assert gain > 0  # order preserved


def test_normalization_matches_numpy_definition():
    x = torch.tensor([0.0, 1.0, 2.0, 10.0])
    gain, bias = normalization(x)
    mean = 13.0 / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in x.tolist()) / 4)  # population std, not n-1
    assert gain == pytest.approx(1 / std)
    assert bias == pytest.approx(-mean / std)
