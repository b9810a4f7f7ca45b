"""Readers never drop input silently (what they leave out is counted in `.dropped`), and number
labels outside 0/1 (star ratings, classes) are never read as sentiment polarity."""

import json
from pathlib import Path

import pytest

from rlhflab.data import Review, Reviews, describe_dropped, load_reviews
from rlhflab.data.labels import numeric_scale
from rlhflab.errors import RlhfLabError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def error_for(source, **kwargs) -> str:
    with pytest.raises(RlhfLabError) as err:
        load_reviews(str(source), **kwargs)
    return str(err.value)


# --- what was left out is counted ----------------------------------------------------------


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


# --- number labels are not polarity ---------------------------------------------------------


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
