"""Prompt construction from review openings."""

import pytest

from rlhflab.data import Review, make_prompts
from rlhflab.data.prompts import prompt_words
from rlhflab.errors import RlhfLabError

REVIEWS = [Review(" ".join(f"w{i}_{j}" for j in range(30)), i % 2) for i in range(200)]


def test_prompt_words():
    assert prompt_words("one two  three\nfour", 2) == "one two"
    assert prompt_words("one two", 5) == "one two"  # shorter review: whole text
    assert prompt_words("one two three", 3) == "one two three"


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_prompt_words_rejects_bad_counts(n):
    with pytest.raises(RlhfLabError):
        prompt_words("a b c", n)


def test_make_prompts_word_counts_in_range_and_prefixes():
    prompts = make_prompts(REVIEWS, 2, 8, seed=0)
    assert len(prompts) == len(REVIEWS)
    counts = [len(p.split()) for p in prompts]
    assert all(2 <= c <= 8 for c in counts)
    assert min(counts) == 2 and max(counts) == 8  # the whole range is used
    assert all(r.text.startswith(p) for r, p in zip(REVIEWS, prompts))


def test_make_prompts_short_reviews_give_whole_text():
    assert make_prompts([Review("tiny review", 1)], 5, 9, seed=3) == ["tiny review"]


def test_make_prompts_is_deterministic_by_seed():
    assert make_prompts(REVIEWS, 2, 8, seed=1) == make_prompts(REVIEWS, 2, 8, seed=1)
    assert make_prompts(REVIEWS, 2, 8, seed=1) != make_prompts(REVIEWS, 2, 8, seed=2)


def test_make_prompts_fixed_length():
    assert {len(p.split()) for p in make_prompts(REVIEWS, 4, 4, seed=0)} == {4}


@pytest.mark.parametrize(("lo", "hi"), [(0, 5), (6, 5), (-2, 3), (2.5, 4)])
def test_make_prompts_validates_range(lo, hi):
    with pytest.raises(RlhfLabError, match="min_words"):
        make_prompts(REVIEWS, lo, hi, seed=0)
