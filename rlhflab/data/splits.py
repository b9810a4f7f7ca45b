"""Seeded, class-balanced sampling and stratified train/validation/test splits."""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlhflab.data.records import Review
from rlhflab.errors import RlhfLabError

PARTS = ("train", "validation", "test")


@dataclass(frozen=True)
class Splits:
    """The three parts of a dataset; validation and test may be empty."""

    train: list[Review]
    validation: list[Review]
    test: list[Review]
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> rows the reader did not use


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_seed(seed: object) -> int:
    # Only ints: random.Random hashes some other seed types, which varies between processes.
    if not _is_int(seed):
        raise RlhfLabError(
            f"seed must be an integer, got {seed!r}. Set seed to a whole number like 0."
        )
    return int(seed)


def balanced_sample(reviews: Sequence[Review], per_class: int | None, seed: int) -> list[Review]:
    """`per_class` positives and `per_class` negatives, drawn without replacement and shuffled;
    per_class=None keeps every review (shuffled)."""
    rng = random.Random(_check_seed(seed))
    if per_class is None:
        chosen = list(reviews)
    else:
        if not _is_int(per_class) or per_class < 1:
            raise RlhfLabError(
                "data.per_class must be a positive whole number or null (keep all), "
                f"got {per_class!r}."
            )
        unlabelled = sum(r.label is None for r in reviews)
        if unlabelled:
            raise RlhfLabError(
                f"balanced sampling needs labelled reviews, but {unlabelled} of {len(reviews)} "
                "have no label. Load labelled data, or set data.per_class to null to keep all "
                "reviews."
            )
        positive = [r for r in reviews if r.label == 1]
        negative = [r for r in reviews if r.label == 0]
        for kind, members in (("positive", positive), ("negative", negative)):
            if not members:
                raise RlhfLabError(
                    f"the reviews hold no {kind} examples ({len(positive)} positive, "
                    f"{len(negative)} negative), so they cannot be balanced. Check the source's "
                    "labels and data.label_column, or set data.per_class to null."
                )
        if min(len(positive), len(negative)) < per_class:
            raise RlhfLabError(
                f"data.per_class={per_class} needs {per_class} positive and {per_class} negative "
                f"reviews, but only {len(positive)} positive and {len(negative)} negative are "
                f"available. Set data.per_class to at most {min(len(positive), len(negative))}."
            )
        chosen = rng.sample(positive, per_class) + rng.sample(negative, per_class)
    rng.shuffle(chosen)
    return chosen


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    is_list = isinstance(fractions, Sequence) and not isinstance(fractions, str)
    values = list(fractions) if is_list else []
    ok = (
        len(values) == 3
        and all(
            isinstance(f, numbers.Real) and not isinstance(f, bool) and math.isfinite(f) and f >= 0
            for f in values
        )
        and abs(sum(values) - 1.0) <= 1e-6
    )
    if not ok:
        raise RlhfLabError(
            f"split fractions must be three numbers >= 0 (train, validation, test) that sum to 1, "
            f"got {fractions!r}. Use e.g. [0.6, 0.2, 0.2]."
        )
    if values[0] == 0:
        raise RlhfLabError(
            f"the train fraction must be above 0, got {fractions!r}. Use e.g. [0.6, 0.2, 0.2]."
        )
    return [float(f) for f in values]


def split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Round n * fractions to whole sizes that sum to n (largest remainder; ties go to the
    earlier part, so train wins)."""
    exact = [n * f for f in fractions]
    sizes = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda k: (-(exact[k] - sizes[k]), k))
    for k in by_remainder[: n - sum(sizes)]:
        sizes[k] += 1
    return sizes


def checked_sizes(n: int, fractions: list[float], noun: str, fix: str, setting: str = "data.fractions") -> list[int]:
    """Part sizes for n items; an error when a part with a positive fraction would be empty.
    `setting` names the fractions' config key, for the message."""
    if n == 0:
        raise RlhfLabError(f"there are no {noun} to split into train/validation/test. {fix}")
    sizes = split_sizes(n, fractions)
    for part, fraction, size in zip(PARTS, fractions, sizes):
        if fraction > 0 and size == 0:
            fixes = [f"use at least {math.ceil(1 / fraction - 1e-9)} {noun}"]
            if n > 1:  # with one item, a bigger share for this part leaves nothing for train
                fixes.append(f"raise the {part} fraction to at least {1 / n:.3g}")
            if part != "train":
                fixes.append(f"set it to 0 to skip {part}")
            said = fixes[0] if len(fixes) == 1 else ", ".join(fixes[:-1]) + ", or " + fixes[-1]
            raise RlhfLabError(f"the {part} split gets 0 of {n} {noun} ({setting} gives it {fraction:g}): {said}.")
    return sizes


def split_reviews(reviews: Sequence[Review], fractions: Sequence[float], seed: int) -> Splits:
    """Deterministic train/validation/test split; each part keeps the class balance."""
    fractions = _check_fractions(fractions)
    rng = random.Random(_check_seed(seed))
    n = len(reviews)
    sizes = checked_sizes(n, fractions, "reviews", "Check data.source.")

    # Stratify: shuffle each class, give each review a rank key (position / class size) and
    # merge; any prefix of the merged order then holds the classes in their overall ratio.
    groups: dict[int | None, list[Review]] = {}
    for review in reviews:
        groups.setdefault(review.label, []).append(review)
    keyed: list[tuple[float, int, Review]] = []
    # Fixed class order (labels 0, 1, then unlabelled) so the result never depends on input order
    # of classes or on hashing.
    for order, label in enumerate(sorted(groups, key=lambda lab: (lab is None, lab or 0))):
        members = groups[label]
        rng.shuffle(members)
        keyed.extend(((j + 0.5) / len(members), order, r) for j, r in enumerate(members))
    keyed.sort(key=lambda item: item[:2])
    merged = [r for _, _, r in keyed]

    parts, start = [], 0
    for size in sizes:
        part = merged[start : start + size]
        rng.shuffle(part)  # otherwise classes would alternate in a visible pattern
        parts.append(part)
        start += size
    return Splits(*parts)
