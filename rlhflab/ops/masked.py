"""Statistics over the valid (mask 1) elements of a tensor, safe for empty masks."""

from __future__ import annotations

from typing import Callable

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]  # all-reduce (sum) of a partial sum over processes


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _valid(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as fp32 with invalid positions zeroed, mask as bool).

    torch.where rather than x * mask: padding may hold inf/NaN (e.g. logprobs of pad
    tokens), and 0 * inf would leak NaN into every sum.
    """
    keep = mask.bool()
    x = x.float()
    return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)), keep


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is 1, over dim (all elements when dim is None)."""
    x, _ = _valid(x, mask)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x where mask is 1, over dim; 0 where the mask is empty."""
    x, keep = _valid(x, mask)
    if dim is None:
        total, count = x.sum(), keep.sum()
    else:
        total, count = x.sum(dim), keep.sum(dim)
    # an empty mask gives 0 / 1 = 0, never 0 / 0
    return total / count.clamp(min=1).to(total.dtype)


def masked_sum_over_max_length(x: torch.Tensor, mask: torch.Tensor, max_length: int) -> torch.Tensor:
    """Sum of x (B, R) over its valid elements divided by B * max_length, a scalar: Dr. GRPO's loss
    aggregation (Liu et al. 2025, arXiv:2503.20783; TRL's loss_type="dr_grpo").

    The divisor is a constant (rows x the generation limit), never a response's own length nor
    the batch's token count, so every token weighs the same whatever its response's length and
    however long the other responses are. Raises ValueError for max_length < 1.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 (got {max_length})")
    return masked_sum(x, mask) / (x.shape[0] * max_length)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True, reduce: Reduce = _identity) -> torch.Tensor:
    """Variance of all valid elements (one scalar); Bessel-corrected when unbiased and count > 1.

    `reduce` sums a partial sum over processes (all-reduce); the identity on one process, so
    the result over several processes equals the one-process result on all their elements.
    """
    x, keep = _valid(x, mask)
    count = reduce(keep.sum().to(x.dtype))
    mean = reduce(x.sum()) / count.clamp(min=1)
    # centre before squaring (two-pass): E[x^2] - E[x]^2 cancels badly for large offsets
    centred = torch.where(keep, x - mean, torch.zeros((), dtype=x.dtype, device=x.device))
    var = reduce((centred**2).sum()) / count.clamp(min=1)
    if unbiased:
        # count <= 1 has no spread to correct: keep var (0) rather than dividing by zero
        var = torch.where(count > 1, var * count / (count - 1).clamp(min=1), var)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  reduce: Reduce = _identity) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over valid elements (of every process, with `reduce`), 0 at invalid positions.

    shift_mean=False adds the mean back: the scale is normalised but the sign of the
    average reward is kept (TRL's reward whitening). var is the unbiased one, as in TRL.
    """
    keep = mask.bool()
    values, _ = _valid(x, keep)
    mean = reduce(values.sum()) / reduce(keep.sum().to(values.dtype)).clamp(min=1)
    var = masked_var(x, keep, unbiased=True, reduce=reduce)
    whitened = (x.float() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(keep, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def masked_explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over valid elements (0-dim tensor; 0 when Var(returns) is 0).

    1 is a perfect value function, 0 is no better than predicting the mean return, and
    negative is worse than that.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns.float() - values.float(), mask, unbiased=False)
    safe = torch.where(var_returns > 0, var_returns, torch.ones_like(var_returns))
    return torch.where(var_returns > 0, 1.0 - var_residual / safe, torch.zeros_like(var_returns))
