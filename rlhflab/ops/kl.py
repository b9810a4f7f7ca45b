"""KL penalty: per-token estimators, the shaped RLHF reward, and beta controllers."""

from __future__ import annotations

import torch

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
