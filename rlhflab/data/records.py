"""The one record type the data layer hands to the rest of rlhflab."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Review:
    """One piece of text and its sentiment: 1 = positive, 0 = negative, None = unlabelled."""

    text: str
    label: int | None
