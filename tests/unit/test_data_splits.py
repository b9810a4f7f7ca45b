"""Balanced sampling and stratified splits."""

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlhflab
from rlhflab.data import Review, Splits, balanced_sample, split_reviews
from rlhflab.data.splits import split_sizes
from rlhflab.errors import RlhfLabError


def make_reviews(positive: int, negative: int) -> list[Review]:
    return [Review(f"pos {i}", 1) for i in range(positive)] + [Review(f"neg {i}", 0) for i in range(negative)]


def positives(reviews):
    return sum(r.label == 1 for r in reviews)


# --- balanced_sample -------------------------------------------------------------------


def test_balanced_sample_counts_and_no_repeats():
    sample = balanced_sample(make_reviews(700, 300), 250, seed=0)
    assert len(sample) == 500 and positives(sample) == 250
    assert len({r.text for r in sample}) == 500  # without replacement


def test_balanced_sample_is_shuffled():
    labels = [r.label for r in balanced_sample(make_reviews(100, 100), 50, seed=0)]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_balanced_sample_determinism():
    data = make_reviews(500, 500)
    assert balanced_sample(data, 100, seed=7) == balanced_sample(data, 100, seed=7)
    assert balanced_sample(data, 100, seed=7) != balanced_sample(data, 100, seed=8)


def test_balanced_sample_none_keeps_all_shuffled():
    data = make_reviews(30, 10)
    kept = balanced_sample(data, None, seed=0)
    assert sorted(kept, key=lambda r: r.text) == sorted(data, key=lambda r: r.text)
    assert kept != data
    assert data == make_reviews(30, 10)  # input not mutated


def test_balanced_sample_too_few_names_counts():
    with pytest.raises(RlhfLabError) as err:
        balanced_sample(make_reviews(700, 300), 400, seed=0)
    message = str(err.value)
    assert "700 positive" in message and "300 negative" in message and "data.per_class" in message


def test_balanced_sample_missing_class():
    with pytest.raises(RlhfLabError, match="no negative examples"):
        balanced_sample(make_reviews(5, 0), 2, seed=0)


def test_balanced_sample_needs_labels():
    with pytest.raises(RlhfLabError, match="no label"):
        balanced_sample([Review("a", None), Review("b", 1)], 1, seed=0)


@pytest.mark.parametrize("per_class", [0, -3, 2.5])
def test_balanced_sample_rejects_bad_per_class(per_class):
    with pytest.raises(RlhfLabError, match="data.per_class"):
        balanced_sample(make_reviews(10, 10), per_class, seed=0)


def test_bad_seed():
    with pytest.raises(RlhfLabError, match="seed"):
        balanced_sample(make_reviews(2, 2), 1, seed="abc")


# --- split_reviews ---------------------------------------------------------------------


def test_stratified_split_sizes():
    splits = split_reviews(balanced_sample(make_reviews(1500, 1200), 1000, seed=0), [0.6, 0.2, 0.2], seed=0)
    assert isinstance(splits, Splits)
    assert [len(splits.train), len(splits.validation), len(splits.test)] == [1200, 400, 400]
    assert [positives(splits.train), positives(splits.validation), positives(splits.test)] == [600, 200, 200]


def test_split_keeps_imbalanced_ratio():
    splits = split_reviews(make_reviews(900, 100), (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in (splits.train, splits.validation, splits.test)] == [800, 100, 100]
    assert [positives(p) for p in (splits.train, splits.validation, splits.test)] == [720, 90, 90]


def test_split_is_disjoint_and_complete():
    data = make_reviews(55, 45)
    splits = split_reviews(data, [0.5, 0.3, 0.2], seed=1)
    parts = splits.train + splits.validation + splits.test
    assert Counter(r.text for r in parts) == Counter(r.text for r in data)


def test_split_determinism_and_seed_matters():
    data = make_reviews(100, 100)
    assert split_reviews(data, [0.6, 0.2, 0.2], seed=5) == split_reviews(data, [0.6, 0.2, 0.2], seed=5)
    assert split_reviews(data, [0.6, 0.2, 0.2], seed=5) != split_reviews(data, [0.6, 0.2, 0.2], seed=6)


def test_split_same_across_processes_with_different_hash_seeds():
    code = (
        "from rlhflab.data import Review, balanced_sample, split_reviews;"
        "d=[Review(f't{i}', i % 2) for i in range(300)] + [Review('u', None)] * 3;"
        "s=split_reviews(balanced_sample(d, None, 4), [0.7, 0.2, 0.1], 4);"
        "print([r.text for r in s.train + s.validation + s.test])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(Path(rlhflab.__file__).parents[1])},
        ).stdout
        for hash_seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


def test_split_zero_fraction_gives_empty_part():
    splits = split_reviews(make_reviews(10, 10), [0.8, 0.0, 0.2], seed=0)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16, 0, 4)
    assert split_reviews(make_reviews(3, 3), [1, 0, 0], seed=0).test == []


def test_split_unlabelled_reviews():
    data = [Review(f"t{i}", None) for i in range(10)]
    splits = split_reviews(data, [0.6, 0.2, 0.2], seed=0)
    assert [len(p) for p in (splits.train, splits.validation, splits.test)] == [6, 2, 2]


@pytest.mark.parametrize(
    "fractions",
    [[0.5, 0.2, 0.2], [0.6, 0.4], [1.2, -0.1, -0.1], [0.0, 0.5, 0.5], [0.6, 0.2, 0.2, 0.0], "abc", [0.6, float("nan"), 0.4]],
)
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(RlhfLabError, match="fraction"):
        split_reviews(make_reviews(10, 10), fractions, seed=0)


def test_split_part_too_small_names_part_and_counts():
    with pytest.raises(RlhfLabError) as err:
        split_reviews(make_reviews(5, 4), [0.96, 0.02, 0.02], seed=0)
    message = str(err.value)
    assert "validation" in message and "0 of 9" in message and "50 reviews" in message


def test_split_empty_input():
    with pytest.raises(RlhfLabError, match="no reviews to split"):
        split_reviews([], [0.6, 0.2, 0.2], seed=0)


def test_split_sizes_round_to_total():
    assert split_sizes(2000, [0.6, 0.2, 0.2]) == [1200, 400, 400]
    assert split_sizes(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]


@settings(max_examples=60, deadline=None)
@given(
    n_pos=st.integers(0, 60),
    n_neg=st.integers(0, 60),
    weights=st.tuples(st.integers(1, 10), st.integers(0, 10), st.integers(0, 10)),
    seed=st.integers(0, 2**32),
)
def test_split_property_sizes_sum_and_disjoint(n_pos, n_neg, weights, seed):
    data = make_reviews(n_pos, n_neg)
    fractions = [w / sum(weights) for w in weights]
    try:
        splits = split_reviews(data, fractions, seed=seed)
    except RlhfLabError:
        # Only allowed when some non-zero part would be empty.
        assert any(f > 0 and s == 0 for f, s in zip(fractions, split_sizes(len(data), fractions)))
        return
    parts = [splits.train, splits.validation, splits.test]
    assert [len(p) for p in parts] == split_sizes(len(data), fractions)
    texts = [r.text for p in parts for r in p]
    assert len(texts) == len(set(texts)) == len(data)
    assert set(texts) == {r.text for r in data}
    # Stratified: each part's positives are within one of its proportional share.
    for part in parts:
        if data:
            assert abs(positives(part) - len(part) * n_pos / len(data)) <= 1
