"""Unigram and interpolated-bigram perplexity baselines, checked by hand and against a slow reference."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from rlhflab.eval.baselines import ngram_perplexities


def test_hand_computed_tiny_example():
    # train 0 1 0 2, V = 3: counts (2, 1, 1), N = 4
    # add-one unigram: P = ((2+1)/(4+3), (1+1)/7, (1+1)/7) = (3/7, 2/7, 2/7)
    # validation 0 1: ppl = exp(-(ln 3/7 + ln 2/7) / 2) = (6/49)**-0.5 = 7 / sqrt(6) = 2.8577
    # bigram: token 0 has no context -> 3/7; P(1 | 0) = 0.7 * c(0,1)/c(0) + 0.3 * 2/7
    #         = 0.7 * 1/2 + 0.3 * 2/7 = 0.35 + 0.0857143 = 61/140; ppl = (3/7 * 61/140)**-0.5 = (183/980)**-0.5
    result = ngram_perplexities([0, 1, 0, 2], [0, 1], 3)
    assert result["unigram"] == pytest.approx(7 / math.sqrt(6), rel=1e-12)
    assert result["unigram"] == pytest.approx(2.857738, rel=1e-6)
    assert result["bigram"] == pytest.approx((183 / 980) ** -0.5, rel=1e-12)
    assert result["tokens"] == {"train": 4, "validation": 2}
    assert result["bigram_weight"] == 0.7


def test_unseen_context_falls_back_to_the_unigram():
    # 2 never starts a training pair (it is the last token), so P(0 | 2) = P(0) = 3/7
    result = ngram_perplexities([0, 1, 0, 2], [2, 0], 3)
    assert result["bigram"] == pytest.approx(result["unigram"], rel=1e-12)
    assert result["unigram"] == pytest.approx((2 / 7 * 3 / 7) ** -0.5, rel=1e-12)


def test_uniform_model_has_perplexity_vocab_size():
    # every token equally frequent in training: add-one P(w) = (k + 1) / (kV + V) = 1 / V
    vocab = 7
    train = list(range(vocab)) * 20
    validation = [3, 3, 0, 6, 1, 5, 5, 5]
    assert ngram_perplexities(train, validation, vocab)["unigram"] == pytest.approx(vocab, rel=1e-12)
    # and a bigram with weight 0 is that unigram
    assert ngram_perplexities(train, validation, vocab, bigram_weight=0.0)["bigram"] == pytest.approx(vocab)


def test_bigram_beats_unigram_on_a_patterned_sequence():
    train, validation = [0, 1, 2, 3] * 500, [0, 1, 2, 3] * 50
    result = ngram_perplexities(train, validation, 4)
    assert result["unigram"] == pytest.approx(4.0, rel=1e-3)
    # after the first token every step is certain under P_ML: 0.7 * 1 + 0.3 * (501/2004)
    expected = math.exp(-(math.log(501 / 2004) + 199 * math.log(0.7 + 0.3 * 501 / 2004)) / 200)
    assert result["bigram"] == pytest.approx(expected, rel=1e-12)
    assert result["bigram"] < 1.4 < 3.9 < result["unigram"]


def reference(train, validation, vocab, weight=0.7):
    """The same two models with Python counters, one token at a time."""
    counts, pairs, contexts = Counter(train), Counter(zip(train, train[1:])), Counter(train[:-1])
    uni = lambda w: (counts[w] + 1) / (len(train) + vocab)  # noqa: E731
    logs_uni = [math.log(uni(w)) for w in validation]
    logs_bi = [logs_uni[0]]
    for u, w in zip(validation, validation[1:]):
        p = weight * pairs[(u, w)] / contexts[u] + (1 - weight) * uni(w) if contexts[u] else uni(w)
        logs_bi.append(math.log(p))
    return math.exp(-sum(logs_uni) / len(validation)), math.exp(-sum(logs_bi) / len(validation))


def test_matches_a_slow_reference_on_random_text():
    rng = random.Random(0)
    vocab = 50
    train = [min(int(rng.expovariate(0.15)), vocab - 1) for _ in range(3000)]
    validation = [min(int(rng.expovariate(0.15)), vocab - 1) for _ in range(500)] + [49, 48]  # rare ids too
    result = ngram_perplexities(np.array(train), tuple(validation), vocab, bigram_weight=0.4)
    unigram, bigram = reference(train, validation, vocab, 0.4)
    assert result["unigram"] == pytest.approx(unigram, rel=1e-10)
    assert result["bigram"] == pytest.approx(bigram, rel=1e-10)


def test_accepts_torch_tensors_and_one_training_token():
    import torch

    result = ngram_perplexities(torch.tensor([1]), torch.tensor([1, 0]), 2)
    # counts (0, 1), N = 1: P = (1/3, 2/3); no training pairs, so the bigram is the unigram
    assert result["unigram"] == pytest.approx((2 / 3 * 1 / 3) ** -0.5) == result["bigram"]


@pytest.mark.parametrize(
    "train, validation, vocab, match",
    [
        ([], [0], 3, "non-empty"),
        ([0], [], 3, "non-empty"),
        ([0, 3], [0], 3, "outside"),
        ([0, -1], [0], 3, "outside"),
        ([0.5], [0], 3, "integer"),
        ([[0, 1]], [0], 3, "1-D"),
        ([0], [0], 0, "vocab_size"),
    ],
)
def test_bad_inputs(train, validation, vocab, match):
    with pytest.raises(ValueError, match=match):
        ngram_perplexities(train, validation, vocab)


def test_bad_weight():
    with pytest.raises(ValueError, match="bigram_weight"):
        ngram_perplexities([0, 1], [0, 1], 2, bigram_weight=1.5)
