"""Turning the many spellings of sentiment labels into 1/0, and cleaning review text."""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from collections.abc import Iterable
from html.parser import HTMLParser

import regex

from rlhflab.errors import RlhfLabError

# Spellings seen in the wild (IMDB, Kaggle CSVs, the Shakespeare set) -> 1 positive / 0 negative.
_LABEL_WORDS = {
    "1": 1, "0": 0,
    "1.0": 1, "0.0": 0,
    "true": 1, "false": 0,
    "pos": 1, "neg": 0,
    "positive": 1, "negative": 0,
    "happy": 1, "sad": 0,
    "good": 1, "bad": 0,
    "yes": 1, "no": 0,
}
ACCEPTED_LABELS = (
    "1/0, True/False, 1.0/0.0, pos/neg, positive/negative, happy/sad, good/bad, yes/no "
    "(any case)"
)

# [bB][rR] rather than re.IGNORECASE: about 3x faster on the 25,000 IMDB reviews.
_BR = re.compile(r"<[bB][rR]\s*/?\s*>")


def is_missing(value: object) -> bool:
    """True for None, NaN, pandas NA and blank strings: cells that hold no value."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    # pandas' NA/NaT singletons, recognised by name so pandas need not be imported.
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(value)
    return False


def label_or_none(value: object) -> int | None:
    """The label for `value`, or None when it is not a recognised spelling."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:  # numpy scalars (np.int64, np.bool_, ...) -> plain Python values
            value = value.item()
        except (TypeError, ValueError):
            return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value) if value in (0, 1) else None
    if isinstance(value, numbers.Real):
        return int(value) if value in (0.0, 1.0) else None
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def _number(value: object) -> float | None:
    """`value` as a number when it is one (5, 3.0, " 4 "); None for words, bools and blanks."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def numeric_scale(values: Iterable[object]) -> list[str]:
    """The distinct numbers among `values`, sorted and shown as written, when any lies outside
    {0, 1}; else []. Such a set is a scale (star ratings 1-5, classes 0/1/2), so its 1 and 0
    mean "one star" or "class 0", not positive or negative."""
    found: dict[float, str] = {}
    for value in values:
        number = _number(value)
        if number is not None:
            found.setdefault(number, str(value).strip())
    if all(number in (0.0, 1.0) for number in found):
        return []
    return [found[number] for number in sorted(found)]


def scale_hint(scale: list[str]) -> str:
    """What to tell a user whose labels are the numbers `scale`."""
    return (
        f"The labels include the numbers {', '.join(scale)}: a rating scale, not sentiment "
        "polarity, so rlhflab does not guess that 1 means positive. Map them to 1/0 first "
        "(e.g. 4 and 5 -> 1, 1 and 2 -> 0, leave out the middle)."
    )


def normalize_label(value: object) -> int:
    """Map one label spelling (1/0, "pos", "Negative ", True, ...) to 1 or 0."""
    label = label_or_none(value)
    if label is None:
        raise RlhfLabError(
            f"unknown sentiment label {value!r}. Accepted labels: {ACCEPTED_LABELS}. "
            "Relabel the data or point data.label_column at the column holding them."
        )
    return label


def normalize_labels(values: Iterable[object], column: str, source: str) -> list[int]:
    """Map a whole label column to 1/0, reporting every bad value in one error."""
    values = list(values)
    missing = [i for i, v in enumerate(values) if is_missing(v)]
    if missing:
        raise RlhfLabError(
            f"{len(missing)} of the {len(values)} values in label column {column!r} of {source} "
            f"are empty (first at row index {missing[0]}). Fill in those labels or remove "
            "those rows."
        )
    # A scale is refused as a whole: its 1s and 0s would otherwise pass as polarity.
    try:
        distinct = list(dict.fromkeys(values))
    except TypeError:  # unhashable cells (lists from JSON): reported as unknown below
        distinct = values
    scale = numeric_scale(distinct)
    # Label columns hold few distinct values, so map each distinct value once.
    cache: dict[object, int | None] = {}
    labels: list[int | None] = []
    for value in values:
        try:
            if value not in cache:
                cache[value] = label_or_none(value)
            label = cache[value]
        except TypeError:  # unhashable (a list from JSON, say): no cache
            label = label_or_none(value)
        labels.append(label)
    if None in labels:
        unknown: list[str] = []
        for value, label in zip(values, labels):
            shown = repr(value)
            if label is None and shown not in unknown:
                unknown.append(shown)
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        hint = f" {scale_hint(scale)}" if scale else ""
        raise RlhfLabError(
            f"label column {column!r} of {source} has values that are not sentiment labels: "
            f"{', '.join(unknown[:5])}{more}.{hint} Accepted labels: {ACCEPTED_LABELS}. "
            "Fix those rows, or set data.label_column to the column that holds the labels."
        )
    return labels  # type: ignore[return-value]  # no None left


def clean_text(text: str) -> str:
    """Replace HTML line breaks with spaces, collapse whitespace runs, strip the ends."""
    # IMDB reviews carry literal "<br /><br />" paragraph breaks; models should not learn them.
    # split()/join collapses every whitespace run (newlines included) and strips the ends,
    # at twice the speed of re.sub(r"\s+", ...).
    return " ".join(_BR.sub(" ", text).split())


def has_text(text: str) -> bool:
    """True when `text` shows something a reader would see once HTML is read as HTML: tags,
    comments and entities alone (`<p></p>`, `<i> </i>`, `&nbsp;`, `<!-- empty -->`) show nothing,
    and neither do spaces, control or zero-width characters, the content of <script> and <style>,
    Default_Ignorable_Code_Point characters (the Hangul fillers U+3164/U+FFA0/U+115F/U+1160, the
    combining grapheme joiner U+034F, ...) or the blank Braille pattern U+2800. `a < b` and `<3` are text."""
    if "<" in text or "&" in text:
        text = _shown(text)
    # Categories Z* (separators) and C* (controls, format characters such as U+200B) show nothing.
    return any(not unicodedata.category(c).startswith(("Z", "C")) and not _BLANK.match(c) for c in text)


# Characters drawn as nothing although their category is a letter or symbol.
_BLANK = regex.compile(r"[\p{Default_Ignorable_Code_Point}\u2800]")


class _Shown(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # &nbsp; -> U+00A0, &amp; -> &
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        if self.cdata_elem not in ("script", "style"):  # set while inside <script>/<style>
            self.parts.append(data)


def _shown(text: str) -> str:
    """The character data of `text` read as HTML (tags, comments and declarations dropped)."""
    parser = _Shown()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)
