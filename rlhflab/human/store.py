"""The SQLite store behind the labelling / rating app: schema and every query.

    tasks    one labelling or rating job (kind: label | pairs | rating); `config` is what raters
             may see (question, label set, scales), `info` is hidden (models, where items came from)
    items    what a rater judges, in a shuffled `position`; `id` is random and opaque, and `meta`
             (model, source, reward score, original row) never leaves the server. Each rater
             gets the items in an order of their own (`rater_order`)
    raters   people, by the name they type in
    answers  one per (item, rater): the value as JSON, when, and how long the rater took

The database runs in WAL mode with synchronous=FULL, and every write is its own short
`BEGIN IMMEDIATE` transaction: an answer is on disk when the request that sent it returns,
so killing the server loses nothing, and several raters (threads or processes) can write at
once without "database is locked" upgrades (IMMEDIATE takes the write lock up front; others
wait up to `BUSY_TIMEOUT_MS`).
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import secrets
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from rlhflab.errors import RlhfLabError

DEFAULT_DB = Path("runs/human/rlhflab.sqlite")
BUSY_TIMEOUT_MS = 30_000
KINDS = ("label", "pairs", "rating")
SCHEMA_VERSION = 1
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # goes into URLs as one path segment

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL CHECK (kind IN ('label', 'pairs', 'rating')),
    config TEXT NOT NULL,
    info TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    task_id INTEGER NOT NULL REFERENCES tasks(id),
    position INTEGER NOT NULL,
    prompt TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL,
    text_b TEXT,
    meta TEXT NOT NULL,
    UNIQUE (task_id, position)
);
CREATE TABLE IF NOT EXISTS raters (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL REFERENCES items(id),
    rater_id INTEGER NOT NULL REFERENCES raters(id),
    value TEXT NOT NULL,
    elapsed_ms INTEGER,
    created_at TEXT NOT NULL,
    UNIQUE (item_id, rater_id)
);
CREATE INDEX IF NOT EXISTS answers_by_rater ON answers (rater_id, item_id);
"""


class NotFound(RlhfLabError):
    """An unknown task or item (HTTP 404)."""


class Conflict(RlhfLabError):
    """The rater already answered this item differently (HTTP 409)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def connect(db_path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """Open (and create, with its schema) the database; autocommit, writes go through `write`."""
    path = Path(db_path).expanduser()
    if path.is_symlink():  # its tables (and -wal/-shm files) would go into whatever file it points to
        raise RlhfLabError(f"The labelling database {path} is a symbolic link; rlhflab writes into the database "
                           "file itself, so it does not follow links. Put the database file there, or point --db at "
                           "the file the link names.")
    if not path.exists():
        if not create:
            raise RlhfLabError(
                f"No labelling database at {path}. Create a task first (`rlhflab label create` or "
                "`rlhflab rate create`), or point --db at the right file."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")  # a returned answer survives a crash of the machine too
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            _create_schema(conn)
    except sqlite3.DatabaseError as exc:
        raise RlhfLabError(f"{path} is not a usable SQLite database ({exc}). Point --db at another file.") from None
    return conn


def _create_schema(conn: sqlite3.Connection) -> None:
    # Under the write lock, so two processes opening a new database at once do not race.
    with write(conn):
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def opened(db_path: str | Path, *, create: bool = True) -> Iterator[sqlite3.Connection]:
    conn = connect(db_path, create=create)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: the lock is taken at BEGIN, so two writers never deadlock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def new_item_id() -> str:
    """Random, so an id says nothing about the item's model, source or position."""
    return secrets.token_hex(8)


# --- tasks -------------------------------------------------------------------------------


def create_task(conn: sqlite3.Connection, name: str, kind: str, config: dict, info: dict, items: list[dict]) -> int:
    """Insert a task and its items (displayed in the given order). Items: prompt, text, text_b, meta."""
    if kind not in KINDS:
        raise RlhfLabError(f"Unknown task kind {kind!r}; use one of {', '.join(KINDS)}.")
    if not TASK_NAME.fullmatch(name):
        raise RlhfLabError(f"Task name {name!r} is not usable in a web address; use letters, digits, '.', '_' and '-' (at most 64).")
    if not items:
        raise RlhfLabError(f"Task {name!r} would have no items; give it a file with rows.")
    with write(conn):
        if conn.execute("SELECT 1 FROM tasks WHERE name = ?", (name,)).fetchone():
            raise RlhfLabError(f"A task named {name!r} already exists in this database. Choose another --name.")
        task_id = conn.execute(
            "INSERT INTO tasks (name, kind, config, info, created_at) VALUES (?, ?, ?, ?, ?)",
            (name, kind, json.dumps(config), json.dumps(info), now()),
        ).lastrowid
        conn.executemany(
            "INSERT INTO items (id, task_id, position, prompt, text, text_b, meta) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (new_item_id(), task_id, position, item.get("prompt") or "", item["text"], item.get("text_b"), json.dumps(item.get("meta", {})))
                for position, item in enumerate(items)
            ],
        )
    return int(task_id)


def _task(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "kind": row["kind"], "config": json.loads(row["config"]),
            "info": json.loads(row["info"]), "created_at": row["created_at"]}


def get_task(conn: sqlite3.Connection, name: str) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM tasks WHERE name = ?", (name,)).fetchone()
    if row is None:
        names = [r["name"] for r in conn.execute("SELECT name FROM tasks ORDER BY id")]
        known = f"tasks here: {', '.join(names)}" if names else "the database has no tasks yet"
        raise NotFound(f"No task named {name!r} ({known}). Check the name, or create it with `rlhflab label create` / `rlhflab rate create`.")
    return _task(row)


def list_tasks(conn: sqlite3.Connection, kind: str | None = None) -> list[dict[str, Any]]:
    """Every task (oldest first) with its item and answer counts."""
    rows = conn.execute(
        "SELECT t.*, (SELECT COUNT(*) FROM items i WHERE i.task_id = t.id) AS n_items, "
        "(SELECT COUNT(*) FROM answers a JOIN items i ON a.item_id = i.id WHERE i.task_id = t.id) AS n_answers "
        "FROM tasks t" + (" WHERE t.kind = ?" if kind else "") + " ORDER BY t.id",
        (kind,) if kind else (),
    ).fetchall()
    return [{**_task(r), "items": r["n_items"], "answers": r["n_answers"]} for r in rows]


# --- raters, items, answers --------------------------------------------------------------


def rater_id(conn: sqlite3.Connection, name: str) -> int:
    """The rater's id, created on first use; the name is trimmed and must not be blank."""
    name = name.strip()
    if not name:  # a blank name would pool answers from everyone who left it empty
        raise RlhfLabError("A rater needs a name that is not blank. Type a name (not only spaces).")
    row = conn.execute("SELECT id FROM raters WHERE name = ?", (name,)).fetchone()
    if row:
        return int(row["id"])
    with write(conn):
        conn.execute("INSERT OR IGNORE INTO raters (name, created_at) VALUES (?, ?)", (name, now()))
    return int(conn.execute("SELECT id FROM raters WHERE name = ?", (name,)).fetchone()["id"])


def progress(conn: sqlite3.Connection, task_id: int, rater: int) -> tuple[int, int]:
    """(answered by this rater, items in the task)."""
    total = conn.execute("SELECT COUNT(*) FROM items WHERE task_id = ?", (task_id,)).fetchone()[0]
    answered = conn.execute(
        "SELECT COUNT(*) FROM answers a JOIN items i ON a.item_id = i.id WHERE i.task_id = ? AND a.rater_id = ?",
        (task_id, rater),
    ).fetchone()[0]
    return int(answered), int(total)


def rater_order(task_id: int, rater: int, n: int) -> list[int]:
    """The item positions 0..n-1 in the order this rater sees them: a shuffle seeded by the task
    and the rater, so raters see different orders (order effects average out over raters) and
    one rater's order is the same on every request (a reload, a restart, undo)."""
    order = list(range(n))
    random.Random(f"rlhflab-order:{task_id}:{rater}").shuffle(order)  # a str seed hashes the same in every process
    return order


def next_item(conn: sqlite3.Connection, task_id: int, rater: int) -> sqlite3.Row | None:
    """The first item, in this rater's order (`rater_order`), they have not answered; None when all are done."""
    rows = conn.execute(
        "SELECT * FROM items i WHERE i.task_id = ? AND NOT EXISTS "
        "(SELECT 1 FROM answers a WHERE a.item_id = i.id AND a.rater_id = ?)",
        (task_id, rater),
    ).fetchall()
    if not rows:
        return None
    total = conn.execute("SELECT MAX(position) + 1 FROM items WHERE task_id = ?", (task_id,)).fetchone()[0]
    rank = {position: index for index, position in enumerate(rater_order(task_id, rater, total))}
    return min(rows, key=lambda row: rank[row["position"]])


def get_item(conn: sqlite3.Connection, task_id: int, item_id: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM items WHERE id = ? AND task_id = ?", (item_id, task_id)).fetchone()
    if row is None:
        raise NotFound(f"No item {item_id!r} in this task. Reload the page to get the current item.")
    return row


def add_answer(conn: sqlite3.Connection, item_id: str, rater: int, value: dict, elapsed_ms: int | None = None) -> bool:
    """Store one answer; True when stored, False when the same answer was already there (a
    double submit). A different earlier answer raises Conflict: undo it first."""
    encoded = json.dumps(value, sort_keys=True)
    with write(conn):
        existing = conn.execute("SELECT value FROM answers WHERE item_id = ? AND rater_id = ?", (item_id, rater)).fetchone()
        if existing is not None:
            if existing["value"] == encoded:
                return False
            raise Conflict("You already answered this item with a different answer. Undo it first to change it.")
        conn.execute(
            "INSERT INTO answers (item_id, rater_id, value, elapsed_ms, created_at) VALUES (?, ?, ?, ?, ?)",
            (item_id, rater, encoded, elapsed_ms, now()),
        )
    return True


def undo_last(conn: sqlite3.Connection, task_id: int, rater: int) -> tuple[str, dict] | None:
    """Delete this rater's latest answer in the task; (item id, its value), or None if none."""
    with write(conn):
        row = conn.execute(
            "SELECT a.id, a.item_id, a.value FROM answers a JOIN items i ON a.item_id = i.id "
            "WHERE i.task_id = ? AND a.rater_id = ? ORDER BY a.id DESC LIMIT 1",
            (task_id, rater),
        ).fetchone()
        if row is None:
            return None
        conn.execute("DELETE FROM answers WHERE id = ?", (row["id"],))
    return row["item_id"], json.loads(row["value"])


def task_items(conn: sqlite3.Connection, task_id: int) -> list[dict[str, Any]]:
    """All items of a task in display order, meta decoded (server side only)."""
    rows = conn.execute("SELECT * FROM items WHERE task_id = ? ORDER BY position", (task_id,)).fetchall()
    return [{"id": r["id"], "position": r["position"], "prompt": r["prompt"], "text": r["text"], "text_b": r["text_b"],
             "meta": json.loads(r["meta"])} for r in rows]


def task_answers(conn: sqlite3.Connection, task_id: int) -> list[dict[str, Any]]:
    """All answers to a task's items, oldest first: item id, rater name, value, times."""
    rows = conn.execute(
        "SELECT a.id, a.item_id, r.name AS rater, a.value, a.elapsed_ms, a.created_at FROM answers a "
        "JOIN items i ON a.item_id = i.id JOIN raters r ON a.rater_id = r.id WHERE i.task_id = ? ORDER BY a.id",
        (task_id,),
    ).fetchall()
    return [{"id": r["id"], "item_id": r["item_id"], "rater": r["rater"], "value": json.loads(r["value"]),
             "elapsed_ms": r["elapsed_ms"], "created_at": r["created_at"]} for r in rows]
