"""The (text, reward) reader of ILQL: what is kept, what is counted, and errors that name the setting to change."""

import json

import pytest

from rlhflab.data.corpus import load_corpus
from rlhflab.data.scored import load_scored_texts
from rlhflab.errors import RlhfLabError


def test_rows_without_text_or_reward_are_counted_and_the_rest_kept(tmp_path):
    path = tmp_path / "scored.jsonl"
    rows = [{"text": "a fine film", "score": 0.5}, {"text": "", "score": 1.0}, {"text": "dull", "score": None},
            {"text": "long and slow", "score": "-2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    scored = load_scored_texts(str(path))
    assert (scored.texts, scored.rewards) == (["a fine film", "long and slow"], [0.5, -2.0])
    assert scored.left_out == {"rows with empty text": 1, "rows without a reward": 1}


@pytest.mark.parametrize("setting", ["text_column", "reward_column"])
def test_a_named_column_that_is_not_there_names_the_ilql_setting(tmp_path, setting):
    path = tmp_path / "scored.csv"
    path.write_text("body,reward\nfine,1\n")
    with pytest.raises(RlhfLabError, match=rf"ilql\.{setting} 'nope' not found .* columns are: body, reward\. "
                                           rf"Set ilql\.{setting} to one of them"):
        load_scored_texts(str(path), **{setting: "nope"})
    with pytest.raises(RlhfLabError, match=r"has no text column: .* Set ilql\.text_column"):
        load_scored_texts(str(path))


def test_a_pretraining_table_names_the_pretrain_setting(tmp_path):
    path = tmp_path / "lines.csv"
    path.write_text("id,verse\n1,Friends Romans countrymen\n")
    with pytest.raises(RlhfLabError, match=r"pretrain\.text_column 'line' not found"):
        load_corpus(str(path), text_column="line")
    with pytest.raises(RlhfLabError, match=r"Set pretrain\.text_column to the column holding the text"):
        load_corpus(str(path))


def test_file_errors_name_the_file_setting_the_row_and_the_column(tmp_path):
    with pytest.raises(RlhfLabError, match=r"^ilql\.samples '.*nope\.jsonl' was not found: .* Check the path, or use "
                                           r"hf:<dataset id>\.$"):
        load_scored_texts(str(tmp_path / "nope.jsonl"))
    path = tmp_path / "scored.jsonl"
    path.write_text(json.dumps({"text": "fine", "reward": 1}) + "\n" + json.dumps({"text": "fine", "reward": "high"}))
    with pytest.raises(RlhfLabError, match=rf"The reward \('reward'\) at line 2 of {path} is 'high', not a number"):
        load_scored_texts(str(path))
    path.write_text(json.dumps({"text": ["a", "b"], "reward": 1}))
    with pytest.raises(RlhfLabError, match=r"column 'text' of .* holds a list, not text, at line 1"):
        load_scored_texts(str(path))
