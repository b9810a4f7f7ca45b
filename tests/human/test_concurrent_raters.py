"""Several raters at once against the real server (its thread pool, one SQLite file): every
answer is stored exactly once, even when each is sent twice at the same moment."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.human.serving import running_server

RATERS = [f"rater-{i}" for i in range(6)]


def test_concurrent_raters_and_double_submits_store_each_answer_once(tmp_path, db, rating_task):
    with running_server(db, tmp_path / "server.log") as server:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            items = []  # every item id, via one rater's walk through the task (then undone)
            state = client.get(f"/api/tasks/{rating_task}/next", params={"rater": "scout"}).json()
            while state["item"] is not None:
                items.append(state["item"]["id"])
                state = client.post(f"/api/tasks/{rating_task}/answers",
                                    json={"rater": "scout", "item_id": items[-1], "answer": {"positivity": 3, "sense": 3}}).json()
            for _ in items:
                client.post(f"/api/tasks/{rating_task}/undo", json={"rater": "scout"})

        def submit(job):
            rater, item, value = job
            with httpx.Client(base_url=server.url, timeout=30) as own:
                return own.post(f"/api/tasks/{rating_task}/answers",
                                json={"rater": rater, "item_id": item, "answer": {"positivity": value, "sense": 6 - value}})

        # each (rater, item) twice, all interleaved: 6 raters x 16 items x 2 = 192 requests on 12 threads
        jobs = [(rater, item, 1 + (r + i) % 5) for i, item in enumerate(items) for r, rater in enumerate(RATERS)]
        with ThreadPoolExecutor(max_workers=12) as pool:
            responses = list(pool.map(submit, [job for job in jobs for _ in range(2)]))

    assert len(items) == 16
    assert all(r.status_code == 201 for r in responses), {r.status_code: r.text for r in responses}
    saved = [r.json()["saved"] for r in responses]
    assert saved.count(True) == len(jobs) and saved.count(False) == len(jobs)  # one stored, one recognised as a repeat
    with sqlite3.connect(db) as conn:
        stored = conn.execute(
            "SELECT r.name, a.item_id, json_extract(a.value, '$.positivity') FROM answers a JOIN raters r ON a.rater_id = r.id"
        ).fetchall()
        assert conn.execute("SELECT COUNT(*) FROM raters").fetchone()[0] == len(RATERS) + 1  # no duplicate raters
    assert sorted(stored) == sorted(jobs)
