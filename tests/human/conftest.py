"""Fixtures for the labelling / rating app: a samples.jsonl of two models, a database, clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Distinctive names, sources and scores, so a leak into the page or the API is easy to find.
MODELS = ("alpha-model", "beta-model")
SOURCES = {"alpha-model": "/secret/runs/alpha-run", "beta-model": "/secret/runs/beta-run"}
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def score_of(model: str, prompt_id: int) -> float:
    """Beta scores higher on every prompt; the decimals are unusual enough to grep for."""
    return round((1.5 if model == "beta-model" else -0.5) + 0.013579 * prompt_id + 0.000246, 6)


def write_samples(path: Path, n_prompts: int = 8) -> Path:
    rows = []
    for pid in range(n_prompts):
        for model in MODELS:
            mood = "wonderful and moving" if model == "beta-model" else "dull"
            response = f" was {mood} ({pid})" if pid else f" was {mood} {XSS}"
            rows.append({"prompt_id": pid, "prompt": f"The film number {pid}", "sentiment": "positive", "model": model,
                         "source": SOURCES[model], "response": response, "score": score_of(model, pid),
                         "positive_probability": 0.5})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def samples_jsonl(tmp_path) -> Path:
    return write_samples(tmp_path / "samples.jsonl")


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "human" / "test.sqlite"


@pytest.fixture
def rating_task(db, samples_jsonl) -> str:
    from rlhflab.human.tasks import create_rating_task, read_samples

    return create_rating_task(db, read_samples(samples_jsonl), name="rate-me", origin=str(samples_jsonl))["name"]


@pytest.fixture
def make_client(db):
    """TestClient over the app; Host 127.0.0.1 like a browser on this machine."""
    from fastapi.testclient import TestClient

    from rlhflab.human.app import create_app

    clients = []

    def make(path=None, **options):
        client = TestClient(create_app(path or db, **options), base_url="http://127.0.0.1:8000")
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
