"""Helpers shared by tests (importable as tests.helpers)."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

POSITIVE = ["great", "wonderful", "superb", "moving", "brilliant", "funny", "charming", "excellent"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "clumsy", "bad", "tedious", "weak"]
NOUNS = ["film", "movie", "plot", "cast", "script", "ending", "story", "acting"]


def synthetic_reviews(n_per_class: int, seed: int = 0) -> list[tuple[str, int]]:
    """Short reviews whose sentiment words make the label learnable."""
    rng = random.Random(seed)
    rows = []
    for label, words in ((1, POSITIVE), (0, NEGATIVE)):
        for _ in range(n_per_class):
            parts = [f"the {rng.choice(NOUNS)} was {rng.choice(words)}" for _ in range(rng.randint(2, 4))]
            rows.append((" and ".join(parts) + ".", label))
    rng.shuffle(rows)
    return rows


def load_example(name: str):
    """The module examples/<name>.py (examples/ is not a package, so it is loaded by path)."""
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_asset(package: str):
    """Skip unless the registry package carrying a bundled asset is installed."""
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"{package} not installed (make setup)")


class StopAt:
    """Stands in for StopRequest: asks to stop after `steps` optimizer steps."""

    def __init__(self, steps: int):
        self.remaining = steps

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    @property
    def requested(self) -> bool:
        self.remaining -= 1
        return self.remaining == 0


def close(actual, expected, atol: float = 1e-6) -> bool:
    """Element-wise comparison of a tensor with nested lists worked out by hand."""
    import torch

    return torch.allclose(actual.detach().float(), torch.tensor(expected, dtype=torch.float32), rtol=0.0, atol=atol)


# The project's shared/ folder sits beside the checkout (CI clones main with shared/ beside it).
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "shakespeare_handcrafted.jsonl"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not present")


EXIT_USER_ERROR = 2

def _fp32():
    from rlhflab.config import RuntimeConfig

    return RuntimeConfig(mixed_precision="no")


FP32 = _fp32()  # exact fp32 comparisons in stage tests (bf16 has its own tests)


def assert_user_error(result, *fragments: str) -> str:
    """Exit 2, stderr exactly one non-empty `error:` line naming each fragment, no traceback."""
    assert result.returncode == EXIT_USER_ERROR, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: ") :].strip()
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def start_cli(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`rlhflab ARGS...` in its own process: offline, with its own model cache, one thread
    (e2e cases run side by side); `env` adds variables."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RLHFLAB_CACHE": str(cwd / "cache"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "rlhflab.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli_run(capsys, *args):
    """`rlhflab ARGS` in this process: (returncode, stdout, stderr)."""
    from types import SimpleNamespace

    from rlhflab import cli

    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def cli_ok(capsys, *args) -> str:
    result = cli_run(capsys, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def finish(process: subprocess.Popen, timeout: float = 120) -> subprocess.CompletedProcess:
    """Wait for a started CLI process (killing it after `timeout`) and collect its output."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def signal_after_training(process: subprocess.Popen, metrics: Path, steps: int, signum) -> subprocess.CompletedProcess:
    """Send `signum` once `metrics` holds `steps` train lines (or the process ended), then wait for it."""
    import time

    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and metrics.read_text().count('"train"') >= steps:
            break
        time.sleep(0.05)
    process.send_signal(signum)
    return finish(process)


_HOLD = """
import sys, time
from pathlib import Path
from rlhflab.io import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_lock(run: Path, seconds: float = 600) -> subprocess.Popen:
    """Another process holding `run`'s lock (for `seconds`), once it said so."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def typed_summary(stage: str, folder: Path):
    """The summary.json a stage wrote in `folder`, read as its type (rlhflab/summaries.py), after
    checking that the type writes it back byte for byte: no key the stage wrote is unknown to the
    type (it would be dropped), none is added or moved."""
    import json

    from rlhflab.stages.registry import STAGES
    from rlhflab.summaries import summary_json

    summary = STAGES[stage].read_summary(folder)
    assert json.dumps(summary_json(summary), indent=2) + "\n" == (Path(folder) / "summary.json").read_text()
    return summary
