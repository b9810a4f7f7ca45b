"""tracking: metrics.jsonl records also reach TensorBoard event files (Accelerate's tracker)."""

from __future__ import annotations

import json
import struct

import pytest

from rlhflab.config import load_config
from rlhflab.errors import RlhfLabError
from rlhflab.stages.common import run_stage
from rlhflab.tracking import check_tracking, log
from tests.stages.test_sft import make_config


def scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> step -> value from every TensorBoard event file under `folder` (TFRecord framing:
    length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    found: dict[str, dict[int, float]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def test_a_stage_with_tensorboard_tracking_logs_what_metrics_jsonl_holds(tmp_path, tiny_llama_dir, reviews_csv):
    pytest.importorskip("tensorboardX")
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, epochs=1)
    cfg.tracking = "tensorboard"
    run_dir = run_stage("sft", cfg, progress=False)
    rows = [json.loads(line) for line in run_dir.metrics_path.read_text().splitlines()]
    logged = scalars(tmp_path / "runs" / "tiny" / "tensorboard" / "sft")
    train = [r for r in rows if r.get("split") == "train"]
    assert train and logged["train/loss"] == {r["step"]: pytest.approx(r["loss"], rel=1e-6) for r in train}
    assert "validation/perplexity" in logged


class Recorder:
    def __init__(self):
        self.calls = []

    def log(self, values, step=None):
        self.calls.append((values, step))


def test_only_numbers_are_logged_under_their_split():
    tracker = Recorder()
    log(tracker, {"step": 3, "split": "eval", "kl": 1.5, "score": 2, "ok": True, "text": "x"})
    log(tracker, {"step": 4, "note": "nothing numeric"})
    assert tracker.calls == [({"eval/kl": 1.5, "eval/score": 2}, 3)]


def test_a_tracker_whose_package_is_missing_is_refused_when_the_config_loads(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(RlhfLabError, match="pip install wandb"):
        load_config(None, ["tracking=wandb"])
    check_tracking("none")
