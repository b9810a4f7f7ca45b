"""Texts with a reward each (`(text, reward)` samples): what offline RL (ILQL) learns from."""

from __future__ import annotations

import math
import numbers
import struct
from dataclasses import dataclass, field

from rlhflab.data.labels import is_missing
from rlhflab.data.sources import TEXT_COLUMNS, _pick_column, cell_text, read_table
from rlhflab.errors import RlhfLabError

REWARD_COLUMNS = ("reward", "score", "return", "label")
FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def reward_problem(value: float) -> str | None:
    """Why `value` cannot be a reward (None when it can). Rewards are trained on as float32: a value
    finite in float64 but beyond float32 (1e39) would become inf there and every loss NaN."""
    if not math.isfinite(value):
        return "rewards must be finite numbers"
    try:
        struct.pack("<f", value)  # C's cast to float: OverflowError exactly when the value would round to ±inf
    except OverflowError:
        return (f"beyond the ±{FLOAT32_MAX:.4g} of the 32-bit floats rewards are trained in; rescale the rewards "
                f"(ILQL normalises them over the training texts, so dividing all of them by one number changes nothing)")
    return None


@dataclass
class ScoredTexts:
    texts: list[str]
    rewards: list[float]
    left_out: dict[str, int] = field(default_factory=dict)  # rows the reader could not use, by reason


def load_scored_texts(source: str, *, text_column: str | None = None, reward_column: str | None = None) -> ScoredTexts:
    """Rows of a .jsonl/.csv/.json/.parquet file (or hf:<id>) with a text and a numeric reward.
    Rows with empty text or no reward are left out and counted; a reward that is not a number
    finite in float32 (`reward_problem`) is an RlhfLabError naming its row."""
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
        except OverflowError:  # an integer too large even for float64, so beyond float32 too
            value = 2 * FLOAT32_MAX
        except ValueError:
            raise RlhfLabError(f"{where} is {raw_reward!r}, not a number.") from None
        problem = reward_problem(value)
        if problem:
            raise RlhfLabError(f"{where} is {raw_reward!r:.40}: {problem}.")
        texts.append(text)
        rewards.append(value)
    if not texts:
        raise RlhfLabError(f"{table.name} has no row with both a text and a reward (rows with an empty text: {empty}, "
                           f"without a reward: {missing}).")
    left_out = {**table.dropped, "rows with empty text": empty, "rows without a reward": missing}
    return ScoredTexts(texts, rewards, {k: v for k, v in left_out.items() if v})
