"""Kill the server process (SIGKILL, no shutdown) while a rater is submitting: every answer the
server acknowledged is in the database, and a restarted server carries on where it stopped."""

from __future__ import annotations

import signal
import sqlite3
import threading

import httpx

from rlhflab.human.tasks import create_rating_task, read_samples
from tests.human.conftest import write_samples
from tests.human.serving import start_server, stop_server

ITEMS = 80  # far more than get answered before the kill lands, even on a busy machine


def test_killing_the_server_mid_session_loses_no_acknowledged_answer(tmp_path, db):
    samples = read_samples(write_samples(tmp_path / "samples.jsonl", n_prompts=ITEMS // 2))
    rating_task = create_rating_task(db, samples, name="long")["name"]
    server = start_server(db, tmp_path / "server.log")
    acknowledged: list[str] = []
    killed = threading.Event()

    def rater():
        with httpx.Client(base_url=server.url, timeout=10) as client:
            state = client.get(f"/api/tasks/{rating_task}/next", params={"rater": "Ada"}).json()
            try:
                while state["item"] is not None:
                    item = state["item"]["id"]
                    response = client.post(f"/api/tasks/{rating_task}/answers",
                                           json={"rater": "Ada", "item_id": item, "answer": {"positivity": 4, "sense": 2}})
                    if response.status_code != 201:
                        return
                    acknowledged.append(item)
                    state = response.json()
            except httpx.HTTPError:
                assert killed.is_set()  # only the kill may interrupt the session

    thread = threading.Thread(target=rater)
    try:
        thread.start()
        while len(acknowledged) < 6 and thread.is_alive():
            thread.join(0.01)
        killed.set()
        server.process.send_signal(signal.SIGKILL)  # no cleanup, no shutdown handler: a crash
        server.process.wait(timeout=10)
        thread.join(timeout=20)
    finally:
        stop_server(server)
    assert 6 <= len(acknowledged) < ITEMS, "the kill must land mid-session"

    with sqlite3.connect(db) as conn:
        stored = [row[0] for row in conn.execute("SELECT item_id FROM answers ORDER BY id")]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stored[: len(acknowledged)] == acknowledged  # every acknowledged answer, in order, once
    assert len(stored) - len(acknowledged) <= 1  # at most the one in flight when the kill came

    server = start_server(db, tmp_path / "server2.log")
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            state = client.get(f"/api/tasks/{rating_task}/next", params={"rater": "Ada"}).json()
            assert state["progress"]["answered"] == len(stored)
            assert state["item"]["id"] not in stored  # continues with the first unanswered item
            response = client.post(f"/api/tasks/{rating_task}/answers",
                                   json={"rater": "Ada", "item_id": state["item"]["id"], "answer": {"positivity": 1, "sense": 1}})
            assert response.status_code == 201 and response.json()["progress"]["answered"] == len(stored) + 1
    finally:
        stop_server(server)
