"""Classification and pairwise-preference metrics, and their text tables (pure Python).

Inputs may be lists, tuples, numpy arrays or torch tensors (anything with `tolist()`);
nothing here imports torch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from rlhflab.errors import RlhfLabError

SPLIT_ORDER = ("train", "validation", "test")
TABLE_METRICS = ("accuracy", "precision", "recall", "f1")


def _values(values: object, name: str) -> list:
    """`values` as a plain list (numpy/torch via tolist)."""
    if hasattr(values, "tolist") and not isinstance(values, (str, bytes)):
        values = values.tolist()  # type: ignore[union-attr]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise RlhfLabError(f"{name} must be a sequence of values, got {values!r}.")
    return list(values)  # type: ignore[call-overload]


def _labels(values: object, name: str) -> list[int]:
    """0/1 labels as ints; bools and 0.0/1.0 are accepted, anything else is an error."""
    out: list[int] = []
    for i, v in enumerate(_values(values, name)):
        if isinstance(v, numbers.Real) and v in (0, 1):  # True/False and 1.0/0.0 too
            out.append(int(v))
        else:
            raise RlhfLabError(
                f"{name} must hold only 0/1 labels (1 = positive, 0 = negative), but item {i} "
                f"is {v!r}."
            )
    return out


def _pair_of(a: list, b: list, names: tuple[str, str]) -> int:
    if len(a) != len(b):
        raise RlhfLabError(
            f"{names[0]} and {names[1]} must have the same length, got {len(a)} and {len(b)}."
        )
    if not a:
        raise RlhfLabError(f"{names[0]} and {names[1]} are empty: there is nothing to score.")
    return len(a)


def _div(num: float, den: float) -> float:
    return num / den if den else 0.0  # 0/0 (a class never predicted or never present) -> 0.0


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int]) -> list[list[int]]:
    """2x2 counts: rows = true label 0/1, columns = predicted label 0/1."""
    true = _labels(y_true, "y_true")
    pred = _labels(y_pred, "y_pred")
    _pair_of(true, pred, ("y_true", "y_pred"))
    matrix = [[0, 0], [0, 0]]
    for t, p in zip(true, pred):
        matrix[t][p] += 1
    return matrix


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict:
    """Accuracy; precision/recall/F1 macro-averaged over classes 0 and 1 (F1 is the mean of
    the per-class F1s) and for the positive class alone; the confusion matrix; n."""
    matrix = confusion_matrix(y_true, y_pred)
    n = sum(map(sum, matrix))
    per_class = []
    for c in (0, 1):
        tp = matrix[c][c]
        predicted = matrix[0][c] + matrix[1][c]
        actual = matrix[c][0] + matrix[c][1]
        precision, recall = _div(tp, predicted), _div(tp, actual)
        per_class.append((precision, recall, _div(2 * precision * recall, precision + recall)))
    return {
        "accuracy": (matrix[0][0] + matrix[1][1]) / n,
        "precision": (per_class[0][0] + per_class[1][0]) / 2,
        "recall": (per_class[0][1] + per_class[1][1]) / 2,
        "f1": (per_class[0][2] + per_class[1][2]) / 2,
        "precision_positive": per_class[1][0],
        "recall_positive": per_class[1][1],
        "f1_positive": per_class[1][2],
        "confusion_matrix": matrix,
        "n": n,
    }


def _scores(values: object, name: str) -> list[float]:
    out: list[float] = []
    for i, v in enumerate(_values(values, name)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise RlhfLabError(f"{name} must hold finite numbers, but item {i} is {v!r}.")
        out.append(float(v))
    return out


def pairwise_metrics(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> dict:
    """How often a reward model scores the chosen response above the rejected one (ties count
    half), and the mean score gap chosen - rejected."""
    chosen = _scores(chosen_scores, "chosen_scores")
    rejected = _scores(rejected_scores, "rejected_scores")
    n = _pair_of(chosen, rejected, ("chosen_scores", "rejected_scores"))
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    return {
        "pairwise_accuracy": wins / n,
        "mean_margin": math.fsum(c - r for c, r in zip(chosen, rejected)) / n,
        "n": n,
    }


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded so it also reads well as plain text."""
    # At least 3 wide: some Markdown renderers need "---" in the delimiter row.
    widths = [max(3, *(len(r[k]) for r in [header, *rows])) for k in range(len(header))]
    lines = [header, ["-" * w for w in widths], *rows]
    return "\n".join(
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths)) + " |" for line in lines
    )


def format_classification_table(metrics_by_split: Mapping[str, Mapping]) -> str:
    """Accuracy, precision, recall and F1 (3 decimals) per split: train, validation, test
    (those present, in that order; any other split names follow)."""
    if not metrics_by_split:
        raise RlhfLabError("there are no metrics to tabulate: metrics_by_split is empty.")
    names = [s for s in SPLIT_ORDER if s in metrics_by_split]
    names += [s for s in metrics_by_split if s not in SPLIT_ORDER]
    rows = []
    for name in names:
        metrics = metrics_by_split[name]
        missing = [m for m in TABLE_METRICS if m not in metrics]
        if missing:
            raise RlhfLabError(
                f"the {name} metrics lack {', '.join(missing)}; pass the dict that "
                "classification_metrics returns."
            )
        rows.append([name, *(f"{float(metrics[m]):.3f}" for m in TABLE_METRICS)])
    return _markdown(["split", *TABLE_METRICS], rows)


def format_confusion(matrix: Sequence[Sequence[int]]) -> str:
    """The 2x2 confusion matrix as a table: rows = true label, columns = predicted label."""
    cells = [_values(row, "confusion matrix row") for row in _values(matrix, "confusion matrix")]
    if len(cells) != 2 or any(len(row) != 2 for row in cells):
        raise RlhfLabError(
            f"a confusion matrix must be 2x2 (rows = true 0/1, columns = predicted 0/1), got "
            f"{matrix!r}."
        )
    table = _markdown(
        ["true \\ predicted", "0", "1"],
        [[str(label), *(str(v) for v in cells[label])] for label in (0, 1)],
    )
    return (
        "Confusion matrix: rows = true label, columns = predicted label "
        "(1 = positive, 0 = negative)\n\n" + table
    )
