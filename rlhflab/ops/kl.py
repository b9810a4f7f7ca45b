"""KL penalty: per-token estimators, the shaped RLHF reward, beta controllers, and the most value a KL budget can buy."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlhflab.errors import RlhfLabError

KL_ESTIMATORS = ("k1", "k3")


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token logprobs, (B, T) fp32.

    k1 = logp - logp_ref: unbiased, but single samples can be negative.
    k3 = (r - 1) - log r with r = p_ref / p: unbiased and never negative (Schulman, 2020).
    """
    logprobs, ref_logprobs = logprobs.float(), ref_logprobs.float()
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        # expm1 keeps precision when r is close to 1, which is the usual case
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of mask (B, T) -> (B,); 0 for an empty row."""
    keep = mask.bool()
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    # -1 on padding so the max picks the last real position whatever side the padding is on
    return torch.where(keep, positions, -1).amax(dim=1).clamp(min=0)


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLHF reward: -beta * kl on every valid token, plus scores[b] on row b's last valid token.

    Returns (rewards (B, T), non_score_reward (B,) = -beta * sum of kl over valid tokens).
    Padding (either side) gets 0; a row with no valid token gets no score at all.
    """
    keep = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=kl.device)
    penalty = torch.where(keep, -beta * kl.float(), zero)  # (B, T)
    non_score_reward = penalty.sum(dim=1)  # (B,)
    last = last_valid_index(keep)  # (B,)
    at_last = torch.zeros_like(keep)
    at_last[torch.arange(keep.shape[0], device=keep.device), last] = True
    at_last &= keep  # empty rows: index 0 is not a real token
    rewards = penalty + torch.where(at_last, scores.float().reshape(-1, 1), zero)
    return rewards, non_score_reward


def adaptive_kl_update(beta: float, current_kl: float, target: float, horizon: float, n_steps: int) -> float:
    """Adaptive KL coefficient (Ziegler et al. 2019), after n_steps more samples at current_kl.

    The proportional error is clipped to +-20% so one noisy batch cannot swing beta far, and
    beta never goes below 0 (a negative beta would reward moving away from the reference);
    callers should keep `horizon >= n_steps` so one update moves beta by 20% at most.
    """
    if target <= 0 or horizon <= 0:
        raise ValueError(f"adaptive KL needs target > 0 and horizon > 0 (got target={target}, horizon={horizon})")
    error = min(max(current_kl / target - 1.0, -0.2), 0.2)
    return max(beta * (1.0 + error * n_steps / horizon), 0.0)


def kl_optimal_values(values: torch.Tensor, budgets: Sequence[float], *, iterations: int = 200) -> list[float | None]:
    """The most mean value any policy can reach within each mean-KL budget to the policy that drew
    `values`, estimated from its samples. values (P, n): the value (e.g. P(positive)) of each of n
    samples of each of P prompts; budgets in nats per response. Returns one value per budget, None
    for a budget the samples cannot measure (at or above the KL of putting all weight on each
    prompt's best samples, at most log n).

    The maximiser of E_π[v] − λ KL(π || π_ref) is π ∝ π_ref exp(v / λ) (the Gibbs variational
    principle; the optimum of KL-regularised RLHF that DPO also starts from: Rafailov et al. 2023,
    eq. 4). With π_ref the samples' empirical distribution, π gives prompt p's samples the weights
    w = softmax(v_p / λ), at KL Σ w log(n w); one λ for every prompt spends the KL budget where it
    buys the most. λ is found by bisection on log λ so that the mean KL meets the budget.

    An estimate: n samples show only what π_ref puts at least about 1/n on, so the value understates
    the optimum more the nearer the budget is to log n. RlhfLabError for values that are not (P, n)
    with P ≥ 1 and n ≥ 2, or not finite, and for a negative or non-finite budget."""
    if values.dim() != 2 or values.shape[0] < 1 or values.shape[1] < 2:
        raise RlhfLabError(f"kl_optimal_values needs values of shape (prompts, samples >= 2), got {tuple(values.shape)}.")
    v = values.double()
    if not torch.isfinite(v).all():
        raise RlhfLabError("kl_optimal_values needs finite values.")
    n = v.shape[1]
    best = v == v.amax(dim=1, keepdim=True)
    most = float((math.log(n) - torch.log(best.sum(dim=1).double())).mean())  # all weight on the best samples
    spread = float((v.amax(dim=1) - v.amin(dim=1)).max())

    def mean_kl_and_value(log_lam: float) -> tuple[float, float]:
        return _tilt(v, math.exp(log_lam))

    out: list[float | None] = []
    for budget in budgets:
        if not math.isfinite(budget) or budget < 0:
            raise RlhfLabError(f"A KL budget must be a finite number of nats >= 0, got {budget}.")
        if spread == 0 or budget == 0:
            out.append(float(v.mean()))  # nothing to choose between, or no KL to spend: π_ref's own mean
            continue
        if budget >= most:
            out.append(None)
            continue
        # KL falls as λ grows: from `most` (λ -> 0) to 0 (λ -> inf); bracket λ around the values' spread
        low, high = math.log(spread) - 40.0, math.log(spread) + 40.0
        for _ in range(iterations):
            middle = (low + high) / 2
            if mean_kl_and_value(middle)[0] > budget:
                low = middle
            else:
                high = middle
        out.append(mean_kl_and_value(high)[1])
    return out


def kl_regularised_optimum(values: torch.Tensor, beta: float) -> dict[str, float]:
    """The optimum of KL-regularised RL at coefficient β, estimated from the reference's samples:
    values (P, n) are the reward of n samples of each of P prompts drawn from π_ref. The maximiser
    of J = E_π[r] − β KL(π || π_ref) is π* ∝ π_ref exp(r / β) (Rafailov et al. 2023, eq. 4), and its
    objective is J* = β log E_π_ref[exp(r / β)] (the Gibbs variational principle), here the mean
    over prompts of β (logsumexp(v / β) − log n). Returns {"objective": J*, "kl": KL(π* || π_ref)
    in nats per response, "value": E_π*[r]}, with objective = value − β · kl, in the units of
    `values`. A policy's J (its mean reward − β × its KL) can at most reach J*: the gap measures how
    far training stands from the optimum its own β defines. The sample estimate understates J*
    (Jensen), less the more samples. RlhfLabError for values not (P, n ≥ 1), not finite, or β ≤ 0."""
    if values.dim() != 2 or values.shape[0] < 1 or values.shape[1] < 1:
        raise RlhfLabError(f"kl_regularised_optimum needs values of shape (prompts, samples), got {tuple(values.shape)}.")
    if not torch.isfinite(values).all():
        raise RlhfLabError("kl_regularised_optimum needs finite values.")
    if not (math.isfinite(beta) and beta > 0):
        raise RlhfLabError(f"kl_regularised_optimum needs a KL coefficient β > 0, got {beta}.")
    v = values.double()
    kl, value = _tilt(v, beta)
    objective = float((beta * (torch.logsumexp(v / beta, dim=1) - math.log(v.shape[1]))).mean())
    return {"objective": objective, "kl": kl, "value": value}


def tilt(values: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights (P, n), KL (P,) in nats) of each prompt's samples `values` (P, n) reweighted by
    softmax(values / λ), the KL against the samples' own (uniform) distribution: π* of
    kl_regularised_optimum at β = λ, prompt by prompt. Any quantity q (P, n) of the same samples has
    the mean (weights * q).sum(1) under it."""
    logw = torch.log_softmax(values / lam, dim=1)
    weights = logw.exp()
    return weights, (weights * (logw + math.log(values.shape[1]))).sum(dim=1)


def _tilt(v: torch.Tensor, lam: float) -> tuple[float, float]:
    """(mean KL, mean value) over prompts of `tilt`."""
    w, kl = tilt(v, lam)
    return float(kl.mean()), float((w * v).sum(dim=1).mean())
