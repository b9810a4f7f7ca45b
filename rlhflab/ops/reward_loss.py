"""Reward-model losses and score normalisation (pure tensor functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with the score read as the log-odds of label 1 (positive)."""
    return F.binary_cross_entropy_with_logits(scores.float(), labels.float())


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigma(r_chosen - r_rejected - margin), averaged over pairs (margin as in Llama 2)."""
    diff = chosen.float() - rejected.float()
    if margin is not None:
        diff = diff - margin.float()
    return -F.logsigmoid(diff).mean()


def normalization(scores: torch.Tensor) -> tuple[float, float]:
    """(gain, bias) with gain * scores + bias of mean 0 and std 1.

    PPO's KL coefficient trades nats of KL against reward units, so a reward with a fixed
    scale keeps that trade meaningful whichever reward model is plugged in.
    """
    scores = scores.double()
    std = float(scores.std(unbiased=False)) if scores.numel() > 1 else 0.0
    gain = 1.0 / std if std > 1e-8 else 1.0
    return gain, -float(scores.mean()) * gain
