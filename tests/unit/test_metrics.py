"""Classification and pairwise metrics against hand-computed values, and their tables."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.errors import RlhfLabError
from rlhflab.eval.metrics import (
    classification_metrics,
    confusion_matrix,
    format_classification_table,
    format_confusion,
    pairwise_metrics,
)

Y_TRUE = [1, 1, 0, 0, 1]
Y_PRED = [1, 0, 0, 1, 1]


def test_confusion_matrix_layout_rows_true_columns_predicted():
    # true 0: predicted 0 once (index 2), 1 once (index 3); true 1: predicted 0 once, 1 twice.
    assert confusion_matrix(Y_TRUE, Y_PRED) == [[1, 1], [1, 2]]
    assert confusion_matrix([0], [1]) == [[0, 1], [0, 0]]  # row = true 0, column = predicted 1


def test_classification_metrics_hand_computed():
    m = classification_metrics(Y_TRUE, Y_PRED)
    # class 1: tp 2, predicted 3, actual 3 -> P = R = F1 = 2/3
    # class 0: tp 1, predicted 2, actual 2 -> P = R = F1 = 1/2
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision_positive"] == pytest.approx(2 / 3)
    assert m["recall_positive"] == pytest.approx(2 / 3)
    assert m["f1_positive"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["recall"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["f1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["n"] == 5


def test_unequal_precision_and_recall():
    # true  1 1 1 1 0 0
    # pred  1 0 0 0 0 1  -> matrix [[1, 1], [3, 1]]
    m = classification_metrics([1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 1])
    assert m["confusion_matrix"] == [[1, 1], [3, 1]]
    p1, r1 = 1 / 2, 1 / 4
    p0, r0 = 1 / 4, 1 / 2
    f1_1, f1_0 = 2 * p1 * r1 / (p1 + r1), 2 * p0 * r0 / (p0 + r0)
    assert m["precision_positive"] == pytest.approx(p1)
    assert m["recall_positive"] == pytest.approx(r1)
    assert m["f1_positive"] == pytest.approx(f1_1)
    assert m["precision"] == pytest.approx((p0 + p1) / 2)
    assert m["recall"] == pytest.approx((r0 + r1) / 2)
    assert m["f1"] == pytest.approx((f1_0 + f1_1) / 2)  # mean of per-class F1s
    assert m["accuracy"] == pytest.approx(2 / 6)


def test_confusion_counts_give_accuracy_precision_recall_f1():
    # A published confusion matrix (test): rows true 0/1, columns predicted 0/1 -> accuracy 0.905.
    y_true = [0] * 200 + [1] * 200
    y_pred = [0] * 179 + [1] * 21 + [0] * 17 + [1] * 183
    m = classification_metrics(y_true, y_pred)
    assert m["confusion_matrix"] == [[179, 21], [17, 183]]
    for key in ("accuracy", "precision", "recall", "f1"):
        assert round(m[key], 3) == 0.905


def test_perfect_predictions():
    m = classification_metrics([0, 1, 1, 0], [0, 1, 1, 0])
    assert m["confusion_matrix"] == [[2, 0], [0, 2]]
    for key in ("accuracy", "precision", "recall", "f1", "precision_positive", "recall_positive", "f1_positive"):
        assert m[key] == 1.0


def test_all_wrong_predictions():
    m = classification_metrics([0, 1, 1, 0], [1, 0, 0, 1])
    assert m["confusion_matrix"] == [[0, 2], [2, 0]]
    for key in ("accuracy", "precision", "recall", "f1", "precision_positive", "recall_positive", "f1_positive"):
        assert m[key] == 0.0


def test_zero_over_zero_is_zero_not_nan():
    # Only negatives, all predicted negative: the positive class is never present nor predicted.
    m = classification_metrics([0, 0, 0], [0, 0, 0])
    assert m["accuracy"] == 1.0
    assert m["precision_positive"] == 0.0 and m["recall_positive"] == 0.0 and m["f1_positive"] == 0.0
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    # Positives present, never predicted: positive precision is 0/0, recall 0/2.
    m = classification_metrics([1, 1], [0, 0])
    assert m["precision_positive"] == 0.0 and m["recall_positive"] == 0.0 and m["f1"] == 0.0


def test_accepts_numpy_bools_and_float_labels():
    m = classification_metrics(np.array(Y_TRUE), np.array(Y_PRED, dtype=np.int64))
    assert m["confusion_matrix"] == [[1, 1], [1, 2]] and m["n"] == 5
    assert confusion_matrix([True, False], [1.0, 0.0]) == [[1, 0], [0, 1]]
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


@pytest.mark.parametrize(
    "y_true, y_pred, words",
    [
        ([1, 0], [1], "same length, got 2 and 1"),
        ([], [], "empty"),
        ([1, 2], [1, 0], "y_true must hold only 0/1 labels"),
        ([1, 0], [1, "1"], "y_pred must hold only 0/1 labels"),
        ([1, 0], [1, "1"], "item 1 is '1'"),
        ([1, 0], [1, 0.5], "item 1 is 0.5"),
        ([1, None], [1, 0], "item 1 is None"),
        ("10", [1, 0], "y_true must be a sequence"),
    ],
)
def test_classification_errors(y_true, y_pred, words):
    with pytest.raises(RlhfLabError) as info:
        classification_metrics(y_true, y_pred)
    assert words in str(info.value)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=60))
def test_property_accuracy_is_trace_over_n(rows):
    y_true, y_pred = [t for t, _ in rows], [p for _, p in rows]
    m = classification_metrics(y_true, y_pred)
    matrix = m["confusion_matrix"]
    assert sum(map(sum, matrix)) == m["n"] == len(rows)
    assert m["accuracy"] == pytest.approx((matrix[0][0] + matrix[1][1]) / m["n"])
    for key in ("precision", "recall", "f1", "precision_positive", "recall_positive", "f1_positive"):
        assert 0.0 <= m[key] <= 1.0


# --- pairwise --------------------------------------------------------------------------


def test_pairwise_with_ties():
    m = pairwise_metrics([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.5, 0.0])
    # wins: 1, tie 0.5, loss 0, win 1 -> 2.5 / 4; margins 1, 0, -1, 3 -> mean 0.75
    assert m == {"pairwise_accuracy": pytest.approx(0.625), "mean_margin": pytest.approx(0.75), "n": 4}


def test_pairwise_all_ties_and_numpy_input():
    m = pairwise_metrics(np.zeros(3, dtype=np.float32), np.zeros(3))
    assert m["pairwise_accuracy"] == 0.5 and m["mean_margin"] == 0.0 and m["n"] == 3


@pytest.mark.parametrize(
    "chosen, rejected, words",
    [
        ([1.0], [1.0, 2.0], "same length"),
        ([], [], "empty"),
        ([float("nan")], [0.0], "chosen_scores must hold finite numbers"),
        ([0.0], [float("inf")], "rejected_scores must hold finite numbers"),
        ([0.0], ["1"], "item 0 is '1'"),
    ],
)
def test_pairwise_errors(chosen, rejected, words):
    with pytest.raises(RlhfLabError) as info:
        pairwise_metrics(chosen, rejected)
    assert words in str(info.value)


# --- formatting ------------------------------------------------------------------------


def test_format_classification_table_orders_splits_and_rounds():
    test = classification_metrics(Y_TRUE, Y_PRED)
    train = classification_metrics([0, 1], [0, 1])
    text = format_classification_table({"test": test, "train": train})
    lines = text.splitlines()
    assert all(word in lines[0] for word in ("accuracy", "precision", "recall", "f1"))
    assert lines[2].startswith("| train") and lines[3].startswith("| test")
    assert "validation" not in text
    assert "0.600" in lines[3] and "0.583" in lines[3] and "1.000" in lines[2]


def test_format_classification_table_errors():
    with pytest.raises(RlhfLabError, match="empty"):
        format_classification_table({})
    with pytest.raises(RlhfLabError, match="the test metrics lack f1"):
        format_classification_table({"test": {"accuracy": 1, "precision": 1, "recall": 1}})


def test_format_confusion_seed_layout():
    text = format_confusion([[179, 21], [17, 183]])
    assert "rows = true" in text and "columns = predicted" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert [cell.strip() for cell in rows[0].strip("|").split("|")][1:] == ["0", "1"]
    assert [cell.strip() for cell in rows[2].strip("|").split("|")] == ["0", "179", "21"]
    assert [cell.strip() for cell in rows[3].strip("|").split("|")] == ["1", "17", "183"]


def test_format_confusion_rejects_non_2x2():
    with pytest.raises(RlhfLabError, match="2x2"):
        format_confusion([[1, 2, 3], [4, 5, 6]])


def test_metrics_module_does_not_import_torch():
    code = "import sys, rlhflab.eval.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
