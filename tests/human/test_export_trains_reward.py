"""A person labels texts in the app, the export goes to `rlhflab reward` unchanged, and a reward
model trains on it (tiny BERT, labels and preference pairs)."""

from __future__ import annotations

import json

from rlhflab.config import Config, DataConfig, PairsConfig, RewardConfig
from rlhflab.human import tasks
from rlhflab.stages.common import run_stage
from tests.helpers import NEGATIVE, POSITIVE, synthetic_reviews
from tests.helpers import FP32


def settings(model_dir, **fields) -> RewardConfig:
    values = dict(model=str(model_dir), trainable="all", max_length=32, epochs=8, batch_size=8, learning_rate=3e-3,
                  warmup_ratio=0.0, eval_batch_size=16, log_every=1, early_stopping_patience=8)
    return RewardConfig(**{**values, **fields})


def is_positive(text: str) -> bool:
    """What the simulated person sees: the review's sentiment words."""
    words = text.replace(".", " ").split()
    return sum(w in POSITIVE for w in words) > sum(w in NEGATIVE for w in words)


def label_everything(client, task, decide):
    state = client.get(f"/api/tasks/{task}/next", params={"rater": "Ada"}).json()
    while state["item"] is not None:
        response = client.post(f"/api/tasks/{task}/answers", json={"rater": "Ada", "item_id": state["item"]["id"], "answer": decide(state["item"])})
        assert response.status_code == 201, response.text
        state = response.json()
    return state["progress"]


def test_labels_exported_from_the_app_train_a_reward_model(tmp_path, db, make_client, tiny_bert_dir, one_torch_thread):
    source = tmp_path / "unlabelled.jsonl"
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text, _ in synthetic_reviews(30, seed=5)))
    task = tasks.create_label_task(db, str(source), name="people")["name"]
    progress = label_everything(make_client(), task, lambda item: {"label": "good" if is_positive(item["text"]) else "bad"})
    assert progress == {"answered": 60, "total": 60}
    export = tasks.export_labels(db, task)
    assert (export["positive"], export["negative"]) == (30, 30)
    cfg = Config(runtime=FP32, name="human", seed=0, runs_dir=str(tmp_path / "runs"), reward=settings(tiny_bert_dir),
                 data=DataConfig(source=export["path"], per_class=None))  # as the CLI's hint sets it
    summary = json.loads(run_stage("reward", cfg, progress=False).summary_path.read_text())
    assert summary["examples"] == {"train": 36, "validation": 12, "test": 12}
    assert summary["metrics"]["test"]["accuracy"] >= 0.8


def test_pairs_exported_from_the_app_train_a_bradley_terry_model(tmp_path, db, make_client, tiny_bert_dir, one_torch_thread):
    reviews = synthetic_reviews(20, seed=7)
    good = [t for t, label in reviews if label == 1]
    bad = [t for t, label in reviews if label == 0]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps({"prompt": "review:", "response_a": a, "response_b": b}) + "\n"
                              for i, (a, b) in enumerate(zip(good, bad))))
    task = tasks.create_label_task(db, str(source), kind="pairs", name="prefs")["name"]
    label_everything(make_client(), task, lambda item: {"choice": "a" if is_positive(item["text"]) else "b"})
    export = tasks.export_labels(db, task)
    assert export["rows"] == 20
    cfg = Config(runtime=FP32, name="human-pairs", seed=0, runs_dir=str(tmp_path / "runs"),
                 reward=settings(tiny_bert_dir, objective="pairs", pairs=PairsConfig(source=export["path"])))
    summary = json.loads(run_stage("reward", cfg, progress=False).summary_path.read_text())
    assert summary["objective"] == "pairs" and summary["examples"] == {"train": 16, "validation": 2, "test": 2}
    assert summary["metrics"]["train"]["pairwise_accuracy"] >= 0.9
