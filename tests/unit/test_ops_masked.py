"""Masked statistics against the plain torch versions on the valid elements."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.ops.masked import (masked_explained_variance, masked_mean, masked_sum, masked_sum_over_max_length, masked_var,
                                 masked_whiten)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


X = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, -5.0, 7.0, 8.0]])
MASK = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])


def test_sum_and_mean_hand_values():
    # valid: 1, 2, 3 | -5, 7, 8  (the 100 and the 4 are padding)
    assert masked_sum(X, MASK).item() == pytest.approx(16.0)
    assert masked_mean(X, MASK).item() == pytest.approx(16.0 / 6)
    assert masked_sum(X, MASK, dim=1).tolist() == pytest.approx([6.0, 10.0])
    assert masked_mean(X, MASK, dim=1).tolist() == pytest.approx([2.0, 10.0 / 3])
    assert masked_mean(X, MASK, dim=0).tolist() == pytest.approx([1.0, -1.5, 5.0, 8.0])


def test_var_hand_values():
    # valid: 1, 2, 3, -5, 7, 8; mean 16/6; squared deviations sum to 109.333...
    values = [1.0, 2.0, 3.0, -5.0, 7.0, 8.0]
    mean = sum(values) / 6
    ss = sum((v - mean) ** 2 for v in values)
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(ss / 6, rel=1e-6)
    assert masked_var(X, MASK).item() == pytest.approx(ss / 5, rel=1e-6)


def test_bool_and_float_masks_agree_and_padding_may_be_non_finite():
    x = X.clone()
    x[0, 3] = float("inf")
    x[1, 0] = float("nan")
    assert masked_mean(x, MASK.bool()).item() == pytest.approx(16.0 / 6)
    assert masked_mean(x, MASK.float()).item() == pytest.approx(16.0 / 6)
    assert torch.isfinite(masked_var(x, MASK))
    assert torch.isfinite(masked_whiten(x, MASK)).all()


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
def test_masked_stats_match_torch_on_valid_elements(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g) * 3 + 1
    mask = torch.rand(b, t, generator=g) < 0.6
    valid = x[mask]
    if valid.numel() == 0:
        return
    assert masked_sum(x, mask).item() == pytest.approx(valid.sum().item(), abs=1e-4)
    assert masked_mean(x, mask).item() == pytest.approx(valid.mean().item(), abs=1e-5)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(valid.var(unbiased=False).item(), rel=1e-4, abs=1e-5)
    if valid.numel() > 1:
        assert masked_var(x, mask).item() == pytest.approx(valid.var().item(), rel=1e-4, abs=1e-5)
    else:
        assert masked_var(x, mask).item() == 0.0  # no Bessel correction for a single element
    row_means = masked_mean(x, mask, dim=1)
    for i in range(b):
        expected = x[i][mask[i]].mean().item() if mask[i].any() else 0.0
        assert row_means[i].item() == pytest.approx(expected, abs=1e-5)


@settings(max_examples=50, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(2, 9), seed=st.integers(0, 2**31 - 1))
def test_whitened_valid_elements_have_mean_zero_var_one_and_padding_zero(b, t, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g) * 5 - 3
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[0, :2] = True  # at least two valid elements
    if x[mask].var().item() < 1e-4:
        return  # near-equal values: eps (1e-8) rightly dominates their tiny variance
    white = masked_whiten(x, mask)
    assert (white[~mask] == 0).all()
    assert white[mask].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert white[mask].var().item() == pytest.approx(1.0, rel=1e-4)
    # order within the valid elements is kept
    assert torch.equal(torch.argsort(white[mask]), torch.argsort(x[mask]))


def test_whiten_hand_values():
    x = torch.tensor([[1.0, 3.0, 5.0, 42.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 3, unbiased var ((-2)^2 + 0 + 2^2) / 2 = 4, std 2
    assert masked_whiten(x, mask, eps=0.0).tolist() == [[-1.0, 0.0, 1.0, 0.0]]
    # shift_mean=False scales the spread but keeps the mean (3)
    assert masked_whiten(x, mask, shift_mean=False, eps=0.0).tolist() == [[2.0, 3.0, 4.0, 0.0]]


def test_whiten_without_shift_keeps_the_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g) * 2 + 5
    mask = torch.rand(4, 6, generator=g) < 0.8
    white = masked_whiten(x, mask, shift_mean=False)
    assert white[mask].mean().item() == pytest.approx(x[mask].mean().item(), abs=1e-5)
    assert white[mask].var().item() == pytest.approx(1.0, rel=1e-4)


def test_empty_mask_gives_zeros_and_no_nan():
    x = torch.randn(3, 4)
    empty = torch.zeros(3, 4)
    assert masked_sum(x, empty).item() == 0.0
    assert masked_mean(x, empty).item() == 0.0
    assert masked_mean(x, empty, dim=1).tolist() == [0.0, 0.0, 0.0]
    assert masked_var(x, empty).item() == 0.0
    assert masked_var(x, empty, unbiased=False).item() == 0.0
    assert masked_whiten(x, empty).tolist() == [[0.0] * 4] * 3
    assert masked_whiten(x, empty, shift_mean=False).tolist() == [[0.0] * 4] * 3
    assert masked_explained_variance(x, x + 1, empty).item() == 0.0


def test_fully_masked_row_gets_zero_row_mean_others_unaffected():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    mask = torch.tensor([[0, 0], [1, 1]])
    assert masked_mean(x, mask, dim=1).tolist() == [0.0, 4.0]
    white = masked_whiten(x, mask)
    assert torch.isfinite(white).all()
    assert white[0].tolist() == [0.0, 0.0]


def test_single_valid_element_whitens_to_zero():
    x = torch.tensor([[7.0, 1.0]])
    mask = torch.tensor([[1, 0]])
    assert masked_whiten(x, mask).tolist() == [[0.0, 0.0]]
    assert masked_whiten(x, mask, shift_mean=False).tolist() == [[7.0, 0.0]]


def test_mean_gradient_reaches_only_valid_elements():
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    masked_mean(x, torch.tensor([[1, 0, 1]])).backward()
    assert x.grad.tolist() == [[0.5, 0.0, 0.5]]


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 4.0, 9.0], [0.0, -1.0, 3.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]])
    # perfect fit
    assert masked_explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    # predicting the mean of the valid returns everywhere explains nothing
    mean = returns[mask.bool()].mean()
    assert masked_explained_variance(torch.full_like(returns, mean.item()), returns, mask).item() == pytest.approx(0.0, abs=1e-6)
    # hand case: returns 1, 2, 4 (var 14/9), values 1, 2, 3 -> residuals 0, 0, 1 (var 2/9)
    one_row = masked_explained_variance(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 4.0]]), torch.ones(1, 3))
    assert one_row.item() == pytest.approx(1 - (2 / 9) / (14 / 9), rel=1e-6)
    # worse than the mean goes negative
    assert masked_explained_variance(-returns, returns, mask).item() < 0


def test_explained_variance_of_constant_returns_is_zero():
    returns = torch.full((2, 3), 2.5)
    values = torch.randn(2, 3)
    result = masked_explained_variance(values, returns, torch.ones(2, 3))
    assert result.item() == 0.0
    assert not math.isnan(result.item())


def test_sum_over_max_length_hand_values():
    # Dr. GRPO's aggregation: real tokens 1 + 2 (row 0) + 4 (row 1) = 7 over 2 rows x max length 4 = 0.875
    # (the token mean would be 7 / 3); padding, even NaN, counts for nothing
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss = masked_sum_over_max_length(x, mask, max_length=4)
    assert math.isclose(float(loss.detach()), 0.875)
    loss.backward()
    # every real token weighs 1 / (2 x 4), whatever its response's length
    assert torch.equal(x.grad, torch.tensor([[0.125, 0.125, 0.0], [0.125, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        masked_sum_over_max_length(x, mask, max_length=0)
