"""The labelling / blind-rating web app (FastAPI): one static page and a small JSON API.

    GET  /                              the page (static/index.html, app.js, style.css)
    GET  /api/tasks                     tasks raters can open: name, kind, question, size
    GET  /api/tasks/{task}/next?rater=  the task, the rater's progress and next item (null when done)
    POST /api/tasks/{task}/answers      {"rater", "item_id", "answer": {...}, "elapsed_ms"} -> progress + next item
    POST /api/tasks/{task}/undo         {"rater"} -> the undone item's id and answer, progress + next item

An item goes out as {"id", "prompt", "text", "text_b"} only: its id is random and the model,
source and reward score stay in the database. An answer is committed before the response
that carries the next item is sent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from rlhflab.errors import RlhfLabError
from rlhflab.human import answers, store
from rlhflab.human.auth import LOOPBACK, guard

STATIC = Path(__file__).with_name("static")
# Checked in `rater_name`, not by pydantic patterns, so the page can show a message people read.
RATER_NAME = dict(max_length=1000)
RATER_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Answer(BaseModel):
    rater: str = Field(**RATER_NAME)
    item_id: str = Field(min_length=1, max_length=64)
    answer: dict[str, Any]
    elapsed_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class Undo(BaseModel):
    rater: str = Field(**RATER_NAME)


def rater_name(raw: str) -> str:
    """The name as stored: trimmed, so " Ada " and "Ada" are one rater; blank is refused (422)."""
    name = raw.strip()
    if not name:
        raise RlhfLabError("The rater name is blank. Type your name (not only spaces) and continue.")
    if RATER_CONTROL.search(name):
        raise RlhfLabError("The rater name contains a tab, newline or other control character. Type it on one line.")
    if len(name) > 64:
        raise RlhfLabError(f"The rater name is {len(name)} characters long; use at most 64.")
    return name


def create_app(db_path: str | Path, *, token: str | None = None, allowed_hosts: tuple[str, ...] | None = LOOPBACK) -> FastAPI:
    """The app over the database at `db_path` (created if missing). With `token`, every request
    must carry it; `allowed_hosts` limits the Host header (None: any, for a server on a network)."""
    db_path = Path(db_path)
    store.connect(db_path).close()  # create the schema once, and fail now rather than per request
    app = FastAPI(title="rlhflab", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(guard(token, allowed_hosts))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RlhfLabError)
    async def user_error(request: Request, exc: RlhfLabError) -> JSONResponse:
        status = 404 if isinstance(exc, store.NotFound) else 409 if isinstance(exc, store.Conflict) else 422
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/api/tasks")
    def tasks() -> dict:
        with store.opened(db_path) as conn:
            return {"tasks": [{"name": t["name"], "kind": t["kind"], "question": t["config"]["question"], "items": t["items"]}
                              for t in store.list_tasks(conn)]}

    @app.get("/api/tasks/{task}/next")
    def next_item(task: str, rater: str = Query(**RATER_NAME)) -> dict:
        with store.opened(db_path) as conn:
            info = store.get_task(conn, task)
            return _state(conn, info, store.rater_id(conn, rater_name(rater)))

    @app.post("/api/tasks/{task}/answers", status_code=201)
    def answer(task: str, body: Answer) -> dict:
        with store.opened(db_path) as conn:
            info = store.get_task(conn, task)
            item = store.get_item(conn, info["id"], body.item_id)
            value = answers.validate_answer(info["kind"], info["config"], body.answer)
            rater = store.rater_id(conn, rater_name(body.rater))
            saved = store.add_answer(conn, item["id"], rater, value, body.elapsed_ms)
            return {"saved": saved, **_state(conn, info, rater)}  # read after the commit

    @app.post("/api/tasks/{task}/undo")
    def undo(task: str, body: Undo) -> dict:
        with store.opened(db_path) as conn:
            info = store.get_task(conn, task)
            rater = store.rater_id(conn, rater_name(body.rater))
            undone = store.undo_last(conn, info["id"], rater)
            state = _state(conn, info, rater)
            return {"undone": {"item_id": undone[0], "answer": undone[1]} if undone else None, **state}

    return app


def public_task(info: dict) -> dict:
    """What a rater may know about a task (no models, sources or file names)."""
    return {"name": info["name"], "kind": info["kind"], **info["config"]}


def public_item(row) -> dict:
    item = {"id": row["id"], "prompt": row["prompt"], "text": row["text"]}
    if row["text_b"] is not None:
        item["text_b"] = row["text_b"]
    return item


def _state(conn, info: dict, rater: int) -> dict:
    answered, total = store.progress(conn, info["id"], rater)
    row = store.next_item(conn, info["id"], rater)
    return {"task": public_task(info), "progress": {"answered": answered, "total": total},
            "item": public_item(row) if row is not None else None}
