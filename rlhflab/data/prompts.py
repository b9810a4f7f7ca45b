"""Policy prompts: the opening words of reviews, with a seeded random length."""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence

from rlhflab.data.records import Review
from rlhflab.errors import RlhfLabError


def prompt_words(text: str, n: int) -> str:
    """The first `n` whitespace-separated words of `text` (all of it when shorter)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise RlhfLabError(f"a prompt needs at least 1 word, got n={n!r}.")
    return " ".join(text.split()[:n])


def make_prompts(reviews: Sequence[Review], min_words: int, max_words: int, seed: int) -> list[str]:
    """One prompt per review: its first N words, N uniform in [min_words, max_words]."""
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
    rng = random.Random(int(seed))
    # One draw per review, always, so prompt i depends only on the seed and i.
    return [prompt_words(r.text, rng.randint(min_words, max_words)) for r in reviews]
