"""Data layer: load reviews from any supported source, label, balance, split and prompt.

Only the standard library is imported here; pandas and datasets load inside the functions
that need them.
"""

from rlhflab.data.labels import clean_text, normalize_label
from rlhflab.data.pairs import Pair, PairSplits, load_pairs, split_pairs
from rlhflab.data.prompts import make_prompts
from rlhflab.data.records import Review, join_prompt_response
from rlhflab.data.sources import Reviews, describe_dropped, load_reviews
from rlhflab.data.splits import Splits, balanced_sample, split_reviews

__all__ = [
    "Pair",
    "PairSplits",
    "Review",
    "Reviews",
    "describe_dropped",
    "join_prompt_response",
    "load_pairs",
    "split_pairs",
    "Splits",
    "balanced_sample",
    "clean_text",
    "load_reviews",
    "make_prompts",
    "normalize_label",
    "split_reviews",
]
