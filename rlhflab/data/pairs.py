"""Preference pairs (prompt, chosen, rejected) for a Bradley–Terry reward model.

`load_pairs` reads any source `read_table` understands; `split_pairs` makes a seeded
train/validation/test split of them.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from rlhflab.data.labels import clean_text, is_missing
from rlhflab.data.sources import _pick_column, cell_text, read_table
from rlhflab.data.splits import _check_fractions, _check_seed, checked_sizes
from rlhflab.data.tables import Table
from rlhflab.errors import RlhfLabError

# Column names tried, in order (then case-insensitively), when a *_column argument is None.
PROMPT_COLUMNS = ("prompt", "question", "query", "instruction")
CHOSEN_COLUMNS = ("chosen", "preferred", "better", "response_chosen")
REJECTED_COLUMNS = ("rejected", "dispreferred", "worse", "response_rejected")
MARGIN_COLUMNS = ("margin",)


@dataclass(frozen=True)
class Pair:
    """One human preference: `chosen` is the better response to `prompt` than `rejected`.
    `margin` is how much better (0.0 when the data gives no margin); `where` names the row it
    came from (e.g. "line 7 of pairs.jsonl"), for error messages only."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    where: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class PairSplits:
    """The three parts of a pair dataset; validation and test may be empty."""

    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]


def load_pairs(
    source: str,
    *,
    prompt_column: str | None = None,
    chosen_column: str | None = None,
    rejected_column: str | None = None,
    margin_column: str | None = None,
    split: str = "train",
    section: str = "reward.pairs",
) -> list[Pair]:
    """Load preference pairs from a bundled name, `hf:<id>`, or a .csv/.jsonl/.json/.parquet
    file. Columns are detected by name when not given; texts are cleaned like reviews.

    Chosen/rejected cells may also be chat conversations (lists of {"role", "content"}
    messages, as in trl-lib/ultrafeedback_binarized): the last message is the response, and
    when there is no prompt column the earlier messages of the chosen side form the prompt.
    `section` is the config section of these settings (reward.pairs, dpo.pairs), for messages."""
    table = read_table(str(source), split, f"{section}.source")
    return table_to_pairs(table, prompt_column, chosen_column, rejected_column, margin_column, section)


def table_to_pairs(
    table: Table,
    prompt_column: str | None = None,
    chosen_column: str | None = None,
    rejected_column: str | None = None,
    margin_column: str | None = None,
    section: str = "reward.pairs",
) -> list[Pair]:
    """The rows of `table` as validated, cleaned `Pair`s (one per row, in order)."""
    if len(table) == 0:
        raise RlhfLabError(
            f"{table.name} contains no preference pairs: it has no rows. Point the source at a "
            "file with one row per pair (prompt, chosen, rejected)."
        )
    prompt_col = _pick_column(table, prompt_column, PROMPT_COLUMNS, "prompt", section)
    chosen_col = _pick_column(table, chosen_column, CHOSEN_COLUMNS, "chosen", section)
    rejected_col = _pick_column(table, rejected_column, REJECTED_COLUMNS, "rejected", section)
    margin_col = _pick_column(table, margin_column, MARGIN_COLUMNS, "margin", section)
    for col, kind, candidates in (
        (chosen_col, "chosen", CHOSEN_COLUMNS),
        (rejected_col, "rejected", REJECTED_COLUMNS),
    ):
        if col is None:
            raise RlhfLabError(
                f"{table.name} has no {kind} column: looked for {', '.join(candidates)}; columns "
                f"are: {', '.join(table.columns)}. Set {section}.{kind}_column to the column holding the "
                f"{'preferred' if kind == 'chosen' else 'dispreferred'} responses."
            )
    if chosen_col == rejected_col:
        raise RlhfLabError(
            f"{section}.chosen_column and rejected_column are both {chosen_col!r} in {table.name}; a pair "
            "needs two different columns. Set them to the preferred and the dispreferred column."
        )

    n = len(table)
    chosen, chosen_context = _responses(table, chosen_col)
    rejected, _ = _responses(table, rejected_col)
    if prompt_col is not None:
        prompts = [_text(v, table, i, prompt_col) for i, v in enumerate(table.data[prompt_col])]
    else:  # no prompt column: conversations carry their own; plain texts get an empty prompt
        prompts = [context or "" for context in chosen_context]

    for col, texts in ((chosen_col, chosen), (rejected_col, rejected)):
        empty = [i for i in range(n) if not texts[i]]
        if empty:
            raise RlhfLabError(
                f"{_rows(len(empty))} of {table.name} {'has' if len(empty) == 1 else 'have'} an "
                f"empty {col!r} text; the first is at {table.where(empty[0])}. Every pair needs "
                "both a chosen and a rejected response: fill them in or remove those rows."
            )
    same = [i for i in range(n) if chosen[i] == rejected[i]]
    if same:
        raise RlhfLabError(
            f"{_rows(len(same))} of {table.name} {'has' if len(same) == 1 else 'have'} the same "
            f"text in {chosen_col!r} and {rejected_col!r}; the first is at {table.where(same[0])}. "
            "A pair must differ (identical responses teach nothing): remove "
            "those rows."
        )

    margins = [0.0] * n
    if margin_col is not None:
        raw = table.data[margin_col]
        numbers_ = [_number(v) for v in raw]
        bad = [i for i in range(n) if numbers_[i] is None or not math.isfinite(numbers_[i])]
        if bad:
            raise _bad_margin(table, margin_col, raw[bad[0]], numbers_[bad[0]], bad)
        margins = numbers_  # type: ignore[assignment]  # no None left
    return [Pair(prompts[i], chosen[i], rejected[i], margins[i], f"{table.where(i)} of {table.name}") for i in range(n)]


def split_pairs(pairs: Sequence[Pair], fractions: Sequence[float], seed: int, section: str = "reward.pairs") -> PairSplits:
    """Deterministic train/validation/test split (shuffle by `seed`, then cut by
    `split_sizes`); fractions are checked exactly as `split_reviews` checks them."""
    fractions = _check_fractions(fractions)
    rng = random.Random(_check_seed(seed))
    sizes = checked_sizes(len(pairs), fractions, "preference pairs", f"Check {section}.source.", f"{section}.fractions")
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    parts, start = [], 0
    for size in sizes:
        parts.append(shuffled[start : start + size])
        start += size
    return PairSplits(*parts)


# --- helpers ---------------------------------------------------------------------------


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _as_list(value: object) -> list | None:
    """A list/tuple, or a numpy array (pandas gives those for Parquet list columns), as a
    plain list; anything else -> None."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if type(value).__name__ == "ndarray":
        return list(value)  # type: ignore[call-overload]
    return None


def _is_conversation(items: list) -> bool:
    return bool(items) and all(isinstance(m, dict) and "content" in m for m in items)


def _text(value: object, table: Table, index: int, column: str) -> str:
    """One cell as cleaned text ("" when missing); conversations join their messages."""
    if is_missing(value):
        return ""
    items = _as_list(value)
    if items is not None:
        if not _is_conversation(items):
            raise _not_text(value, table, index, column)
        return clean_text(" ".join(_text(m["content"], table, index, column) for m in items))
    if isinstance(value, dict):
        raise _not_text(value, table, index, column)
    return cell_text(value, table, index, column)


def _responses(table: Table, column: str) -> tuple[list[str], list[str | None]]:
    """Each row's response text, and for conversation cells the text of the messages before
    the last one (the prompt); None where the cell is plain text."""
    texts: list[str] = []
    contexts: list[str | None] = []
    for i, value in enumerate(table.data[column]):
        items = None if is_missing(value) else _as_list(value)
        if items is not None and _is_conversation(items):
            texts.append(_text(items[-1]["content"], table, i, column))
            contexts.append(_text(items[:-1], table, i, column) if len(items) > 1 else "")
        else:
            texts.append(_text(value, table, i, column))
            contexts.append(None)
    return texts, contexts


def _not_text(value: object, table: Table, index: int, column: str) -> RlhfLabError:
    kind = "an object" if isinstance(value, dict) else "a list"
    return RlhfLabError(
        f"column {column!r} of {table.name} holds {kind}, not text, at {table.where(index)}. "
        "Point the column at plain text, or at a conversation (a list of {\"role\": ..., "
        "\"content\": ...} messages)."
    )


def _number(value: object) -> float | None:
    """A margin cell as a float (numbers and numeric strings), or None when it is not one."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:  # numpy scalars -> plain Python values
            value = value.item()  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float (JSON allows any size)
            return math.inf
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _bad_margin(
    table: Table, column: str, value: object, number: float | None, bad: list[int]
) -> RlhfLabError:
    if is_missing(value):  # None, "", NaN: a blank cell rather than a bad number
        problem = "an empty margin"
    elif number is None:
        problem = f"{value!r}, which is not a number"
    else:
        problem = f"{value!r}, which is not finite"
    return RlhfLabError(
        f"margin column {column!r} of {table.name} has {len(bad)} bad "
        f"{'value' if len(bad) == 1 else 'values'}; the first is {problem}, at "
        f"{table.where(bad[0])}. Every margin must be a finite number (e.g. 1.5): fix those "
        "rows, or set margin_column to the right column."
    )
