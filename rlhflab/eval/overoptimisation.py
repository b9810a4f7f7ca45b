"""Signals of reward over-optimisation, and the rule that reads them (pure Python, no torch).

The Shakespeare RLHF exercise (Deep Learning Curriculum, topic 7) saw its PPO policy turn "unreadable but high-score" and measured it by the share of
separator tokens ("\\n", " ", ",", ".") in the samples: a policy that strings positive words
together regardless of sentence structure writes fewer of them. Gao et al. (2022) measure the
same thing as the gap between the proxy reward RL optimises and an independent gold reward:
the proxy keeps rising with KL while the gold reward peaks and falls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from rlhflab.errors import RlhfLabError

SEPARATORS = ("\n", " ", ",", ".")
# Words, single whitespace characters, single punctuation characters: a tokenizer-independent
# version of that exercise's word-level tokens, so the ratio compares models with any vocabulary.
_PIECES = re.compile(r"\w+|\s|[^\w\s]")


def pieces(text: str) -> list[str]:
    """"Not bad, really." -> ["Not", " ", "bad", ",", " ", "really", "."]."""
    return _PIECES.findall(text)


def separator_ratio(texts: Sequence[str], separators: Sequence[str] = SEPARATORS) -> float:
    """Share of separator pieces among all pieces of all texts (`pieces`); nan when there are none."""
    if not separators or any(len(s) != 1 for s in separators):
        raise RlhfLabError(f"Separators must be single characters (a piece is a word or one character), got {list(separators)!r}.")
    wanted = set(separators)
    total = hits = 0
    for text in texts:
        found = pieces(text)
        total += len(found)
        hits += sum(piece in wanted for piece in found)
    return hits / total if total else math.nan


def onset(points: Sequence[dict], *, gold_drop: float, separator_drop: float, diversity_drop: float) -> dict:
    """The first checkpoint that shows over-optimisation, with the rule that found it.

    `points` are the reference model then the checkpoints in training order, each {"name",
    "kl", "proxy": mean proxy score, "gold": {judge: mean score}, "separator_ratio",
    "distinct_2"}. Checkpoint i is the onset when some gold judge falls after it by more than
    `gold_drop` (in the judge's own units) and stays down, at every later checkpoint, while the
    proxy ends at least as high as at i: the gold reward peaked while the proxy did not (Gao et
    al. 2022). A dip that recovers is sampling noise, not an onset. Checkpoint i is also the
    onset when its separator ratio or distinct-2 is below the reference's by more than
    `separator_drop` / `diversity_drop` (shares of the reference's value): text that stopped
    reading like text.

    Returns {"onset": name or None, "kl": its KL or None, "reason", "rule", "max_kl": largest KL seen}.
    """
    if not points:
        raise RlhfLabError("The over-optimisation rule needs at least the reference model.")
    rule = (f"onset = the first checkpoint after which a gold judge's mean score falls by more than {gold_drop:g} and "
            f"stays down while the proxy's ends no lower, or whose separator ratio is more than {separator_drop:.0%} "
            f"(or whose distinct-2 is more than {diversity_drop:.0%}) below the reference model's")
    max_kl = max(p["kl"] for p in points)
    found = lambda point, reason: {"onset": point["name"], "kl": point["kl"], "rule": rule, "max_kl": max_kl,  # noqa: E731
                                   "reason": reason}
    for i, point in enumerate(points):
        for key, label, drop in (("separator_ratio", "separator ratio", separator_drop), ("distinct_2", "distinct-2", diversity_drop)):
            reference = points[0][key]
            if i > 0 and reference > 0 and point[key] < (1 - drop) * reference:
                return found(point, f"{label} {point[key]:.3f}, reference {reference:.3f}")
        later = points[i + 1:]
        if later and later[-1]["proxy"] >= point["proxy"]:
            for judge, value in point["gold"].items():
                highest = max(p["gold"][judge] for p in later)
                if highest < value - gold_drop:
                    return found(point, f"after {point['name']} {judge} fell from {value:.3f} to at most {highest:.3f} and "
                                        f"stayed there, while the proxy went {point['proxy']:.3f} -> {later[-1]['proxy']:.3f}")
    return {"onset": None, "kl": None, "rule": rule, "max_kl": max_kl,
            "reason": f"no over-optimisation seen up to KL {max_kl:.2f} nats"}


def gold_peak(points: Sequence[dict]) -> dict[str, dict]:
    """judge -> {"name", "kl", "value"} of the point where its mean score is highest (first on ties)."""
    judges = points[0]["gold"] if points else {}
    out = {}
    for judge in judges:
        best = max(points, key=lambda p: p["gold"][judge])
        out[judge] = {"name": best["name"], "kl": best["kl"], "value": best["gold"][judge]}
    return out
