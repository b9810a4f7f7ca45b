"""Prompt construction from review openings."""

import pytest

from rlhflab.data import Review, make_prompts
from rlhflab.data.prompts import prompt_words
from rlhflab.errors import RlhfLabError

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
