"""Policy prompts: the opening words of reviews, with a seeded random length.

A word is what Unicode's line-breaking rules (UAX #14) let a line end after: a run of
characters up to whitespace, or up to and including a script's own word mark (Tibetan tsheg,
Ethiopic wordspace: line-break class BA). In scripts written without spaces (classes ID, CJ,
SA and the aksara classes: Chinese, Japanese, Yi, Thai, Khmer, Myanmar, Javanese, Balinese,
...) each grapheme counts as a word: otherwise a "3-5 word" prompt of such a review would be the
whole review. `max_tokens` caps a prompt by tokens as well (by the policy's tokenizer when one
is given), for any text the word rule leaves long.
"""

from __future__ import annotations

import itertools
import numbers
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import regex

from rlhflab.data.records import Review
from rlhflab.errors import RlhfLabError

# From the Unicode character database (the `regex` module's, newer than Python's own), not a
# list of scripts: a character after which a line may break with no space between.
_NO_SPACE = r"[\p{lb=ID}\p{lb=CJ}\p{lb=SA}\p{lb=AK}\p{lb=AP}\p{lb=AS}]"
# A break-after mark of a script's own (not shared punctuation such as the en dash or a tab).
_MARK = r"[\p{lb=BA}--[\p{sc=Common}\p{sc=Inherited}]]"
_GAP = r"[\s\p{lb=ZW}]"  # whitespace, and the zero-width space some no-space scripts separate words with
_WORD = regex.compile(rf"(?={_NO_SPACE})\X|(?:(?!{_NO_SPACE}|{_MARK}|{_GAP}).)+{_MARK}?|{_MARK}", regex.V1 | regex.DOTALL)
# Without a tokenizer a token is taken as 4 characters, the usual average for English BPE.
CHARS_PER_TOKEN = 4
PROMPT_FILE_TYPES = (".txt", ".jsonl", ".csv", ".json")


def _is_count(n) -> bool:
    return isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1


def _words(text: str, n: int | None = None) -> list[regex.Match]:
    """The first `n` words of `text` (all with None), found lazily: a prompt reads a review's start."""
    return list(itertools.islice(_WORD.finditer(text), n))


def _join(text: str, words: list[regex.Match]) -> str:
    """The words as they read in `text`, any whitespace between two of them made one space (a
    zero-width space stays as it was)."""
    out = []
    for i, word in enumerate(words):
        if i and word.start() > words[i - 1].end():
            gap = text[words[i - 1].end():word.start()]
            out.append(" " if any(c.isspace() for c in gap) else gap)
        out.append(word.group())
    return "".join(out)


def prompt_words(text: str, n: int) -> str:
    """The first `n` words of `text` (all of it when shorter), whitespace between them made one
    space; each grapheme of a script written without spaces is a word (see the module's doc)."""
    if not _is_count(n):
        raise RlhfLabError(f"a prompt needs at least 1 word, got n={n!r}.")
    return _join(text, _words(text, n))


def cap_tokens(prompt: str, max_tokens: int, tokenizer=None) -> str:
    """`prompt` cut to at most `max_tokens` tokens of `tokenizer` (without one, CHARS_PER_TOKEN
    characters a token): whole words while at least one fits, else the first word's start."""
    if not _is_count(max_tokens):
        raise RlhfLabError(f"data.prompt_max_tokens must be a whole number >= 1, got {max_tokens!r}. Set it to e.g. 64.")
    if tokenizer is None:
        def count(s: str) -> int:
            return -(-len(s) // CHARS_PER_TOKEN)
    else:
        def count(s: str) -> int:
            return len(tokenizer(s, add_special_tokens=False)["input_ids"])
    if count(prompt) <= max_tokens:
        return prompt
    words = _words(prompt)
    # Largest number of leading words (or, for one overlong word, characters) that fits.
    keep = _largest(lambda m: count(_join(prompt, words[:m])) <= max_tokens, len(words) - 1)
    if keep:
        return _join(prompt, words[:keep])
    first = words[0].group()
    return first[: max(1, _largest(lambda k: count(first[:k]) <= max_tokens, len(first) - 1))]


def _largest(fits, upper: int) -> int:
    """The largest k in 1..upper with fits(k) (0 when none), by bisection (fits is monotone)."""
    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def make_prompts(reviews: Sequence[Review], min_words: int, max_words: int, seed: int, *,
                 max_tokens: int | None = None, tokenizer=None) -> list[str]:
    """One prompt per review: its first N words, N uniform in [min_words, max_words], then at
    most `max_tokens` tokens (data.prompt_max_tokens; None: no cap) of `tokenizer` (the policy's;
    None: CHARS_PER_TOKEN characters a token)."""
    ints = all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool)
        for v in (min_words, max_words, seed)
    )
    if not ints or not 1 <= min_words <= max_words:
        raise RlhfLabError(
            f"prompt lengths need whole numbers 1 <= min_words <= max_words (and an integer seed), "
            f"got min_words={min_words!r}, max_words={max_words!r}, seed={seed!r}. "
            "Fix the prompt word settings, e.g. min_words=2, max_words=8."
        )
    if max_tokens is not None:
        cap_tokens("", max_tokens)  # a bad setting fails before any work
    rng = random.Random(int(seed))
    # One draw per review, always, so prompt i depends only on the seed and i.
    prompts = [prompt_words(r.text, rng.randint(min_words, max_words)) for r in reviews]
    if max_tokens is None:
        return prompts
    return [cap_tokens(p, max_tokens, tokenizer) for p in prompts]


def read_prompts(path: str | Path) -> tuple[list[str], list[str | None] | None, list[str]]:
    """(prompts, groups or None, notes): `load_prompts`, with the blank prompts it skipped told in
    the notes (for `rlhflab generate`)."""
    prompts, groups, blank = load_prompts(path)
    if not blank:
        return prompts, groups, []
    name = str(Path(path).expanduser())
    if Path(path).suffix.lower() == ".txt":
        return prompts, groups, [f"skipped {blank} blank line{'s' * (blank != 1)} in {name}"]
    return prompts, groups, [f"skipped {blank} row{'s' * (blank != 1)} with an empty prompt in {name}"]


def load_prompts(path: str | Path) -> tuple[list[str], list[str | None] | None, int]:
    """(prompts, groups or None, blank) from a .txt file (one prompt per line) or a
    .jsonl/.csv/.json table with a `prompt` column and an optional `group` column.

    Blank lines and empty prompts are skipped; `blank` counts them. RlhfLabError for a
    missing file, another file type, no `prompt` column (naming the columns there) or no prompts."""
    path = Path(path).expanduser()
    name = str(path)
    if not path.is_file():
        where = "is a folder, not a file" if path.is_dir() else f"was not found ({path.resolve()})"
        raise RlhfLabError(f"The prompts file {name} {where}. Pass a .txt file with one prompt per line, "
                           f"or a .jsonl/.csv/.json file with a 'prompt' column.")
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_TYPES:
        raise RlhfLabError(f"The prompts file {name} has the unsupported type {suffix or '(none)'!r}; use a .txt file "
                           f"(one prompt per line) or a .jsonl/.csv/.json file with a 'prompt' column.")
    if suffix == ".txt":
        from rlhflab.data.tables import _read_text

        lines = _read_text(path, name).splitlines()
        prompts = [line for line in lines if line.strip()]
        groups = None
        blank = len(lines) - len(prompts)
    else:
        from rlhflab.data.sources import check_scalar
        from rlhflab.data.tables import READERS

        table = READERS[suffix](path, name)
        if "prompt" not in table.columns:
            present = ", ".join(table.columns) if table.columns else "none"
            raise RlhfLabError(f"{name} has no 'prompt' column (its columns: {present}). Name the column of "
                               f"prompts 'prompt' (and optionally one 'group').")
        raw_groups = table.data["group"] if "group" in table.columns else None
        prompts, groups, blank = [], [] if raw_groups is not None else None, 0
        for i, value in enumerate(table.data["prompt"]):
            check_scalar(value, table, i, "prompt")
            text = _cell(value)
            if not text or not text.strip():
                blank += 1
                continue
            prompts.append(text)
            if groups is not None:
                groups.append(_cell(raw_groups[i]) or None)
        if groups is not None and not any(groups):
            groups = None
    if not prompts:
        raise RlhfLabError(f"The prompts file {name} holds no prompts. Write one prompt per line (.txt) or one row "
                           f"per prompt with a 'prompt' column.")
    return prompts, groups, blank


def _cell(value: Any) -> str:
    from rlhflab.data.labels import is_missing

    if value is None or is_missing(value):
        return ""
    return value if isinstance(value, str) else str(value)
