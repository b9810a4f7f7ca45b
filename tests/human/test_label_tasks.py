"""Creating label / pair / rating tasks from files, and exports the reward stage reads as they are."""

from __future__ import annotations

import csv
import json

import pytest

from rlhflab.data import load_pairs, load_reviews
from rlhflab.errors import RlhfLabError
from rlhflab.human import store, tasks
from tests.human.conftest import MODELS


def answer_all(db, task, choose, rater="Ada"):
    """Answer every item of `task` as `choose(item) -> value` would, through the store."""
    with store.opened(db) as conn:
        info = store.get_task(conn, task)
        rater_id = store.rater_id(conn, rater)
        for item in store.task_items(conn, info["id"]):
            value = choose(item)
            if value is not None:
                store.add_answer(conn, item["id"], rater_id, value)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_label_task_from_a_csv_exports_labels_the_reward_loader_reads(tmp_path, db):
    source = write_csv(tmp_path / "texts.csv", ["review", "id"], [[f"text number {i}", i] for i in range(10)] + [["  ", 10]])
    created = tasks.create_label_task(db, str(source), limit=8, seed=1)
    assert created == {"name": "texts-label", "kind": "label", "items": 8,
                       "left_out": {"rows with empty text": 1, "items beyond --limit 8": 2}}
    answer_all(db, "texts-label", lambda item: {"label": "good" if int(item["text"].split()[-1]) % 2 else "bad"})
    result = tasks.export_labels(db, "texts-label")
    assert result["path"] == str(db.parent / "texts-label-labels.jsonl") and result["rows"] == 8
    rows = [json.loads(line) for line in open(result["path"], encoding="utf-8")]
    assert all(set(r) == {"text", "label"} for r in rows)
    reviews = load_reviews(result["path"])  # exactly what reward.data.source reads
    assert len(reviews) == 8 and all(r.label == int(r.text.split()[-1]) % 2 for r in reviews)
    assert result["positive"] + result["negative"] == 8


def test_samples_file_shows_the_prompt_apart_and_exports_prompt_and_response_apart(db, samples_jsonl):
    tasks.create_label_task(db, str(samples_jsonl), name="s")
    with store.opened(db) as conn:
        items = store.task_items(conn, store.get_task(conn, "s")["id"])
    assert len(items) == 16 and all(i["prompt"].startswith("The film number") for i in items)
    assert {i["meta"]["fields"]["model"] for i in items} == set(MODELS)  # kept, hidden, on the server
    answer_all(db, "s", lambda item: {"label": "good" if "wonderful" in item["text"] else "bad"})
    rows = [json.loads(line) for line in open(tasks.export_labels(db, "s", db.parent / "out.jsonl")["path"])]
    # apart, so that the reward stage cuts a long prompt and never the response it judges
    assert all(r["prompt"].startswith("The film number") and not r["text"].startswith("The film") for r in rows)
    from rlhflab.data import load_reviews

    reviews = load_reviews(str(db.parent / "out.jsonl"), require_labels=True)
    assert [(r.prompt, r.text) for r in reviews] == [(r["prompt"], r["text"]) for r in rows]


def test_majority_wins_ties_and_unmapped_labels_are_left_out(db, samples_jsonl):
    tasks.create_label_task(db, str(samples_jsonl), name="m", labels=["good", "bad", "unsure"], limit=3)
    with store.opened(db) as conn:
        ids = [i["id"] for i in store.task_items(conn, store.get_task(conn, "m")["id"])]
        raters = [store.rater_id(conn, name) for name in ("a", "b", "c")]
        votes = {ids[0]: ["good", "good", "bad"], ids[1]: ["good", "bad"], ids[2]: ["unsure"]}
        for item, labels in votes.items():
            for rater, label in zip(raters, labels):
                store.add_answer(conn, item, rater, {"label": label})
    result = tasks.export_labels(db, "m")
    assert (result["rows"], result["ties"], result["unmapped"], result["positive"]) == (1, 1, 1, 1)


@pytest.mark.parametrize("labels, expected", [
    (["good", "bad"], {"good": 1, "bad": 0}),
    (["bad", "good"], {"bad": 0, "good": 1}),
    (["funny", "boring"], {"funny": 1, "boring": 0}),  # unknown pair: first positive
    (["Positive", "Negative", "skip"], {"Positive": 1, "Negative": 0, "skip": None}),
])
def test_label_values(labels, expected):
    assert tasks.label_values(labels) == expected


def test_pairs_from_columns_export_pairs_the_reward_loader_reads(tmp_path, db):
    source = write_csv(tmp_path / "p.csv", ["prompt", "response_a", "response_b"],
                       [[f"q{i}", f"good answer {i}", f"bad answer {i}"] for i in range(6)] + [["q", "same", "same"]])
    created = tasks.create_label_task(db, str(source), kind="pairs", seed=3)
    assert created["items"] == 6 and created["left_out"] == {"rows with the same text in both responses": 1}
    with store.opened(db) as conn:
        items = store.task_items(conn, store.get_task(conn, created["name"])["id"])
    assert {i["meta"]["a"] for i in items} == {"response_a", "response_b"}  # shown in random sides
    answer_all(db, created["name"], lambda item: {"choice": "a" if item["text"].startswith("good") else "b"})
    result = tasks.export_labels(db, created["name"])
    assert result["path"].endswith("p-pairs-pairs.jsonl") and result["rows"] == 6
    pairs = load_pairs(result["path"])  # exactly what reward.pairs.source reads
    assert all(p.chosen.startswith("good") and p.rejected.startswith("bad") and p.prompt.startswith("q") for p in pairs)


def test_pairs_from_a_samples_file_pair_two_models(db, samples_jsonl):
    created = tasks.create_label_task(db, str(samples_jsonl), kind="pairs", models=list(reversed(MODELS)))
    assert created["items"] == 8
    with store.opened(db) as conn:
        items = store.task_items(conn, store.get_task(conn, created["name"])["id"])
    assert all({i["meta"]["a"]["model"], i["meta"]["b"]["model"]} == set(MODELS) for i in items)
    with pytest.raises(RlhfLabError, match="no responses from gamma"):
        tasks.create_label_task(db, str(samples_jsonl), kind="pairs", models=["alpha-model", "gamma"])


@pytest.mark.parametrize("setup, kwargs, fragment", [
    (None, {"source": "missing.csv"}, "--from missing.csv: no such file"),
    ("text.csv", {"text_column": "body"}, "Column 'body' not found"),
    ("nocol.csv", {}, "has no text column"),
    ("text.csv", {"labels": ["good"]}, "two or more non-empty labels"),
    ("text.csv", {"labels": ["good", "Good"]}, "repeat a name"),
    ("text.csv", {"limit": 0}, "--limit must be a positive whole number"),
    ("text.csv", {"kind": "pairs"}, "no pair of response columns"),
    ("text.csv", {"kind": "pairs", "columns": ["text", "nope"]}, "Column 'nope' not found"),
    ("empty.jsonl", {}, "has no rows"),
    ("text.csv", {"name": "a/b"}, "not usable in a web address"),
])
def test_bad_inputs_say_what_to_do(tmp_path, db, setup, kwargs, fragment):
    write_csv(tmp_path / "text.csv", ["text"], [["hello"], ["world"]])
    write_csv(tmp_path / "nocol.csv", ["words"], [["hello"]])
    (tmp_path / "empty.jsonl").write_text("\n")
    source = str(tmp_path / setup) if setup else kwargs.pop("source")
    with pytest.raises(RlhfLabError, match=fragment.replace("(", r"\(")):
        tasks.create_label_task(db, source, **kwargs)


def test_task_names_are_unique_and_export_checks_its_task(db, samples_jsonl):
    tasks.create_label_task(db, str(samples_jsonl), name="t")
    # the same items again without a name: the task that holds them is named, nothing is created
    with pytest.raises(RlhfLabError, match=r"Task 't' already holds these items \(0 answers so far\).*--name NEW"):
        tasks.create_label_task(db, str(samples_jsonl), seed=5)
    assert tasks.create_label_task(db, str(samples_jsonl), limit=4)["name"] == "samples-label"  # other items: a new task
    assert tasks.create_label_task(db, str(samples_jsonl), limit=4, seed=1)["name"] == "samples-label-2"
    with pytest.raises(RlhfLabError, match="already exists"):
        tasks.create_label_task(db, str(samples_jsonl), name="t")
    with pytest.raises(RlhfLabError, match="no answers yet"):
        tasks.export_labels(db, "t")
    with pytest.raises(RlhfLabError, match="No task named 'nope'.*tasks here: t, samples-label"):
        tasks.export_labels(db, "nope")
    with pytest.raises(RlhfLabError, match="No labelling database"):
        tasks.export_labels(db.parent / "other.sqlite", "t")


def test_rating_task_takes_shared_prompts_and_checks_its_inputs(tmp_path, db, samples_jsonl):
    samples = tasks.read_samples(samples_jsonl)
    created = tasks.create_rating_task(db, samples + [{"prompt_id": 99, "prompt": "x", "model": "alpha-model", "response": "only one"}], prompts=5)
    assert created == {"name": "blind-rating", "kind": "rating", "items": 10, "prompts": 5, "models": list(MODELS), "run": None,
                       "left_out": {"prompts without a response from every model": 1, "prompts beyond --prompts 5": 3}}
    with store.opened(db) as conn:
        info = store.get_task(conn, "blind-rating")
        items = store.task_items(conn, info["id"])
    assert info["info"]["sources"]["beta-model"] == "/secret/runs/beta-run"
    assert sorted(i["meta"]["prompt_id"] for i in items) == sorted([0, 1, 2, 3, 4] * 2)
    with pytest.raises(RlhfLabError, match="--prompts 9 asks for more prompts"):
        tasks.create_rating_task(db, samples, prompts=9)
    with pytest.raises(RlhfLabError, match="at least 2 models"):
        tasks.create_rating_task(db, samples, models=["alpha-model"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "response": "r"}\n')
    with pytest.raises(RlhfLabError, match="Line 1 of .* has no model"):
        tasks.read_samples(bad)
    with pytest.raises(RlhfLabError, match="does not exist"):
        tasks.read_samples(tmp_path / "none.jsonl")
