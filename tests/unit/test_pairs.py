"""load_pairs over every source type and error, and split_pairs."""

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.data.pairs import Pair, PairSplits, load_pairs, split_pairs
from rlhflab.data.records import Review
from rlhflab.data.splits import split_reviews, split_sizes
from rlhflab.errors import RlhfLabError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def write_parquet(path: Path, rows: list) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


def error(source, **kwargs) -> str:
    with pytest.raises(RlhfLabError) as info:
        load_pairs(str(source), **kwargs)
    return str(info.value)


# --- each source type ------------------------------------------------------------------


def test_csv_detects_columns_and_cleans_text(tmp_path):
    path = write(
        tmp_path / "p.csv",
        'prompt,chosen,rejected\n"Review:  the film","Great.<br /><br />Loved it","Dull\nand long"\n'
        "Hi,Hello there,Go away\n",
    )
    assert load_pairs(str(path)) == [
        Pair("Review: the film", "Great. Loved it", "Dull and long", 0.0),
        Pair("Hi", "Hello there", "Go away", 0.0),
    ]


def test_csv_without_prompt_column_gives_empty_prompt(tmp_path):
    path = write(tmp_path / "p.csv", "chosen,rejected\nyes,no\n")
    assert load_pairs(str(path)) == [Pair("", "yes", "no")]


def test_jsonl_question_preferred_dispreferred(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"question": "q1", "preferred": "a", "dispreferred": "b"}, {"question": "q2", "preferred": "c", "dispreferred": "d"}],
    )
    assert load_pairs(str(path)) == [Pair("q1", "a", "b"), Pair("q2", "c", "d")]


def test_json_list_query_better_worse(tmp_path):
    path = write(tmp_path / "p.json", json.dumps([{"query": "q", "better": "good", "worse": "bad"}]))
    assert load_pairs(str(path)) == [Pair("q", "good", "bad")]


def test_parquet_instruction_response_columns_and_float_margin(tmp_path):
    path = write_parquet(
        tmp_path / "p.parquet",
        [
            {"instruction": "i1", "response_chosen": "x", "response_rejected": "y", "margin": 2.5},
            {"instruction": "i2", "response_chosen": "z", "response_rejected": "w", "margin": 0.0},
        ],
    )
    pairs = load_pairs(str(path))
    assert pairs == [Pair("i1", "x", "y", 2.5), Pair("i2", "z", "w", 0.0)]
    assert all(type(p.margin) is float for p in pairs)  # not numpy.float64


def test_detection_ignores_case(tmp_path):
    path = write(tmp_path / "p.csv", "Prompt,Chosen,Rejected\np,a,b\n")
    assert load_pairs(str(path)) == [Pair("p", "a", "b")]


def test_detection_order_prefers_earlier_candidates(tmp_path):
    path = write(tmp_path / "p.csv", "query,prompt,better,chosen,worse,rejected\nq,p,b1,c1,w1,r1\n")
    assert load_pairs(str(path)) == [Pair("p", "c1", "r1")]


def test_explicit_columns_override_detection(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,chosen,rejected,ctx,good,poor,gap\np,c,r,X,G,P,3\n")
    pairs = load_pairs(
        str(path), prompt_column="ctx", chosen_column="good", rejected_column="poor", margin_column="gap"
    )
    assert pairs == [Pair("X", "G", "P", 3.0)]


def test_csv_margin_strings_are_parsed(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,chosen,rejected,margin\np,a,b,1.5\np,c,d,-2\np,e,f, 1e-3 \n")
    assert [p.margin for p in load_pairs(str(path))] == [1.5, -2.0, 0.001]


def test_margin_only_from_margin_column(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,chosen,rejected,score\np,a,b,7\n")
    assert load_pairs(str(path)) == [Pair("p", "a", "b", 0.0)]
    assert load_pairs(str(path), margin_column="score") == [Pair("p", "a", "b", 7.0)]


def test_integer_margins_from_json(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "a", "rejected": "b", "margin": 3}])
    assert load_pairs(str(path)) == [Pair("", "a", "b", 3.0)]


def test_non_string_text_is_stringified(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": 2, "chosen": 4, "rejected": 5}])
    assert load_pairs(str(path)) == [Pair("2", "4", "5")]


def test_missing_prompt_cell_gives_empty_prompt(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": None, "chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": "d", "prompt": "p"}])
    assert load_pairs(str(path)) == [Pair("", "a", "b"), Pair("p", "c", "d")]


def conversation(prompt: str, answer: str) -> list:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_conversation_cells_jsonl_prompt_from_messages(tmp_path):
    # trl-lib/ultrafeedback_binarized layout: chosen/rejected are whole conversations.
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"chosen": conversation("Why?", "Because."), "rejected": conversation("Why?", "No."), "score_chosen": 8.0}],
    )
    assert load_pairs(str(path)) == [Pair("Why?", "Because.", "No.")]


def test_conversation_cells_with_prompt_column(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "Why?", "chosen": conversation("Why?", "Because."), "rejected": conversation("Why?", "No.")}],
    )
    assert load_pairs(str(path)) == [Pair("Why?", "Because.", "No.")]


def test_conversation_cells_parquet(tmp_path):
    path = write_parquet(
        tmp_path / "p.parquet",
        [{"chosen": conversation("Hi", "Hello!"), "rejected": conversation("Hi", "Go.")}],
    )
    assert load_pairs(str(path)) == [Pair("Hi", "Hello!", "Go.")]


# --- errors ----------------------------------------------------------------------------


def test_missing_file_error_comes_from_read_table(tmp_path):
    message = error(tmp_path / "nope.csv")
    assert "nope.csv" in message and "not found" in message


@pytest.mark.parametrize(
    "name, text",
    [("empty.csv", "prompt,chosen,rejected\n"), ("empty.jsonl", ""), ("empty.json", "[]")],
)
def test_no_rows(tmp_path, name, text):
    path = write(tmp_path / name, text)
    message = error(path)
    assert str(path) in message and "no rows" in message


def test_missing_chosen_column_lists_columns(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,good,rejected\np,a,b\n")
    message = error(path)
    assert str(path) in message and "no chosen column" in message
    assert "prompt, good, rejected" in message and "chosen_column" in message


def test_missing_rejected_column_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "a", "bad": "b"}])
    message = error(path)
    assert str(path) in message and "no rejected column" in message
    assert "chosen, bad" in message and "rejected_column" in message


@pytest.mark.parametrize("kind", ["prompt", "chosen", "rejected", "margin"])
def test_missing_explicit_column(tmp_path, kind):
    path = write(tmp_path / "p.csv", "prompt,chosen,rejected\np,a,b\n")
    message = error(path, **{f"{kind}_column": "nope"})
    assert f"{kind}_column 'nope' not found in {path}" in message
    assert "prompt, chosen, rejected" in message


def test_same_column_for_chosen_and_rejected(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,chosen,rejected\np,a,b\n")
    message = error(path, rejected_column="chosen")
    assert "'chosen'" in message and str(path) in message


def test_empty_chosen_text_counts_rows_and_names_first(tmp_path):
    path = write(tmp_path / "p.csv", 'prompt,chosen,rejected\np,a,b\np,,b\np,"<br />  ",b\n')
    message = error(path)
    assert "2 rows" in message and "'chosen'" in message and str(path) in message
    assert "data row 2" in message


def test_empty_rejected_text_in_jsonl_names_line(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": "a", "rejected": "b"}, {"chosen": "c", "rejected": None}])
    message = error(path)
    assert "1 row" in message and "'rejected'" in message and "line 2" in message


def test_identical_chosen_and_rejected(tmp_path):
    path = write(tmp_path / "p.csv", "prompt,chosen,rejected\np,a,b\np,same  text,same text\n")
    message = error(path)
    assert "must differ" in message and "data row 2" in message
    assert "'chosen'" in message and "'rejected'" in message and str(path) in message


@pytest.mark.parametrize(
    "value, words",
    [("abc", "'abc', which is not a number"), ("inf", "'inf', which is not finite"), ("", "empty margin"), ("nan", "'nan', which is not finite")],
)
def test_bad_margin_in_csv(tmp_path, value, words):
    path = write(tmp_path / "p.csv", f"prompt,chosen,rejected,margin\np,a,b,1\np,c,d,{value}\n")
    message = error(path)
    assert words in message and "'margin'" in message and "data row 2" in message and str(path) in message


@pytest.mark.parametrize("value", [True, "x", [1], None, 10**400])
def test_bad_margin_in_jsonl(tmp_path, value):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"chosen": "a", "rejected": "b", "gap": 1}) + "\n" + '{"chosen": "c", "rejected": "d", "gap": ' + json.dumps(value) + "}\n")
    message = error(path, margin_column="gap")
    assert "'gap'" in message and "line 2" in message and "1 bad value" in message


def test_nan_margin_in_parquet(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"chosen": "a", "rejected": "b", "margin": float("nan")}])
    message = error(path)
    assert "empty margin" in message and "row index 0" in message


def test_object_cell_is_not_text(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": {"text": "a"}, "rejected": "b"}])
    message = error(path)
    assert "'chosen'" in message and "line 1" in message and "not text" in message


# --- split_pairs -----------------------------------------------------------------------


def make_pairs(n: int) -> list[Pair]:
    return [Pair(f"p{i}", f"c{i}", f"r{i}", float(i)) for i in range(n)]


def test_split_sizes_disjoint_and_complete():
    pairs = make_pairs(103)
    splits = split_pairs(pairs, [0.6, 0.2, 0.2], seed=0)
    assert isinstance(splits, PairSplits)
    parts = [splits.train, splits.validation, splits.test]
    assert [len(p) for p in parts] == split_sizes(103, [0.6, 0.2, 0.2]) == [62, 21, 20]
    assert sorted(pairs, key=lambda p: p.margin) == sorted([p for part in parts for p in part], key=lambda p: p.margin)
    assert not (set(splits.train) & set(splits.validation) or set(splits.train) & set(splits.test) or set(splits.validation) & set(splits.test))


def test_split_is_deterministic_and_shuffled():
    pairs = make_pairs(50)
    a = split_pairs(pairs, [0.8, 0.1, 0.1], seed=3)
    assert a == split_pairs(pairs, [0.8, 0.1, 0.1], seed=3)
    assert a != split_pairs(pairs, [0.8, 0.1, 0.1], seed=4)
    assert a.train != pairs[:40]  # shuffled, not a prefix
    assert pairs == make_pairs(50)  # input untouched


def test_split_zero_fractions_give_empty_parts():
    splits = split_pairs(make_pairs(5), [1, 0, 0], seed=0)
    assert len(splits.train) == 5 and splits.validation == [] and splits.test == []


@pytest.mark.parametrize(
    "fractions",
    [[0.5, 0.5], [0.6, 0.2, 0.3], [0.6, -0.1, 0.5], [0, 0.5, 0.5], "abc", [0.6, float("nan"), 0.4], [True, 0, 0]],
)
def test_split_fraction_errors_match_split_reviews(fractions):
    with pytest.raises(RlhfLabError) as ours:
        split_pairs(make_pairs(10), fractions, seed=0)
    with pytest.raises(RlhfLabError) as theirs:
        split_reviews([Review("t", 1)] * 10, fractions, seed=0)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_split_seed_must_be_int(seed):
    with pytest.raises(RlhfLabError, match="seed must be an integer"):
        split_pairs(make_pairs(10), [0.6, 0.2, 0.2], seed=seed)


def test_split_no_pairs():
    with pytest.raises(RlhfLabError, match="no preference pairs"):
        split_pairs([], [0.6, 0.2, 0.2], seed=0)


def test_split_too_few_pairs_for_a_part():
    with pytest.raises(RlhfLabError, match=r"the validation split gets 0 of 3 preference pairs \(reward\.pairs\.fractions "
                                           r"gives it 0\.05\): use at least 20 preference pairs, raise the validation "
                                           r"fraction to at least 0\.333, or set it to 0 to skip validation\.$"):
        split_pairs(make_pairs(3), [0.9, 0.05, 0.05], seed=0)
    with pytest.raises(RlhfLabError, match=r"0 of 1 preference pairs \(dpo\.pairs\.fractions gives it 0\.1\): use at "
                                           r"least 10 preference pairs, or set it to 0 to skip validation\.$"):
        split_pairs(make_pairs(1), [0.9, 0.1, 0.0], seed=0, section="dpo.pairs")  # no "raise it": train would be empty


def test_messages_name_the_settings_of_the_section_that_reads_the_pairs(tmp_path):
    with pytest.raises(RlhfLabError, match=r"^dpo\.pairs\.source '.*nope\.jsonl' was not found: .*or use hf:<dataset id>\.$"):
        load_pairs(str(tmp_path / "nope.jsonl"), section="dpo.pairs")
    path = write(tmp_path / "p.csv", "prompt,good,rejected\np,a,b\n")
    with pytest.raises(RlhfLabError, match=r"Set dpo\.pairs\.chosen_column to the column"):
        load_pairs(str(path), section="dpo.pairs")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), cut=st.tuples(st.integers(1, 10), st.integers(0, 10), st.integers(0, 10)), seed=st.integers(0, 2**32))
def test_split_property_partition(n, cut, seed):
    fractions = [c / sum(cut) for c in cut]
    pairs = make_pairs(n)
    try:
        splits = split_pairs(pairs, fractions, seed)
    except RlhfLabError as err:
        assert "gets 0 of" in str(err)
        return
    parts = [splits.train, splits.validation, splits.test]
    assert [len(p) for p in parts] == split_sizes(n, fractions)
    assert sorted(p.margin for part in parts for p in part) == [float(i) for i in range(n)]
