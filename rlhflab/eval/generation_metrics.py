"""Metrics of generated text and of reward distributions (pure Python, no torch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from rlhflab.errors import RlhfLabError

SENTIMENTS = ("negative", "neutral", "positive")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (whitespace words); 0 when there are none."""
    if n < 1:
        raise RlhfLabError(f"distinct-n needs n >= 1, got {n}.")
    total, seen = 0, set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def distribution(values: Sequence[float]) -> dict:
    """mean, median, std (population) of a list of rewards."""
    values = [float(v) for v in values]
    if not values:
        raise RlhfLabError("No values to summarise: the evaluation produced no responses.")
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "std": statistics.pstdev(values)}


def probability_stats(values: Sequence[float]) -> dict:
    """`distribution` plus the share above 0.5, for probabilities."""
    return {**distribution(values), "above_half": sum(v > 0.5 for v in values) / len(values)}


def reward_shift(before: Sequence[float], after: Sequence[float], tolerance: float = 1e-6) -> dict:
    """Per-prompt comparison of two models' rewards: shares better / worse / same, mean change."""
    if len(before) != len(after) or not before:
        raise RlhfLabError(f"Reward shift needs two equally long, non-empty lists; got {len(before)} and {len(after)}.")
    deltas = [b - a for a, b in zip(before, after)]
    n = len(deltas)
    return {
        "better": sum(d > tolerance for d in deltas) / n,
        "worse": sum(d < -tolerance for d in deltas) / n,
        "same": sum(abs(d) <= tolerance for d in deltas) / n,
        "mean_delta": statistics.fmean(deltas),
    }


def sentiment_of(probability: float, low: float = 1 / 3, high: float = 2 / 3) -> str:
    """A prompt's own sentiment from the positive probability of its text alone."""
    if math.isnan(probability):
        raise RlhfLabError("A prompt's sentiment probability is nan.")
    return "negative" if probability < low else "positive" if probability > high else "neutral"


def kl_and_perplexity(model_logprobs: Sequence[Sequence[float]], reference_logprobs: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(KL, perplexity) of responses sampled from a model, against the reference.

    KL is the k1 Monte-Carlo estimate in nats per response, mean over responses of
    sum_t (log p_model - log p_ref); perplexity is the reference's, over all response tokens.
    """
    if len(model_logprobs) != len(reference_logprobs) or not model_logprobs:
        raise RlhfLabError("KL needs the same non-empty set of responses under both models.")
    kl, nll, tokens = 0.0, 0.0, 0
    for own, ref in zip(model_logprobs, reference_logprobs):
        own, ref = list(own), list(ref)
        if len(own) != len(ref):
            raise RlhfLabError(f"Log-probs of one response differ in length ({len(own)} vs {len(ref)}).")
        kl += sum(own) - sum(ref)
        nll -= sum(ref)
        tokens += len(ref)
    return kl / len(model_logprobs), (math.exp(nll / tokens) if tokens else float("nan"))
