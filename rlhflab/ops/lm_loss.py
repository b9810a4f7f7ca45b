"""Causal language-model loss, summed so that perplexity is weighted by tokens, not batches."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token negative log-likelihoods over real tokens, and how many there were.

    logits (B, T, V) predict input_ids shifted by one; position t is scored only when both
    t and t+1 are real tokens (mask 1), so padding never counts, whichever token id it uses.
    """
    targets, valid = next_token_targets(input_ids, attention_mask)
    # fp32 log-softmax: bf16 logits lose too much precision for perplexity.
    nll = F.cross_entropy(logits[:, :-1][valid].float(), targets[valid], reduction="sum")
    return nll, int(valid.sum())


def next_token_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (B, T-1) = input_ids shifted left by one; valid (B, T-1) bool: position t and t+1 both real)."""
    return input_ids[:, 1:], (attention_mask[:, 1:] * attention_mask[:, :-1]).bool()


def perplexity(mean_nll: float) -> float:
    """exp of the mean NLL, guarded against overflow for a diverged model."""
    return math.exp(min(mean_nll, 700.0))
