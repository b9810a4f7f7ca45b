"""Issue 10 faults in the human tools: empty responses are kept and shown, whatever is left out
is counted and printed, rater names cannot be blank, and number labels need an explicit mapping."""

from __future__ import annotations

import json

import pytest

from rlhflab.data import load_pairs, load_reviews
from rlhflab.errors import RlhfLabError
from rlhflab.human import store, tasks
from tests.human.conftest import MODELS
from tests.helpers import cli_ok, cli_run


run, ok = cli_run, cli_ok


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def samples_with_empty(path, n=5, empty=(0, 2, 4)):
    """Two models on `n` prompts; beta's response is "" on the prompts in `empty`."""
    rows = []
    for pid in range(n):
        for model in MODELS:
            response = "" if model == "beta-model" and pid in empty else f" {model} says {pid}"
            rows.append({"prompt_id": pid, "prompt": f"Prompt {pid}", "model": model, "response": response, "score": 0.1 * pid})
    return write_jsonl(path, rows)


def items_of(db, task):
    with store.opened(db) as conn:
        return store.task_items(conn, store.get_task(conn, task)["id"])


def answer_all(db, task, choose, rater="Ada"):
    with store.opened(db) as conn:
        rater_id = store.rater_id(conn, rater)
        for item in store.task_items(conn, store.get_task(conn, task)["id"]):
            value = choose(item)
            if value is not None:
                store.add_answer(conn, item["id"], rater_id, value)


# --- empty responses are kept ---------------------------------------------------------------


def test_rate_create_keeps_prompts_with_an_empty_response(capsys, tmp_path, db):
    source = samples_with_empty(tmp_path / "samples.jsonl")
    out = ok(capsys, "rate", "create", "--from-samples", source, "--db", db)
    assert "10 responses (5 prompts x 2 models" in out
    assert "Kept 5 prompts; 0 left out." in out
    items = items_of(db, "blind-rating")
    empty = sorted(i["meta"]["prompt_id"] for i in items if i["text"] == "")
    assert empty == [0, 2, 4] and all(i["meta"]["model"] == "beta-model" for i in items if i["text"] == "")


def test_rate_create_counts_null_duplicate_and_unshared_rows(capsys, tmp_path, db):
    rows = [json.loads(line) for line in samples_with_empty(tmp_path / "s.jsonl", empty=()).read_text().splitlines()]
    rows[1]["response"] = None  # beta on prompt 0: no response at all
    rows.append(dict(rows[2], response="a second answer"))  # alpha on prompt 1 again
    source = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = ok(capsys, "rate", "create", "--from-samples", source, "--db", db, "--prompts", "3")
    assert ("Kept 3 prompts; left out 4: 1 row with no response (null), 1 row repeating a prompt and model "
            "(the first is used), 1 prompt without a response from every model, 1 prompt beyond --prompts 3.") in out
    texts = {i["text"] for i in items_of(db, "blind-rating")}
    assert " alpha-model says 1" in texts and "a second answer" not in texts


def test_pairs_from_samples_keep_an_empty_response_and_count_the_rest(capsys, tmp_path, db):
    source = samples_with_empty(tmp_path / "samples.jsonl")
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    rows += [{"prompt_id": 5, "prompt": "Prompt 5", "model": m, "response": ""} for m in MODELS]  # both empty
    rows += [{"prompt_id": 6, "prompt": "Prompt 6", "model": "alpha-model", "response": "alone"},
             {"prompt_id": 6, "prompt": "Prompt 6", "model": "gamma-model", "response": "third model"}]
    write_jsonl(source, rows)
    out = ok(capsys, "label", "create", "--from", source, "--kind", "pairs", "--db", db, "--name", "pick")
    assert "Created pairs task 'pick' with 5 items" in out
    assert ("Kept 5 items; left out 3: 1 row from other models (choose two with --models), "
            "1 prompt where both models gave the same response, 1 prompt without a response from both models.") in out
    items = items_of(db, "pick")
    assert sum("" in (i["text"], i["text_b"]) for i in items) == 3


def test_pairs_from_columns_keep_empty_strings_and_count_nulls(tmp_path, db):
    rows = [{"prompt": "q0", "response_a": "", "response_b": "an answer"},
            {"prompt": "q1", "response_a": "yes", "response_b": None},
            {"prompt": "q2", "response_a": "same", "response_b": "same"},
            {"prompt": "q3", "response_a": "left", "response_b": "right"}]
    created = tasks.create_label_task(db, str(write_jsonl(tmp_path / "p.jsonl", rows)), kind="pairs", name="cols")
    assert created["items"] == 2
    assert created["left_out"] == {"rows with no value (null) in 'response_a' or 'response_b'": 1,
                                   "rows with the same text in both responses": 1}
    assert {frozenset((i["text"], i["text_b"])) for i in items_of(db, "cols")} == {frozenset(("", "an answer")),
                                                                                   frozenset(("left", "right"))}


def test_pair_export_leaves_out_and_counts_pairs_with_an_empty_side(capsys, tmp_path, db):
    source = samples_with_empty(tmp_path / "samples.jsonl", n=4, empty=(1,))
    tasks.create_label_task(db, str(source), kind="pairs", name="pick")
    answer_all(db, "pick", lambda item: {"choice": "a" if item["text"] else "b"})  # the non-empty one
    out = ok(capsys, "label", "export", "--task", "pick", "--db", db, "--out", tmp_path / "pairs.jsonl")
    assert "Wrote 3 preference pairs" in out
    assert "left out 1: 1 pair with an empty response (the reward stage needs two texts)" in out
    assert len(load_pairs(str(tmp_path / "pairs.jsonl"))) == 3


def test_label_task_keeps_an_empty_response_to_a_prompt(capsys, tmp_path, db):
    rows = [{"prompt": "Once", "response": ""}, {"prompt": "", "response": ""}, {"prompt": "Then", "response": " it rained"}]
    out = ok(capsys, "label", "create", "--from", write_jsonl(tmp_path / "t.jsonl", rows), "--db", db, "--name", "lab")
    assert "Kept 2 items; left out 1: 1 row with empty text." in out
    assert sorted((i["prompt"], i["text"]) for i in items_of(db, "lab")) == [("Once", ""), ("Then", "it rained")]


def test_page_shows_a_placeholder_for_an_empty_response(make_client, tmp_path, db):
    source = samples_with_empty(tmp_path / "samples.jsonl", n=1, empty=(0,))
    tasks.create_rating_task(db, tasks.read_samples(source), name="r")
    client = make_client()
    texts = set()
    for _ in range(2):
        state = client.get("/api/tasks/r/next", params={"rater": "Ada"}).json()
        texts.add(state["item"]["text"])  # the stored text, empty, goes out as it is
        client.post("/api/tasks/r/answers", json={"rater": "Ada", "item_id": state["item"]["id"],
                                                  "answer": {"positivity": 3, "sense": 3}})
    assert "" in texts
    script = client.get("/static/app.js").text
    assert 'const EMPTY = "(empty response)";' in script
    assert "element.textContent = value || EMPTY;" in script  # textContent: shown as text, never as markup


# --- rater names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["   ", " \t ", "\u00a0"])
def test_blank_rater_names_are_refused_everywhere(make_client, rating_task, db, name):
    client = make_client()
    first = client.get(f"/api/tasks/{rating_task}/next", params={"rater": "Ada"}).json()["item"]
    calls = [client.get(f"/api/tasks/{rating_task}/next", params={"rater": name}),
             client.post(f"/api/tasks/{rating_task}/answers", json={"rater": name, "item_id": first["id"],
                                                                    "answer": {"positivity": 3, "sense": 3}}),
             client.post(f"/api/tasks/{rating_task}/undo", json={"rater": name})]
    for response in calls:
        assert response.status_code == 422
        assert response.json()["detail"] == "The rater name is blank. Type your name (not only spaces) and continue."
    with store.opened(db) as conn:
        assert [r["name"] for r in conn.execute("SELECT name FROM raters")] == ["Ada"]
        with pytest.raises(RlhfLabError, match="not blank"):
            store.rater_id(conn, "  ")


def test_rater_names_are_trimmed(make_client, rating_task, db):
    client = make_client()
    item = client.get(f"/api/tasks/{rating_task}/next", params={"rater": "  Ada "}).json()["item"]
    response = client.post(f"/api/tasks/{rating_task}/answers", json={"rater": "Ada ", "item_id": item["id"],
                                                                       "answer": {"positivity": 3, "sense": 3}})
    assert response.status_code == 201
    assert client.get(f"/api/tasks/{rating_task}/next", params={"rater": "Ada"}).json()["progress"]["answered"] == 1
    with store.opened(db) as conn:
        assert [r["name"] for r in conn.execute("SELECT name FROM raters")] == ["Ada"]


def test_page_says_a_blank_name_is_not_accepted(make_client):
    script = make_client().get("/static/app.js").text
    assert 'showError("Type your name: it cannot be blank or only spaces.");' in script


# --- labels keep their meaning -----------------------------------------------------------------


def star_task(db, tmp_path, stars=(1, 5, 3, 4, 2, 1)):
    rows = [{"text": f"review with {s} stars"} for s in stars]
    tasks.create_label_task(db, str(write_jsonl(tmp_path / "reviews.jsonl", rows)), name="stars",
                            labels=["1", "2", "3", "4", "5"])
    answer_all(db, "stars", lambda item: {"label": item["text"].split()[2]})


def test_star_labels_are_not_exported_without_a_mapping(tmp_path, db):
    star_task(db, tmp_path)
    with pytest.raises(RlhfLabError) as err:
        tasks.export_labels(db, "stars")
    message = str(err.value)
    assert "labels 1 2 3 4 5" in message and "numbers (1, 2, 3, 4, 5) are a scale" in message
    assert "rlhflab label export --task stars --positive LABEL... --negative LABEL..." in message
    assert not (db.parent / "stars-labels.jsonl").exists()


def test_star_labels_export_with_an_explicit_mapping(capsys, tmp_path, db):
    star_task(db, tmp_path)
    out = ok(capsys, "label", "export", "--task", "stars", "--db", db, "--positive", "4", "5", "--negative", "1", "2")
    assert "Wrote 5 labelled texts (2 positive, 3 negative)" in out
    assert "left out 1: 1 item labelled '3' (neither positive nor negative)." in out
    reviews = load_reviews(str(db.parent / "stars-labels.jsonl"))
    assert sorted((r.text.split()[2], r.label) for r in reviews) == [("1", 0), ("1", 0), ("2", 0), ("4", 1), ("5", 1)]


def test_label_create_with_number_labels_says_how_to_export(capsys, tmp_path, db):
    source = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": "b"}])
    out = ok(capsys, "label", "create", "--from", source, "--db", db, "--labels", "1", "2", "3", "4", "5")
    assert "The labels 1 2 3 4 5 are numbers, not positive/negative" in out
    assert "--positive 5 --negative 1" in out


@pytest.mark.parametrize("flags, fragment", [
    ({"positive": ["6"], "negative": ["1"]}, "--positive '6' is not a label of task 'stars'; its labels are: 1 2 3 4 5."),
    ({"positive": ["4", "5"], "negative": ["5"]}, "5 given both as --positive and as --negative"),
])
def test_bad_mappings_say_what_to_do(tmp_path, db, flags, fragment):
    star_task(db, tmp_path)
    with pytest.raises(RlhfLabError) as err:
        tasks.export_labels(db, "stars", **flags)
    assert fragment in str(err.value)


def test_mapping_flags_are_refused_for_a_pairs_task(tmp_path, db, samples_jsonl):
    tasks.create_label_task(db, str(samples_jsonl), kind="pairs", name="pick")
    answer_all(db, "pick", lambda item: {"choice": "a"})
    with pytest.raises(RlhfLabError, match="'pick' is a pairs task"):
        tasks.export_labels(db, "pick", positive=["a"], negative=["b"])


@pytest.mark.parametrize("labels, expected", [
    (["bad", "unsure"], {"bad": 0, "unsure": 1}),  # the unknown one of two is the opposite, not "first is positive"
    (["meh", "good"], {"meh": 0, "good": 1}),
    (["1", "0"], {"1": 1, "0": 0}),
    (["happy", "sad", "skip"], {"happy": 1, "sad": 0, "skip": None}),
])
def test_label_values_keep_meaning(labels, expected):
    assert tasks.label_values(labels) == expected


@pytest.mark.parametrize("labels, fragment", [
    (["0", "1", "2"], "numbers (0, 1, 2) are a scale"),
    (["1", "2"], "numbers (1, 2) are a scale"),
    (["red", "green", "blue"], "none of them positive or negative"),
])
def test_label_values_refuse_to_guess(labels, fragment):
    with pytest.raises(RlhfLabError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        tasks.label_values(labels, task="t")


def test_explicit_mapping_matches_labels_ignoring_case():
    assert tasks.label_values(["Great", "OK", "Awful"], ["great"], ["AWFUL"]) == {"Great": 1, "OK": None, "Awful": 0}


def test_export_counts_items_not_answered_yet(capsys, tmp_path, db, samples_jsonl):
    tasks.create_label_task(db, str(samples_jsonl), name="lab", limit=4)
    with store.opened(db) as conn:
        first = store.task_items(conn, store.get_task(conn, "lab")["id"])[0]
        store.add_answer(conn, first["id"], store.rater_id(conn, "Ada"), {"label": "good"})
    out = ok(capsys, "label", "export", "--task", "lab", "--db", db)
    assert "Wrote 1 labelled texts (1 positive, 0 negative)" in out and "left out 3: 3 items not answered yet." in out
