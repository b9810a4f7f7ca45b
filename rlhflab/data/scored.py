"""Texts with a reward each (`(text, reward)` samples): what offline RL (ILQL) learns from."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from rlhflab.data.labels import is_missing
from rlhflab.data.sources import TEXT_COLUMNS, _pick_column, cell_text, read_table
from rlhflab.errors import RlhfLabError

REWARD_COLUMNS = ("reward", "score", "return", "label")


@dataclass
class ScoredTexts:
    texts: list[str]
    rewards: list[float]
    left_out: dict[str, int] = field(default_factory=dict)  # rows the reader could not use, by reason


def load_scored_texts(source: str, *, text_column: str | None = None, reward_column: str | None = None) -> ScoredTexts:
    """Rows of a .jsonl/.csv/.json/.parquet file (or hf:<id>) with a text and a numeric reward.
    Rows with empty text or no reward are left out and counted; a reward that is not a finite
    number is an RlhfLabError naming its row."""
    table = read_table(str(source), "train", "ilql.samples")
    text_col = _pick_column(table, text_column, TEXT_COLUMNS, "text", "ilql")
    reward_col = _pick_column(table, reward_column, REWARD_COLUMNS, "reward", "ilql")
    if text_col is None or reward_col is None:
        kind, tried = ("text", TEXT_COLUMNS) if text_col is None else ("reward", REWARD_COLUMNS)
        raise RlhfLabError(f"{table.name} has no {kind} column: looked for {', '.join(tried)}; columns are: "
                           f"{', '.join(table.columns)}. Set ilql.{kind}_column.")
    texts, rewards, empty, missing = [], [], 0, 0
    for i, (raw_text, raw_reward) in enumerate(zip(table.data[text_col], table.data[reward_col])):
        text = cell_text(raw_text, table, i, text_col)
        if not text:
            empty += 1
            continue
        if is_missing(raw_reward):
            missing += 1
            continue
        where = f"The reward ({reward_col!r}) at {table.where(i)} of {table.name}"
        if isinstance(raw_reward, bool) or not isinstance(raw_reward, (numbers.Real, str)):
            raise RlhfLabError(f"{where} is {raw_reward!r}, not a number.")
        try:
            value = float(raw_reward)
        except ValueError:
            raise RlhfLabError(f"{where} is {raw_reward!r}, not a number.") from None
        if not math.isfinite(value):
            raise RlhfLabError(f"{where} is {value}; rewards must be finite numbers.")
        texts.append(text)
        rewards.append(value)
    if not texts:
        raise RlhfLabError(f"{table.name} has no row with both a text and a reward (rows with an empty text: {empty}, "
                           f"without a reward: {missing}).")
    left_out = {**table.dropped, "rows with empty text": empty, "rows without a reward": missing}
    return ScoredTexts(texts, rewards, {k: v for k, v in left_out.items() if v})
