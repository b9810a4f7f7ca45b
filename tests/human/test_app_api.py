"""The web app's API through FastAPI's test client: the answer flow, undo, validation, blindness, access."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from rlhflab.human import tasks
from tests.human.conftest import MODELS, SOURCES, score_of

RATER = "Ada"


def next_of(client, task, rater=RATER):
    response = client.get(f"/api/tasks/{task}/next", params={"rater": rater})
    assert response.status_code == 200, response.text
    return response.json()


def answer(client, task, item_id, value, rater=RATER):
    return client.post(f"/api/tasks/{task}/answers", json={"rater": rater, "item_id": item_id, "answer": value, "elapsed_ms": 1200})


def rows(db, sql):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_rating_flow_commits_each_answer_and_shows_progress(make_client, db, rating_task):
    client = make_client()
    state = next_of(client, rating_task)
    assert state["progress"] == {"answered": 0, "total": 16}
    assert state["task"]["kind"] == "rating" and [s["name"] for s in state["task"]["scales"]] == ["positivity", "sense"]
    seen = set()
    for n in range(16):
        item = state["item"]
        assert item["id"] not in seen
        seen.add(item["id"])
        response = answer(client, rating_task, item["id"], {"positivity": 1 + n % 5, "sense": 5 - n % 5})
        assert response.status_code == 201, response.text
        state = response.json()
        assert state["saved"] is True and state["progress"]["answered"] == n + 1
        # committed before the response: another connection sees it now
        assert rows(db, "SELECT COUNT(*) FROM answers")[0][0] == n + 1
    assert state["item"] is None and state["progress"] == {"answered": 16, "total": 16}
    stored = rows(db, "SELECT value, elapsed_ms FROM answers ORDER BY id")
    assert json.loads(stored[0][0]) == {"positivity": 1, "sense": 5} and stored[0][1] == 1200


def test_nothing_sent_to_the_page_reveals_the_model_source_or_score(make_client, rating_task):
    client = make_client()
    secrets = [*MODELS, *SOURCES.values(), "alpha", "beta", "secret"]
    secrets += [f"{score_of(m, p)}"[:7] for m in MODELS for p in range(8)]
    bodies = [client.get("/").text, client.get("/static/app.js").text, client.get("/api/tasks").text]
    state = next_of(client, rating_task)
    bodies.append(json.dumps(state))
    while state["item"] is not None:
        assert set(state["item"]) == {"id", "prompt", "text"}  # nothing else travels with an item
        assert re.fullmatch(r"[0-9a-f]{16}", state["item"]["id"])  # random, not a position or a model
        response = answer(client, rating_task, state["item"]["id"], {"positivity": 3, "sense": 3})
        bodies.append(response.text)
        state = response.json()
    bodies.append(client.post(f"/api/tasks/{rating_task}/undo", json={"rater": RATER}).text)
    for body in bodies:
        for secret in secrets:
            assert secret not in body, (secret, body[:300])


def test_item_ids_are_random_not_derived_from_the_data(db, samples_jsonl):
    samples = tasks.read_samples(samples_jsonl)
    first = tasks.create_rating_task(db, samples, name="one", seed=0)
    second = tasks.create_rating_task(db, samples, name="two", seed=0)
    assert first["items"] == second["items"] == 16
    ids = rows(db, "SELECT task_id, id FROM items ORDER BY task_id, position")
    one = [i for t, i in ids if t == 1]
    two = [i for t, i in ids if t == 2]
    assert not set(one) & set(two)  # same data, same seed, different ids
    # the shuffled order interleaves the models (neither sits in one block)
    models = [m for (m,) in rows(db, "SELECT json_extract(meta, '$.model') FROM items WHERE task_id = 1 ORDER BY position")]
    runs = sum(1 for a, b in zip(models, models[1:]) if a != b)
    assert runs >= 3


@pytest.mark.parametrize("value, fragment", [
    ({"positivity": 0, "sense": 3}, "positivity must be a whole number from 1 to 5"),
    ({"positivity": 6, "sense": 3}, "positivity must be a whole number from 1 to 5"),
    ({"positivity": 3, "sense": 3.5}, "sense must be a whole number"),
    ({"positivity": "3", "sense": 3}, "positivity must be a whole number"),
    ({"positivity": True, "sense": 3}, "positivity must be a whole number"),
    ({"positivity": 3}, "sense must be a whole number"),
    ({"positivity": 3, "sense": 3, "model": "alpha"}, "Unexpected answer field(s) model"),
    ({"label": "good"}, "Unexpected answer field(s) label"),
])
def test_scores_out_of_range_or_malformed_are_refused(make_client, db, rating_task, value, fragment):
    client = make_client()
    item = next_of(client, rating_task)["item"]
    response = answer(client, rating_task, item["id"], value)
    assert response.status_code == 422 and fragment in response.json()["detail"], response.text
    assert rows(db, "SELECT COUNT(*) FROM answers")[0][0] == 0


def test_unknown_items_tasks_and_bad_requests(make_client, db, rating_task, samples_jsonl):
    other = tasks.create_label_task(db, str(samples_jsonl), name="other")["name"]
    client = make_client()
    foreign = next_of(client, other)["item"]["id"]
    assert answer(client, rating_task, "0123456789abcdef", {"positivity": 3, "sense": 3}).status_code == 404
    assert answer(client, rating_task, foreign, {"positivity": 3, "sense": 3}).status_code == 404  # item of another task
    missing = client.get("/api/tasks/no-such-task/next", params={"rater": RATER})
    assert missing.status_code == 404 and "rate-me" in missing.json()["detail"]
    item = next_of(client, rating_task)["item"]["id"]
    for bad_rater in ("", "x" * 65, "tab\there"):
        response = client.post(f"/api/tasks/{rating_task}/answers", json={"rater": bad_rater, "item_id": item, "answer": {"positivity": 3, "sense": 3}})
        assert response.status_code == 422, bad_rater
    form = client.post(f"/api/tasks/{rating_task}/answers", content="rater=Ada", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415  # a cross-site form cannot post answers
    assert client.get("/api/tasks/rate-me/next").status_code == 422  # no rater
    assert rows(db, "SELECT COUNT(*) FROM answers")[0][0] == 0


def test_double_submit_is_stored_once_and_a_changed_answer_needs_undo(make_client, db, rating_task):
    client = make_client()
    item = next_of(client, rating_task)["item"]["id"]
    first = answer(client, rating_task, item, {"positivity": 4, "sense": 2})
    again = answer(client, rating_task, item, {"positivity": 4, "sense": 2})
    assert first.status_code == again.status_code == 201
    assert first.json()["saved"] is True and again.json()["saved"] is False
    assert again.json()["progress"]["answered"] == 1
    changed = answer(client, rating_task, item, {"positivity": 1, "sense": 2})
    assert changed.status_code == 409 and "Undo" in changed.json()["detail"]
    assert rows(db, "SELECT value FROM answers") == [('{"positivity": 4, "sense": 2}',)]


def test_undo_returns_the_last_item_with_its_answer(make_client, db, rating_task):
    client = make_client()
    first = next_of(client, rating_task)["item"]
    second = answer(client, rating_task, first["id"], {"positivity": 5, "sense": 4}).json()["item"]
    answer(client, rating_task, second["id"], {"positivity": 2, "sense": 1})
    undone = client.post(f"/api/tasks/{rating_task}/undo", json={"rater": RATER}).json()
    assert undone["undone"] == {"item_id": second["id"], "answer": {"positivity": 2, "sense": 1}}
    assert undone["item"]["id"] == second["id"] and undone["progress"]["answered"] == 1
    again = client.post(f"/api/tasks/{rating_task}/undo", json={"rater": RATER}).json()
    assert again["undone"]["item_id"] == first["id"] and again["progress"]["answered"] == 0
    assert client.post(f"/api/tasks/{rating_task}/undo", json={"rater": RATER}).json()["undone"] is None
    assert rows(db, "SELECT COUNT(*) FROM answers")[0][0] == 0


def test_raters_are_independent(make_client, rating_task):
    client = make_client()
    bob_first = next_of(client, rating_task, "Bob")["item"]["id"]
    item = next_of(client, rating_task, "Ada")["item"]["id"]
    answer(client, rating_task, item, {"positivity": 3, "sense": 3}, rater="Ada")
    assert next_of(client, rating_task, "Ada")["progress"]["answered"] == 1
    bob = next_of(client, rating_task, "Bob")
    assert bob["progress"]["answered"] == 0 and bob["item"]["id"] == bob_first
    assert client.post(f"/api/tasks/{rating_task}/undo", json={"rater": "Bob"}).json()["undone"] is None


def order_of(client, task, rater) -> list[str]:
    """The item ids in the order `rater` is given them (answering each as it comes)."""
    seen, state = [], next_of(client, task, rater)
    while state["item"] is not None:
        assert next_of(client, task, rater)["item"]["id"] == state["item"]["id"]  # a reload shows the same item
        seen.append(state["item"]["id"])
        state = answer(client, task, state["item"]["id"], {"positivity": 3, "sense": 3}, rater=rater).json()
    return seen


def test_each_rater_has_an_order_of_their_own_that_a_reload_keeps(make_client, db, rating_task):
    from rlhflab.human import store

    client = make_client()
    ada, bob = order_of(client, rating_task, "Ada"), order_of(client, rating_task, "Bob")
    by_position = [item_id for (item_id,) in rows(db, "SELECT id FROM items ORDER BY position")]
    assert sorted(ada) == sorted(bob) == sorted(by_position) and len(ada) == 16
    assert ada != bob and by_position not in (ada, bob)  # not one order for everybody
    # the order is the rater's seeded shuffle, so it survives a restart of the server
    (task_id,) = rows(db, "SELECT id FROM tasks WHERE name = 'rate-me'")[0]
    (ada_id,) = rows(db, "SELECT id FROM raters WHERE name = 'Ada'")[0]
    assert ada == [by_position[p] for p in store.rater_order(task_id, ada_id, 16)]
    assert store.rater_order(task_id, ada_id, 16) == store.rater_order(task_id, ada_id, 16) != list(range(16))
    # undo brings back the last item, then the order goes on as before
    undone = client.post(f"/api/tasks/{rating_task}/undo", json={"rater": "Ada"}).json()
    assert undone["item"]["id"] == ada[-1]
    client.post(f"/api/tasks/{rating_task}/undo", json={"rater": "Ada"})
    restarted = make_client()
    assert next_of(restarted, rating_task, "Ada")["item"]["id"] == ada[-2]


def test_label_and_pair_tasks(make_client, db, samples_jsonl):
    label = tasks.create_label_task(db, str(samples_jsonl), name="lab", labels=["good", "bad", "unsure"])["name"]
    pairs = tasks.create_label_task(db, str(samples_jsonl), kind="pairs", name="pick")["name"]
    client = make_client()
    state = next_of(client, label)
    assert state["task"]["labels"] == ["good", "bad", "unsure"] and set(state["item"]) == {"id", "prompt", "text"}
    assert state["item"]["prompt"].startswith("The film number")
    assert answer(client, label, state["item"]["id"], {"label": "meh"}).status_code == 422
    assert answer(client, label, state["item"]["id"], {"label": "unsure"}).status_code == 201
    state = next_of(client, pairs)
    assert set(state["item"]) == {"id", "prompt", "text", "text_b"} and state["progress"]["total"] == 8
    assert answer(client, pairs, state["item"]["id"], {"choice": "c"}).status_code == 422
    assert answer(client, pairs, state["item"]["id"], {"choice": "b"}).status_code == 201
    listed = client.get("/api/tasks").json()["tasks"]
    assert [(t["name"], t["kind"], t["items"]) for t in listed] == [("lab", "label", 16), ("pick", "pairs", 8)]


def test_page_renders_model_text_as_text_and_sends_security_headers(make_client, rating_task):
    client = make_client()
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\" defer></script>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]  # no inline script can run
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/app.js").text
    assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML\(|document\.write\(", script)  # HTML sinks
    assert "textContent" in script


def test_loopback_server_refuses_other_host_names(make_client, rating_task):
    client = make_client()
    assert client.get("/api/tasks").status_code == 200
    assert client.get("/api/tasks", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/api/tasks", headers={"Host": "evil.example:8000"}).status_code == 400  # DNS rebinding


def test_token_is_required_on_every_request_when_set(make_client, rating_task):
    client = make_client(token="s3cret-token", allowed_hosts=None)
    assert client.get("/").status_code == 401
    assert client.get("/api/tasks").status_code == 401
    assert client.get("/api/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    assert client.post(f"/api/tasks/{rating_task}/undo", json={"rater": RATER}).status_code == 401
    assert client.get("/api/tasks", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert client.get("/api/tasks", headers={"X-Rlhflab-Token": "s3cret-token"}).status_code == 200
    entry = client.get("/?token=s3cret-token&task=rate-me", follow_redirects=False)
    assert entry.status_code == 303 and entry.headers["location"] == "/?task=rate-me"  # token leaves the address bar
    cookie = entry.headers["set-cookie"]
    assert "rlhflab_token=s3cret-token" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/").status_code == 200  # the cookie from now on
    assert client.get(f"/api/tasks/{rating_task}/next", params={"rater": RATER}).status_code == 200


def test_resolve_token_requires_one_off_loopback(monkeypatch):
    from rlhflab.human.auth import TOKEN_ENV, resolve_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token("127.0.0.1", None) is None
    assert resolve_token("localhost", "given") == "given"
    generated = resolve_token("0.0.0.0", None)
    assert generated and len(generated) >= 24 and generated != resolve_token("0.0.0.0", None)
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token("0.0.0.0", None) == "from-env"
    assert resolve_token("192.168.1.5", "flag") == "flag"
