"""The blind-rating table: per-model reward / positivity / sense statistics and the significance tests."""

from __future__ import annotations

import json
import statistics

import pytest
from scipy import stats

from rlhflab.errors import RlhfLabError
from rlhflab.human import format_rating_table, rating_summary, store, tasks, write_rating_summary
from rlhflab.human.summary import compare
from tests.human.conftest import MODELS, score_of


def rate(db, task, ratings):
    """ratings: rater -> function(model, prompt_id) -> (positivity, sense) or None (skip)."""
    with store.opened(db) as conn:
        info = store.get_task(conn, task)
        items = store.task_items(conn, info["id"])
        for rater, fn in ratings.items():
            rater_id = store.rater_id(conn, rater)
            for item in items:
                value = fn(item["meta"]["model"], item["meta"]["prompt_id"])
                if value is not None:
                    store.add_answer(conn, item["id"], rater_id, {"positivity": value[0], "sense": value[1]})


def test_table_statistics_and_paired_wilcoxon(db, rating_task):
    # Beta is rated more positive on most prompts; sense is the same for both models.
    ada = lambda m, p: (4 + (p % 2), 3) if m == "beta-model" else (2 + (p % 3 == 0), 3)  # noqa: E731
    bob = lambda m, p: (5, 3) if m == "beta-model" else (2, 3)  # noqa: E731
    rate(db, rating_task, {"ada": ada, "bob": bob})
    summary = rating_summary(db)  # the latest rating task
    assert (summary["task"], summary["prompts"], summary["items"], summary["raters"], summary["ratings"]) == ("rate-me", 8, 16, 2, 32)
    alpha, beta = summary["models"]
    assert (alpha["model"], beta["model"]) == MODELS and alpha["source"] == "/secret/runs/alpha-run"
    rewards = [score_of("beta-model", p) for p in range(8)]
    assert beta["reward"] == pytest.approx({"mean": statistics.fmean(rewards), "std": statistics.stdev(rewards), "n": 8})
    positivity = [ada("beta-model", p)[0] for p in range(8)] + [5] * 8
    assert beta["positivity"] == pytest.approx({"mean": statistics.fmean(positivity), "std": statistics.stdev(positivity), "n": 16})
    assert beta["ratings"] == 16 and alpha["sense"] == {"mean": 3.0, "std": 0.0, "n": 16}

    by_metric = {c["metric"]: c for c in summary["comparisons"]}
    per_prompt = {m: [statistics.fmean([ada(m, p)[0], bob(m, p)[0]]) for p in range(8)] for m in MODELS}
    expected = stats.wilcoxon([b - a for a, b in zip(per_prompt["alpha-model"], per_prompt["beta-model"])])
    positive = by_metric["positivity"]
    assert (positive["test"], positive["paired"], positive["n"], positive["model"], positive["baseline"]) == ("wilcoxon", True, 8, "beta-model", "alpha-model")
    assert positive["p_value"] == pytest.approx(expected.pvalue) and positive["significant"] is bool(expected.pvalue < 0.05) is True
    assert positive["mean_difference"] == pytest.approx(statistics.fmean(per_prompt["beta-model"]) - statistics.fmean(per_prompt["alpha-model"]))
    assert by_metric["reward"]["p_value"] < 0.05 and by_metric["reward"]["significant"]  # beta wins on all 8 prompts
    assert by_metric["sense"]["p_value"] == 1.0 and by_metric["sense"]["significant"] is False  # no difference at all

    table = format_rating_table(summary)
    assert "| beta-model | " in table and "Wilcoxon signed-rank (paired over prompts)" in table
    assert "| positivity (1-5) | sense (1-5) | ratings |" in table and " 16 |" in table


def test_few_shared_prompts_fall_back_to_mann_whitney(db, rating_task):
    # Each model rated on different prompts: nothing pairs up.
    rate(db, rating_task, {"ada": lambda m, p: ((5, 4) if m == "beta-model" else (1, 4)) if (p < 4) == (m == "beta-model") else None})
    positive = next(c for c in rating_summary(db, "rate-me")["comparisons"] if c["metric"] == "positivity")
    expected = stats.mannwhitneyu([5.0] * 4, [1.0] * 4, alternative="two-sided")
    assert (positive["test"], positive["paired"], positive["n"]) == ("mannwhitneyu", False, 8)
    assert positive["p_value"] == pytest.approx(expected.pvalue)
    assert "Mann-Whitney U (unpaired)" in format_rating_table(rating_summary(db))


def test_without_ratings_the_tests_say_too_few(db, rating_task):
    summary = rating_summary(db, "rate-me")
    positive = next(c for c in summary["comparisons"] if c["metric"] == "positivity")
    assert positive["test"] is None and positive["p_value"] is None and summary["models"][0]["positivity"]["mean"] is None
    assert "too few ratings" in format_rating_table(summary)


def test_compare_needs_values_on_both_sides():
    assert compare({1: 1.0}, {})["test"] is None
    result = compare({i: float(i) for i in range(10)}, {i: i + 1.0 + 0.1 * i for i in range(10)})
    assert result["test"] == "wilcoxon" and result["significant"] and result["n"] == 10


def test_more_models_compare_to_the_first_and_files_are_written(tmp_path, db, samples_jsonl):
    samples = tasks.read_samples(samples_jsonl)
    third = [{**row, "model": "gamma-model", "score": 0.0} for row in samples if row["model"] == "alpha-model"]
    tasks.create_rating_task(db, samples + third, name="three", models=["gamma-model", *MODELS])
    rate(db, "three", {"ada": lambda model, prompt_id: (3, 4) if prompt_id < 2 else None})  # a summary needs ratings
    summary = rating_summary(db, "three")
    assert summary["ratings"] == 6 and summary["run"] is None
    assert [m["model"] for m in summary["models"]] == ["gamma-model", *MODELS]
    assert {(c["model"], c["baseline"]) for c in summary["comparisons"]} == {(m, "gamma-model") for m in MODELS}
    json_path, md_path = write_rating_summary(summary, tmp_path / "out")
    assert json.loads(json_path.read_text()) == summary and md_path.read_text() == format_rating_table(summary)


def test_summary_errors(db, samples_jsonl):
    with pytest.raises(RlhfLabError, match="No labelling database"):
        rating_summary(db)
    tasks.create_label_task(db, str(samples_jsonl), name="lab")
    with pytest.raises(RlhfLabError, match="has no rating task"):
        rating_summary(db)
    with pytest.raises(RlhfLabError, match="'lab' is a label task, not a rating task"):
        rating_summary(db, "lab")
