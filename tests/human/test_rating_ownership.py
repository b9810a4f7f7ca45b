"""Nothing the user made quietly disappears: a second `rate create` of the same samples names the
existing task, a summary never replaces ratings with an empty table, and ratings belong to the run
whose samples were rated (only that run's report shows them)."""

from __future__ import annotations

import json
import shutil

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.eval.report import build_report
from rlhflab.human import rating_summary, store, tasks, write_rating_summary
from rlhflab.human.summary import summary_folder
from tests.helpers import assert_user_error, cli_ok, cli_run
from tests.human.conftest import write_samples

run, ok = cli_run, cli_ok


def rate_all(db, task: str, rater: str = "ada") -> int:
    """Rate every item of `task` (beta-model 5, alpha-model 2; sense 4); the number rated."""
    with store.opened(db) as conn:
        items = store.task_items(conn, store.get_task(conn, task)["id"])
        who = store.rater_id(conn, rater)
        for item in items:
            store.add_answer(conn, item["id"], who, {"positivity": 5 if item["meta"]["model"] == "beta-model" else 2, "sense": 4})
    return len(items)


def task_names(db) -> list[str]:
    with store.opened(db) as conn:
        return [t["name"] for t in store.list_tasks(conn)]


@pytest.fixture
def runs(tmp_path):
    """Two runs, each with an evaluation's samples.jsonl."""
    for name in ("rated", "other"):
        folder = tmp_path / "runs" / name / "evaluate"
        folder.mkdir(parents=True)
        write_samples(folder / "samples.jsonl")
    return tmp_path / "runs"


def test_a_second_create_of_the_same_samples_names_the_existing_task(capsys, runs, db):
    samples = runs / "rated" / "evaluate" / "samples.jsonl"
    out = ok(capsys, "rate", "create", "--from-samples", samples, "--prompts", "6", "--db", db)
    assert "Created rating task 'blind-rating': 12 responses" in out
    assert f"The ratings belong to the run {(runs / 'rated').resolve()}" in out
    rate_all(db, "blind-rating")
    # the same samples again, with or without another shuffle seed: refused, and the task with its answers is named
    for extra in ([], ["--seed", "7"]):
        assert_user_error(run(capsys, "rate", "create", "--from-samples", samples, "--prompts", "6", "--db", db, *extra),
                          "Task 'blind-rating' already holds these items (12 answers so far)", "?task=blind-rating",
                          "--name NEW")
    assert task_names(db) == ["blind-rating"]  # no empty blind-rating-2
    # other prompts are other items; a second task of the same ones is made when asked for by name
    assert "'blind-rating-2': 8 responses" in ok(capsys, "rate", "create", "--from-samples", samples, "--prompts", "4", "--db", db)
    assert "'again': 12 responses" in ok(capsys, "rate", "create", "--from-samples", samples, "--prompts", "6", "--db", db,
                                         "--name", "again")
    assert task_names(db) == ["blind-rating", "blind-rating-2", "again"]


def test_pairs_are_the_same_items_whichever_side_is_shown_first(db, samples_jsonl):
    first = tasks.create_label_task(db, str(samples_jsonl), kind="pairs", seed=0)
    with pytest.raises(RlhfLabError, match=f"Task '{first['name']}' already holds these items"):
        tasks.create_label_task(db, str(samples_jsonl), kind="pairs", seed=3)  # another A/B assignment, same pairs
    assert task_names(db) == [first["name"]]


def test_summary_takes_the_latest_rated_task_and_never_writes_an_empty_one(capsys, runs, db):
    samples = runs / "rated" / "evaluate" / "samples.jsonl"
    ok(capsys, "rate", "create", "--from-samples", samples, "--prompts", "6", "--db", db)
    assert_user_error(run(capsys, "rate", "summary", "--db", db),
                      "No rating task in", "has ratings yet (blind-rating (0 of 12 responses rated))", "rlhflab serve")
    assert not (runs / "rated" / "human").exists()
    rate_all(db, "blind-rating")
    out = ok(capsys, "rate", "summary", "--db", db)
    written = runs / "rated" / "human" / "blind-rating" / "rating_summary.json"
    assert f"wrote {written.resolve()}" in out and f"`rlhflab report {(runs / 'rated').resolve()}` shows it" in out
    before = written.read_text()
    assert json.loads(before)["ratings"] == 12 and json.loads(before)["run"] == str((runs / "rated").resolve())

    # a newer task with no ratings: the default summary is still the rated one, and the file keeps its ratings
    ok(capsys, "rate", "create", "--from-samples", samples, "--prompts", "3", "--db", db, "--name", "fresh")
    assert "Blind rating `blind-rating`: 6 prompts, 12 responses, 1 rater, 12 ratings." in ok(capsys, "rate", "summary", "--db", db)
    assert_user_error(run(capsys, "rate", "summary", "--db", db, "--task", "fresh"),
                      "Task 'fresh' has no ratings yet (0 of 6 responses rated)", "nothing was written")
    assert written.read_text() == before and not (runs / "rated" / "human" / "fresh").exists()
    # the library refuses too, wherever it is asked to write
    with pytest.raises(RlhfLabError, match="has no ratings yet"):
        write_rating_summary(rating_summary(db, "fresh"), written.parent)
    assert written.read_text() == before


def test_ratings_show_only_in_the_report_of_the_rated_run(capsys, runs, db):
    ok(capsys, "rate", "create", "--from-samples", runs / "rated" / "evaluate" / "samples.jsonl", "--prompts", "6", "--db", db)
    rate_all(db, "blind-rating")
    ok(capsys, "rate", "summary", "--db", db)
    _, rated_md = build_report(runs / "rated")
    _, other_md = build_report(runs / "other")
    rated, other = rated_md.read_text(), other_md.read_text()
    assert "Blind rating `blind-rating`: 6 prompts, 12 responses, 1 rater, 12 ratings." in rated
    assert "| beta-model | 1.53 ± 0.03 | 5.00 ± 0.00 | 4.00 ± 0.00 | 6 |" in rated
    assert "Blind rating" not in other and "No human ratings of this run" in other
    # a run folder handed on elsewhere takes its ratings with it
    moved = runs.parent / "elsewhere" / "rated-copy"
    shutil.copytree(runs / "rated", moved)
    _, moved_md = build_report(moved)
    assert "| beta-model | 1.53 ± 0.03 | 5.00 ± 0.00 | 4.00 ± 0.00 | 6 |" in moved_md.read_text()


def test_a_rating_summary_that_is_a_link_is_not_read(runs, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"task": "leak", "ratings": 1, "note": "SECRET-TEXT"}))
    (runs / "rated" / "human" / "t").mkdir(parents=True)
    (runs / "rated" / "human" / "t" / "rating_summary.json").symlink_to(secret)
    _, md = build_report(runs / "rated")
    text = md.read_text()
    assert "SECRET-TEXT" not in text and "is a symbolic link" in text and "No human ratings of this run" in text


def test_the_run_is_taken_from_the_samples_the_models_or_run(capsys, runs, db, tmp_path, samples_jsonl):
    assert tasks.run_of_samples(runs / "rated" / "evaluate" / "samples.jsonl") == str((runs / "rated").resolve())
    assert tasks.run_of_samples(samples_jsonl) is None  # not in a stage folder
    for stage in ("sft", "ppo"):
        (runs / "rated" / stage).mkdir()
    (runs / "other" / "ppo").mkdir()
    assert tasks.run_of_models([str(runs / "rated" / "sft"), str(runs / "rated" / "ppo")]) == str((runs / "rated").resolve())
    assert tasks.run_of_models([str(runs / "rated" / "sft"), str(runs / "other" / "ppo")]) is None  # two runs
    assert tasks.run_of_models([str(runs / "rated" / "sft"), "smollm2-135m"]) is None
    # --run attaches samples kept elsewhere to a run; a wrong one is refused before anything is made
    out = ok(capsys, "rate", "create", "--from-samples", samples_jsonl, "--prompts", "2", "--db", db, "--run", runs / "other")
    assert f"The ratings belong to the run {(runs / 'other').resolve()}" in out
    rate_all(db, "blind-rating")
    summary = rating_summary(db)
    assert summary["run"] == str((runs / "other").resolve())
    assert summary_folder(summary, db) == (runs / "other").resolve() / "human" / "blind-rating"
    assert_user_error(run(capsys, "rate", "create", "--from-samples", samples_jsonl, "--db", db, "--run", tmp_path / "nope",
                          "--name", "x"), "--run", "nope: no such run folder")
    assert task_names(db) == ["blind-rating"]
    # the run folder gone since: the summary says so rather than writing somewhere else
    shutil.rmtree(runs / "other")
    assert_user_error(run(capsys, "rate", "summary", "--db", db), "no longer exists", "--out FOLDER")
    assert "wrote" in ok(capsys, "rate", "summary", "--db", db, "--out", tmp_path / "kept")
    assert json.loads((tmp_path / "kept" / "rating_summary.json").read_text())["ratings"] == 4
