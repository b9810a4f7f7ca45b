"""Critic-free advantages: from groups of samples per prompt (GRPO, Dr. GRPO, RLOO), or per-token returns
normalised over the whole batch (REINFORCE++); and GRPO's KL-in-the-loss term."""

from __future__ import annotations

from typing import Callable

import torch

from rlhflab.ops.kl import kl_per_token
from rlhflab.ops.masked import Reduce, _identity, masked_mean, masked_whiten
from rlhflab.ops.ppo import gae


def _group_index(scores: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(scores as fp32 detached (N,), compact group index (N,) in [0, G), G).

    Ids may be any integers in any order; unique compacts them, so permuting the rollouts
    (ids included) permutes the result.
    """
    if scores.dim() != 1 or groups.shape != scores.shape:
        raise ValueError(
            f"scores and groups must both be 1-D of the same length (got {tuple(scores.shape)} and {tuple(groups.shape)})"
        )
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise ValueError(f"groups must hold integer prompt ids (got dtype {groups.dtype})")
    _, index = torch.unique(groups, return_inverse=True)
    n_groups = int(index.max()) + 1 if index.numel() else 0
    # advantages are targets: no gradient may flow through them
    return scores.detach().float(), index, n_groups


def _per_group_sum(values: torch.Tensor, index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of values (N,) over each sample's group, gathered back to (N,)."""
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)
    return sums[index]


def grpo_advantages(
    scores: torch.Tensor, groups: torch.Tensor, *, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-normalised advantage per sample, scores (N,) and int ids groups (N,) -> (N,) fp32.

    A_i = (r_i - mean_g) / (std_g + eps) over the samples sharing r_i's group id
    (Shao et al. 2024, DeepSeekMath, §4.1.2 "outcome supervision"; eps is ours, as in TRL).
    std_g is the unbiased sample std (Bessel, n - 1), like TRL's torch.std; a group of one
    sample has std 0 by convention (torch.std gives NaN) and so advantage 0. scale=False
    skips the division: A_i = r_i - mean_g, Dr. GRPO (Liu et al. 2025, "Understanding
    R1-Zero-Like Training"). Groups may have different sizes. Raises ValueError on bad
    shapes or a non-integer groups dtype.
    """
    scores, index, n_groups = _group_index(scores, groups)
    counts = _per_group_sum(torch.ones_like(scores), index, n_groups)  # (N,) size of each sample's group
    centred = scores - _per_group_sum(scores, index, n_groups) / counts  # exactly 0 for a group of one
    if not scale:
        return centred
    # two-pass variance (centre, then square): E[r^2] - E[r]^2 cancels badly for large offsets
    var = _per_group_sum(centred**2, index, n_groups) / (counts - 1).clamp(min=1)  # n = 1: 0 / 1, not 0 / 0
    return centred / (var.sqrt() + eps)


def dr_grpo_advantages(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO's advantage per sample, scores (N,) and int ids groups (N,) -> (N,) fp32.

    A_i = r_i - mean_g: GRPO's group baseline without the division by the group's std
    (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
    arXiv:2503.20783: the std term weighs prompts whose answers barely differ far above the
    rest). The other half of Dr. GRPO, no per-response length normalisation in the loss, is
    ops.masked.masked_sum_over_max_length. Raises ValueError as grpo_advantages.
    """
    return grpo_advantages(scores, groups, scale=False)


def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, *,
                            reduce: Reduce = _identity) -> torch.Tensor:
    """REINFORCE++ advantages, per-token rewards (B, R) and mask (B, R) -> (B, R) fp32, 0 on padding.

    The return-to-go of each token, normalised over every real token of the global batch
    (Hu 2025, "REINFORCE++", arXiv:2501.03262):
        A_t = sum_{i >= t} gamma^(i - t) r_i    (with r_i = score on the last token - beta * KL_i,
                                                 i.e. A_t = r(x, y) - beta * sum_{i >= t} KL_i at gamma 1)
        A_t <- (A_t - mean(A)) / std(A)         mean and std over all real tokens of the batch
    No critic and no per-prompt baseline: the batch mean is the baseline. `rewards` already
    hold the KL penalty (ops.kl.per_token_rewards); `reduce` sums partial sums over processes
    so the statistics are the whole batch's (masked_whiten: unbiased variance, eps 1e-8 inside
    the square root; OpenRLHF's reinforce estimator divides by the biased one). Padding on
    either side, or a masked gap, is skipped by the return. Inputs are detached.
    """
    # GAE with zero values and lambda 1 is the discounted return: delta_t = r_t, A_t = r_t + gamma * A_next
    returns, _ = gae(rewards, torch.zeros_like(rewards, dtype=torch.float32), mask, gamma, 1.0)
    return masked_whiten(returns, mask, reduce=reduce)


def rloo_advantages(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantage, scores (N,) and int ids groups (N,) -> (N,) fp32.

    A_i = r_i - mean_{j != i in group} r_j = k / (k - 1) * (r_i - mean_g), k the group's size
    (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al.
    2024, "Back to Basics", the RLOO estimator). Groups may have different sizes.
    Raises ValueError on bad shapes or dtype, and when a group has one sample (no baseline
    exists: sample with samples_per_prompt >= 2).
    """
    scores, index, n_groups = _group_index(scores, groups)
    counts = _per_group_sum(torch.ones_like(scores), index, n_groups)  # (N,)
    if bool((counts < 2).any()):
        raise ValueError("RLOO needs samples_per_prompt >= 2: a group with one sample has no leave-one-out baseline")
    mean = _per_group_sum(scores, index, n_groups) / counts
    return counts / (counts - 1) * (scores - mean)


def sequence_advantages_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast one advantage per sequence, (B,), to its response tokens: mask (B, R) -> (B, R) fp32, 0 on padding.

    This is the per-token advantage that the clipped policy loss (ops.ppo.policy_loss) takes
    in GRPO and RLOO, where every token of a response shares the outcome's advantage.
    """
    if advantages.dim() != 1 or mask.dim() != 2 or advantages.shape[0] != mask.shape[0]:
        raise ValueError(
            f"advantages must be (B,) and mask (B, R) with the same B (got {tuple(advantages.shape)} and {tuple(mask.shape)})"
        )
    advantages = advantages.detach().float().unsqueeze(1)  # (B, 1)
    return torch.where(mask.bool(), advantages, torch.zeros((), dtype=torch.float32, device=advantages.device))


def kl_penalty_in_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                       aggregate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_mean) -> torch.Tensor:
    """GRPO's KL term: masked mean over real tokens of the k3 estimate of KL(policy || ref), scalar fp32.

    k3 = exp(ref - logp) - (ref - logp) - 1 per token (Schulman 2020, "Approximating KL
    divergence"; DeepSeekMath eq. 4), never negative; logprobs and ref_logprobs (B, R) are the
    sampled tokens' logprobs (nats), mask (B, R). Averaged over all real tokens of the batch,
    the same weighting as policy_loss (`aggregate` replaces the mean as there). Gradient flows to
    logprobs only.
    """
    keep = mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=logprobs.device)
    # zero both on padding before the exp: a garbage pad logprob (-inf) would give a NaN
    # gradient through exp even though masked_mean drops the value
    logprobs = torch.where(keep, logprobs.float(), zero)
    ref_logprobs = torch.where(keep, ref_logprobs.detach().float(), zero)
    return aggregate(kl_per_token(logprobs, ref_logprobs, "k3"), keep)
