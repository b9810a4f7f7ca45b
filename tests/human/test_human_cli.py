"""`rlhflab serve | label create|export | rate create|summary` through the CLI entry point:
outputs, files, and one-line errors (exit 2) for every mistake a user can make."""

from __future__ import annotations

import json
import socket
import sqlite3

import pytest

from rlhflab.human import store
from tests.helpers import assert_user_error, cli_ok, cli_run


run, ok = cli_run, cli_ok


def test_label_create_answer_export_prints_the_reward_command(capsys, tmp_path, db, samples_jsonl):
    out = ok(capsys, "label", "create", "--from", samples_jsonl, "--db", db, "--limit", "6", "--labels", "positive", "negative")
    assert "Created label task 'samples-label' with 6 items" in out and "rlhflab serve --db" in out and "?task=samples-label" in out
    with store.opened(db) as conn:
        task = store.get_task(conn, "samples-label")
        ada = store.rater_id(conn, "ada")
        for n, item in enumerate(store.task_items(conn, task["id"])):
            store.add_answer(conn, item["id"], ada, {"label": "positive" if n % 2 else "negative"})
    out = ok(capsys, "label", "export", "--task", "samples-label", "--db", db, "--out", tmp_path / "labels.jsonl")
    assert "Wrote 6 labelled texts (3 positive, 3 negative)" in out
    assert f"reward.data.source={tmp_path / 'labels.jsonl'} reward.data.per_class=null" in out
    assert sorted(json.loads(line)["label"] for line in open(tmp_path / "labels.jsonl")) == [0, 0, 0, 1, 1, 1]


def test_rate_create_from_samples_and_summary_write_the_table(capsys, tmp_path, db, samples_jsonl):
    out = ok(capsys, "rate", "create", "--from-samples", samples_jsonl, "--db", db, "--prompts", "6", "--seed", "2")
    assert "Created rating task 'blind-rating': 12 responses (6 prompts x 2 models" in out
    with store.opened(db) as conn:
        task = store.get_task(conn, "blind-rating")
        ada = store.rater_id(conn, "ada")
        for item in store.task_items(conn, task["id"]):
            good = item["meta"]["model"] == "beta-model"
            store.add_answer(conn, item["id"], ada, {"positivity": 5 if good else 2, "sense": 4})
    out = ok(capsys, "rate", "summary", "--db", db)
    assert "| beta-model | 1.53 ± 0.03 | 5.00 ± 0.00 | 4.00 ± 0.00 | 6 |" in out
    assert "| beta-model vs alpha-model | positivity | +3.00 | Wilcoxon signed-rank (paired over prompts) | 6 | 0.0312 | yes |" in out
    # samples of no run folder: the summary goes beside the database, in the task's own folder
    assert "The samples are from no run folder" in ok(capsys, "rate", "create", "--from-samples", samples_jsonl, "--db", db,
                                                      "--prompts", "2", "--name", "other")
    assert (db.parent / "blind-rating" / "rating_summary.json").exists() and (db.parent / "blind-rating" / "rating_summary.md").exists()
    ok(capsys, "rate", "summary", "--db", db, "--task", "blind-rating", "--out", tmp_path / "elsewhere")
    assert json.loads((tmp_path / "elsewhere" / "rating_summary.json").read_text())["ratings"] == 12


@pytest.mark.parametrize("args, fragments", [
    (["label", "create", "--from", "nope.jsonl"], ["--from nope.jsonl: no such file"]),
    (["label", "create", "--from", "{samples}", "--text-column", "body"], ["Column 'body' not found", "response"]),
    (["label", "create", "--from", "{samples}", "--kind", "pairs", "--models", "alpha-model", "x"], ["no responses from x"]),
    (["label", "export", "--task", "nope"], ["No labelling database"]),
    (["rate", "summary"], ["No labelling database"]),
    (["rate", "create"], ["--from-samples", "--models SFT_RUN PPO_RUN"]),
    (["rate", "create", "--from-samples", "{samples}", "--prompts", "50"], ["--prompts 50 asks for more prompts", "(8)"]),
    (["rate", "create", "--from-samples", "{samples}", "--prompts", "0"], ["--prompts must be a positive whole number"]),
    (["rate", "create", "--from-samples", "missing.jsonl"], ["missing.jsonl does not exist"]),
    (["rate", "create", "--models", "only-one"], ["two or more models"]),
    (["rate", "create", "--models", "a/x", "b/x"], ["share a name", "sft=PATH"]),
    (["rate", "create", "--models", "sft=./missing-a", "ppo=./missing-b", "--reward", "none", "--config", "{config}"], ["missing-a does not exist"]),
    (["serve", "--port", "0"], ["--port must be 1-65535"]),
])
def test_user_errors_are_one_line_exit_2(capsys, monkeypatch, tmp_path, samples_jsonl, args, fragments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text("data:\n  source: reviews.csv\n  per_class: 30\n")
    from tests.helpers import synthetic_reviews

    (tmp_path / "reviews.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in synthetic_reviews(30)))
    args = [a.format(samples=samples_jsonl, config=tmp_path / "tiny.yaml") for a in args]
    assert_user_error(run(capsys, *args), *fragments)


def test_unknown_task_names_the_known_ones(capsys, db, samples_jsonl):
    ok(capsys, "label", "create", "--from", samples_jsonl, "--db", db, "--name", "mine")
    assert_user_error(run(capsys, "label", "export", "--task", "other", "--db", db), "No task named 'other'", "tasks here: mine")
    assert_user_error(run(capsys, "rate", "summary", "--task", "mine", "--db", db), "'mine' is a label task")
    assert_user_error(run(capsys, "label", "create", "--from", samples_jsonl, "--db", db, "--name", "mine"), "already exists")


def test_serve_refuses_a_port_in_use(capsys, db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_user_error(run(capsys, "serve", "--db", db, "--port", port), f"Cannot listen on 127.0.0.1:{port}", "--port")


def test_rate_create_generates_with_each_model_and_scores_with_the_reward(capsys, monkeypatch, tmp_path, db, reviews_csv,
                                                                         tiny_llama_dir, tiny_gpt2_dir, one_torch_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "length_reward.py").write_text("def reward(prompts, responses):\n    return [float(len(r)) for r in responses]\n")
    (tmp_path / "tiny.yaml").write_text(f"data:\n  source: {reviews_csv}\n  per_class: 30\n")
    out = ok(capsys, "rate", "create", "--models", f"sft={tiny_llama_dir}", f"ppo={tiny_gpt2_dir}", "--prompts", "4",
             "--config", "tiny.yaml", "--reward", "length_reward.py:reward", "--max-new-tokens", "6", "--db", db)
    assert "generating 4 responses with sft" in out and "generating 4 responses with ppo" in out
    assert "Created rating task 'blind-rating': 8 responses (4 prompts x 2 models: sft, ppo)" in out
    samples = [json.loads(line) for line in open(db.parent / "blind-rating-samples.jsonl")]
    assert [(s["model"], s["prompt_id"]) for s in samples] == [("sft", i) for i in range(4)] + [("ppo", i) for i in range(4)]
    assert all(s["score"] == len(s["response"]) and s["source"] in (str(tiny_llama_dir), str(tiny_gpt2_dir)) for s in samples)
    assert [s["prompt"] for s in samples[:4]] == [s["prompt"] for s in samples[4:]]  # the same prompts for both
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 8
    with store.opened(db) as conn:  # one rating: a summary of none is refused
        item = store.task_items(conn, store.get_task(conn, "blind-rating")["id"])[0]
        store.add_answer(conn, item["id"], store.rater_id(conn, "ada"), {"positivity": 3, "sense": 3})
    out = ok(capsys, "rate", "summary", "--db", db)
    mean_sft = sum(s["score"] for s in samples[:4]) / 4
    assert f"| sft | {mean_sft:.2f} ± " in out


def test_rate_create_without_a_trained_reward_says_how_to_get_one(capsys, monkeypatch, tmp_path, db, tiny_llama_dir):
    monkeypatch.chdir(tmp_path)
    result = run(capsys, "rate", "create", "--models", f"a={tiny_llama_dir}", f"b={tiny_llama_dir}", "--db", db)
    assert_user_error(result, "No reward model at runs/default/reward", "--reward none")
