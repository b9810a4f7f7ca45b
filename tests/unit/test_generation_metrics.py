"""Generation metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.eval.generation_metrics import (
    distinct_n,
    distribution,
    kl_and_perplexity,
    probability_stats,
    reward_shift,
    sentiment_of,
)


def test_distinct_n_counts_unique_ngrams_over_all_texts():
    texts = ["a b a b", "a c"]
    # unigrams: a b a b a c -> 3 unique of 6; bigrams: ab ba ab | ac -> 3 unique of 4
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one"], 2) == 0.0
    with pytest.raises(RlhfLabError):
        distinct_n(texts, 0)


def test_distribution_and_probability_stats():
    stats = probability_stats([0.2, 0.6, 0.9, 0.5])
    assert stats["mean"] == pytest.approx(0.55)
    assert stats["median"] == pytest.approx(0.55)
    assert stats["std"] == pytest.approx(math.sqrt((0.35**2 + 0.05**2 + 0.35**2 + 0.05**2) / 4))
    assert stats["above_half"] == 0.5  # 0.5 itself is not above
    with pytest.raises(RlhfLabError):
        distribution([])


def test_reward_shift_shares_and_mean_change():
    shift = reward_shift([0.1, 0.5, 0.9, 0.3], [0.4, 0.5, 0.2, 0.8])
    assert shift == pytest.approx({"better": 0.5, "worse": 0.25, "same": 0.25, "mean_delta": (0.3 + 0 - 0.7 + 0.5) / 4})
    with pytest.raises(RlhfLabError):
        reward_shift([1.0], [1.0, 2.0])


def test_sentiment_thresholds():
    assert [sentiment_of(p) for p in (0.1, 0.34, 0.5, 0.66, 0.9)] == ["negative", "neutral", "neutral", "neutral", "positive"]


def test_kl_and_perplexity_by_hand():
    own = [[-1.0, -2.0], [-0.5]]
    ref = [[-1.5, -2.5], [-1.0]]
    kl, ppl = kl_and_perplexity(own, ref)
    assert kl == pytest.approx(((-3.0) - (-4.0) + (-0.5) - (-1.0)) / 2)  # 0.75 nats per response
    assert ppl == pytest.approx(math.exp(5.0 / 3))
    assert kl_and_perplexity(own, own)[0] == 0.0
    with pytest.raises(RlhfLabError):
        kl_and_perplexity([[-1.0]], [[-1.0, -2.0]])
