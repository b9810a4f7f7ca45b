"""Ctrl-C, or SIGTERM (what SLURM, Kubernetes and `timeout` send), on a real `rlhflab sft` process
saves a checkpoint; `--resume` finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.helpers import signal_after_training


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_a_checkpoint_and_resume_finishes(tmp_path, tiny_llama_dir, reviews_csv, signum):
    runs = tmp_path / "runs"
    args = [
        sys.executable, "-m", "rlhflab.cli", "sft", "--no-progress",
        f"data.source={reviews_csv}", "data.per_class=30", f"sft.model={tiny_llama_dir}", f"runs_dir={runs}",
        "name=interrupt", "sft.epochs=40", "sft.batch_size=6", "sft.max_length=24", "sft.log_every=1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stopped = signal_after_training(process, runs / "interrupt" / "sft.partial" / "metrics.jsonl", 3, signum)

    assert stopped.returncode == 130, stopped.stderr
    assert "--resume" in stopped.stderr and "Traceback" not in stopped.stderr
    state = json.loads((runs / "interrupt" / "sft.partial" / "checkpoints" / "latest" / "state.json").read_text())
    assert 3 <= state["step"] < 240

    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "validation" in resumed.stdout
    summary = json.loads((runs / "interrupt" / "sft" / "summary.json").read_text())
    assert summary["steps"] > state["step"]
