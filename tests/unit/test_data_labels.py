"""Label normalisation and text cleaning."""

import math

import numpy as np
import pytest

from rlhflab.data import clean_text, normalize_label
from rlhflab.data.labels import is_missing, normalize_labels
from rlhflab.errors import RlhfLabError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1), (0, 0), ("1", 1), ("0", 0), (True, 1), (False, 0), (1.0, 1), (0.0, 0),
        ("pos", 1), ("neg", 0), ("positive", 1), ("negative", 0), ("happy", 1), ("sad", 0),
        ("good", 1), ("bad", 0), ("yes", 1), ("no", 0),
        ("POSITIVE", 1), (" Negative\n", 0), ("  Happy ", 1), ("SAD", 0), ("Yes", 1), (" 0 ", 0),
        (np.int64(1), 1), (np.bool_(False), 0), (np.float32(1.0), 1),
    ],
)
def test_normalize_label_accepts_known_spellings(value, expected):
    assert normalize_label(value) == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, "meh", "", None, "positive-ish", float("nan"), [1]])
def test_normalize_label_rejects_others_listing_accepted_values(value):
    with pytest.raises(RlhfLabError) as err:
        normalize_label(value)
    assert "positive/negative" in str(err.value) and "happy/sad" in str(err.value)


def test_normalize_labels_maps_a_column():
    assert normalize_labels(["pos", "neg", 1, "Happy", False], "label", "x.csv") == [1, 0, 1, 1, 0]


def test_normalize_labels_reports_all_unknown_values_once():
    values = ["pos", "meh", "neutral", "meh", "2", "3", "4", "5", "neg"]
    with pytest.raises(RlhfLabError) as err:
        normalize_labels(values, "stars", "reviews.csv")
    message = str(err.value)
    assert "'stars'" in message and "reviews.csv" in message
    for shown in ("'meh'", "'neutral'", "'2'", "'3'", "'4'"):
        assert shown in message
    assert "'5'" not in message and "and 1 more" in message  # at most 5 listed
    assert message.count("'meh'") == 1


def test_normalize_labels_reports_missing_values():
    with pytest.raises(RlhfLabError, match=r"2 of the 3 values in label column 'label' of data.json are empty \(first at row index 1\)"):
        normalize_labels([1, None, float("nan")], "label", "data.json")


@pytest.mark.parametrize("value", [None, float("nan"), np.float64("nan"), "", "   ", math.nan])
def test_is_missing(value):
    assert is_missing(value)


@pytest.mark.parametrize("value", [0, 0.0, "0", False, "x"])
def test_is_not_missing(value):
    assert not is_missing(value)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Great film.<br /><br />Loved it.", "Great film. Loved it."),
        ("a<br/>b", "a b"),
        ("a<br>b", "a b"),
        ("a<BR />b<Br>c<bR/>d", "a b c d"),
        ("a<br / >b", "a b"),
        ("  line one\nline two\t\t end  ", "line one line two end"),
        ("\n\n", ""),
        ("<br /><br />", ""),
        ("no change", "no change"),
    ],
)
def test_clean_text(raw, clean):
    assert clean_text(raw) == clean
