"""PPO pieces: GAE, clipped policy and value losses, entropy and token logprobs from logits."""

from __future__ import annotations

from typing import Callable

import torch

from rlhflab.ops.masked import masked_mean


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the valid tokens of each row -> (advantages, returns).

    delta_t = r_t + gamma * V_next - V_t and A_t = delta_t + gamma * lam * A_next, where
    "next" is the next valid token of the row; after the last valid token the episode has
    ended (V = 0, A = 0). Padding on either side (or a masked gap inside a row) is skipped,
    so it never changes a valid advantage, and gets advantage and return 0.
    Inputs are detached: these are regression targets, no gradient may flow through them.
    """
    keep = mask.bool()
    rewards, values = rewards.detach().float(), values.detach().float()
    zero = torch.zeros((), dtype=torch.float32, device=rewards.device)
    next_value = torch.zeros(rewards.shape[0], dtype=torch.float32, device=rewards.device)  # (B,)
    next_adv = torch.zeros_like(next_value)
    reversed_adv = []
    for t in reversed(range(rewards.shape[1])):
        valid = keep[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        # where, not multiply: padding may hold non-finite rewards/values
        adv = torch.where(valid, adv, zero)
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = torch.where(valid, adv, next_adv)
        reversed_adv.append(adv)
    advantages = torch.stack(reversed_adv[::-1], dim=1)  # (B, T)
    returns = torch.where(keep, advantages + values, zero)
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_range: float,
    aggregate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_mean,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate, masked mean of max(-ratio * A, -clip(ratio, 1-c, 1+c) * A).

    `aggregate(per_token (B, R), mask)` -> scalar replaces the masked mean over all real tokens
    when a recipe weighs tokens otherwise (the stats below stay token means).
    stats (python floats): clip_fraction (share of valid tokens where the clipped term won,
    TRL's definition), approx_kl (masked mean of 0.5 * (logp - old_logp)^2), ratio_mean.
    """
    keep = mask.bool()
    # zero the log-ratio on padding before exp: a garbage pad logprob would give ratio = inf
    # and a NaN gradient even though the position is masked out of the mean
    log_ratio = torch.where(keep, logprobs.float() - old_logprobs.detach().float(), torch.zeros((), device=logprobs.device))
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach().float()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        stats = {
            "clip_fraction": float(masked_mean((clipped > unclipped).float(), keep)),
            "approx_kl": float(masked_mean(0.5 * log_ratio**2, keep)),
            "ratio_mean": float(masked_mean(ratio, keep)),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss, 0.5 * masked mean of max((v - R)^2, (clip(v, old_v +- c) - R)^2).

    clip_range_value None disables clipping. stats: value_clip_fraction (share of valid
    tokens where the clipped error was the larger one).
    """
    keep = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=values.device)
    values = torch.where(keep, values.float(), zero)
    old_values = torch.where(keep, old_values.detach().float(), zero)
    returns = torch.where(keep, returns.detach().float(), zero)
    unclipped = (values - returns) ** 2
    if clip_range_value is None:
        clipped = unclipped
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
        clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        stats = {"value_clip_fraction": float(masked_mean((clipped > unclipped).float(), keep))}
    return loss, stats


def entropy_per_token(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) at each position, logits (..., V) -> (...) fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # logsumexp inside: stable for any logit scale
    p = logp.exp()
    # -inf logits (banned tokens) have p = 0 and contribute 0, not 0 * -inf = NaN;
    # zeroing logp first also keeps the gradient finite there
    finite_logp = torch.where(p > 0, logp, torch.zeros((), device=logp.device))
    return -(p * finite_logp).sum(dim=-1)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens of the entropy of softmax(logits), logits (B, T, V) -> scalar fp32."""
    return masked_mean(entropy_per_token(logits), mask)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] in fp32: logits (B, T, V), labels (B, T) int -> (B, T).

    Labels must be valid ids everywhere (padding included; mask the result instead).
    One row at a time, so a bf16 batch never needs a full fp32 copy of its logits.
    """
    rows = []
    for row_logits, row_labels in zip(logits, labels):  # (T, V), (T,)
        picked = row_logits.gather(-1, row_labels.long().unsqueeze(-1)).squeeze(-1).float()
        rows.append(picked - torch.logsumexp(row_logits.float(), dim=-1))
    if not rows:
        return torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    return torch.stack(rows)
