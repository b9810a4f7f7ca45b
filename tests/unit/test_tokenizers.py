"""Tokenizers trained from scratch: round trips, special tokens, unknowns, save and reload."""

from __future__ import annotations

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.models.tokenizers import minimum_vocab_size, train_tokenizer

VERSE = (
    "IAGO.\n"
    "O, sir, content you;  I follow him to serve my turn upon him:\n"
    "We cannot all be masters, nor all masters\n"
    "Cannot be truly follow'd. You shall mark\n"
    "\n"
    "RODERIGO.\n"
    "What, ho, Brabantio! Signior Brabantio, ho!\n"
)
CORPUS = [VERSE, "Thou told'st me thou didst hold him in thy hate.\n\tIndented, and\ttabbed.\n"]
SIZES = {"word": 200, "char": 100, "bpe": 400}  # larger than these texts need: nothing is cut


@pytest.fixture(scope="module", params=sorted(SIZES))
def trained(request):
    kind = request.param
    return kind, train_tokenizer(CORPUS, kind, SIZES[kind])


def test_round_trip_is_exact_for_training_text(trained):
    kind, tokenizer = trained
    for text in CORPUS:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text, kind
        assert all(i >= 3 for i in ids)  # no special token is added or needed


def test_tokens_of_each_kind(trained):
    kind, tokenizer = trained
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("follow'd.\n  O")["input_ids"])
    expected = {
        "word": ["follow'd", ".", "\n", "  ", "O"],  # newline and space runs are tokens
        "char": list("follow'd.\n  O"),
    }
    if kind in expected:
        assert tokens == expected[kind]
    else:  # byte-level: "\n" is Ċ and a space Ġ
        assert "".join(tokens).replace("Ċ", "\n").replace("Ġ", " ") == "follow'd.\n  O"


def test_special_tokens_are_distinct_and_set(trained):
    _, tokenizer = trained
    assert (tokenizer.unk_token, tokenizer.pad_token, tokenizer.eos_token) == ("<unk>", "<pad>", "<eos>")
    assert (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.decode([2]) == "<eos>"
    assert tokenizer.decode([5, 2], skip_special_tokens=True) == tokenizer.decode([5])


def test_unknown_words_map_to_unk():
    word = train_tokenizer(CORPUS, "word", 200)
    ids = word("thou zebra hate")["input_ids"]
    assert ids[2] == word.unk_token_id and ids.count(word.unk_token_id) == 1
    assert word.decode(ids) == "thou <unk> hate"
    char = train_tokenizer(CORPUS, "char", 100)
    assert char("IQ")["input_ids"][1] == char.unk_token_id  # no Q in the corpus
    bpe = train_tokenizer(CORPUS, "bpe", 400)  # bytes: nothing is unknown
    ids = bpe("zebra Ω")["input_ids"]
    assert bpe.unk_token_id not in ids and bpe.decode(ids) == "zebra Ω"


def test_vocab_size_caps_the_vocabulary_and_keeps_the_frequent():
    char = train_tokenizer(["aaaa bbb cc d\n"], "char", 6)  # 3 specials + the 3 commonest
    assert len(char) == 6 and set(char.get_vocab()) == {"<unk>", "<pad>", "<eos>", "a", "b", " "}
    word = train_tokenizer(CORPUS, "word", 10, min_frequency=1)
    assert len(word) == 10
    rare = train_tokenizer(CORPUS, "word", 200, min_frequency=3)
    assert "Brabantio" not in rare.get_vocab() and "," in rare.get_vocab()
    bpe = train_tokenizer(CORPUS, "bpe", 300)
    assert len(bpe) == 300


def test_reload_with_auto_tokenizer_gives_the_same_ids(trained, tmp_path):
    from transformers import AutoTokenizer

    kind, tokenizer = trained
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = VERSE + "zebra Ω <eos>"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (again.pad_token_id, again.eos_token_id, again.unk_token_id) == (1, 2, 0)
    assert again.decode(again(VERSE)["input_ids"]) == VERSE, kind


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_vocab_too_small_names_the_setting(kind):
    smallest = minimum_vocab_size(kind)
    assert smallest == (259 if kind == "bpe" else 4)
    for bad in (smallest - 1, 0, 3.5, True):
        with pytest.raises(RlhfLabError, match=r"pretrain\.vocab_size"):
            train_tokenizer(CORPUS, kind, bad)


def test_bad_kind_and_empty_texts():
    with pytest.raises(RlhfLabError, match="word, char, bpe"):
        train_tokenizer(CORPUS, "sentencepiece", 100)
    with pytest.raises(RlhfLabError, match="no text"):
        train_tokenizer(["", ""], "word", 100)


def test_a_single_string_is_one_text():
    tokenizer = train_tokenizer("to be or not to be", "word", 50)
    assert "be" in tokenizer.get_vocab() and tokenizer.decode(tokenizer("not to be")["input_ids"]) == "not to be"
