"""The three kinds of task, what raters see of them, and what a valid answer to each is.

    label   one text; the answer is one label of the task's set: {"label": "good"}
    pairs   two responses to one prompt; the answer is the better one: {"choice": "a"} or "b"
    rating  one response; the answer is a score on every scale: {"positivity": 4, "sense": 3}
"""

from __future__ import annotations

import numbers
from typing import Any

from rlhflab.errors import RlhfLabError

DEFAULT_LABELS = ("good", "bad")
CHOICES = ("a", "b")
# Positivity and sense (coherence), each 1-5, as in the Shakespeare RLHF exercise of the
# Deep Learning Curriculum (Hilton, topic 7).
SCALES = (
    {"name": "positivity", "min": 1, "max": 5, "low": "very negative", "high": "very positive"},
    {"name": "sense", "min": 1, "max": 5, "low": "makes no sense", "high": "makes perfect sense"},
)
QUESTIONS = {
    "label": "Is this text good or bad?",
    "pairs": "Which response is better?",
    "rating": "How positive is this text, and how much sense does it make?",
}


def label_config(labels: list[str] | tuple[str, ...] = DEFAULT_LABELS, question: str | None = None) -> dict[str, Any]:
    labels = [str(label).strip() for label in labels]
    if len(labels) < 2 or any(not label for label in labels):
        raise RlhfLabError(f"A label task needs two or more non-empty labels, got {labels!r}. Pass e.g. --labels good bad.")
    if len(set(label.lower() for label in labels)) != len(labels):
        raise RlhfLabError(f"The labels {labels!r} repeat a name. Give each label once.")
    if len(labels) > 9:
        raise RlhfLabError(f"At most 9 labels (one number key each), got {len(labels)}.")
    return {"question": question or QUESTIONS["label"], "labels": labels}


def pairs_config(question: str | None = None) -> dict[str, Any]:
    return {"question": question or QUESTIONS["pairs"], "choices": list(CHOICES)}


def rating_config(question: str | None = None) -> dict[str, Any]:
    return {"question": question or QUESTIONS["rating"], "scales": [dict(s) for s in SCALES]}


def validate_answer(kind: str, config: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The answer as stored, or RlhfLabError naming what is wrong with `payload`."""
    if not isinstance(payload, dict):
        raise RlhfLabError("An answer must be a JSON object.")
    if kind == "label":
        _only(payload, {"label"})
        label = payload.get("label")
        if label not in config["labels"]:
            raise RlhfLabError(f"label must be one of {', '.join(config['labels'])}; got {label!r}.")
        return {"label": label}
    if kind == "pairs":
        _only(payload, {"choice"})
        choice = payload.get("choice")
        if choice not in CHOICES:
            raise RlhfLabError(f"choice must be 'a' or 'b' (the better response); got {choice!r}.")
        return {"choice": choice}
    if kind == "rating":
        names = [s["name"] for s in config["scales"]]
        _only(payload, set(names))
        value = {}
        for scale in config["scales"]:
            score = payload.get(scale["name"])
            whole = isinstance(score, numbers.Integral) and not isinstance(score, bool)
            if not whole or not scale["min"] <= score <= scale["max"]:
                raise RlhfLabError(f"{scale['name']} must be a whole number from {scale['min']} to {scale['max']}; got {score!r}.")
            value[scale["name"]] = int(score)
        return value
    raise RlhfLabError(f"Unknown task kind {kind!r}.")


def _only(payload: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(payload) - allowed)
    if extra:
        raise RlhfLabError(f"Unexpected answer field(s) {', '.join(extra)}; expected {', '.join(sorted(allowed))}.")
