"""Between stages of one process the heap is handed back: each stage's peak_memory_mb is its own."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from rlhflab import malloc
from rlhflab.config import Config
from rlhflab.engine.runtime import peak_memory_mb
from rlhflab.stages import registry
from rlhflab.stages.common import run_stage
from tests.helpers import FP32

LINUX = sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()
ROOT = Path(__file__).parents[2]


def test_release_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(malloc.sys, "platform", "darwin")
    assert malloc._glibc() is None
    assert malloc.release_freed_memory() is False


@pytest.mark.skipif(not LINUX, reason="glibc and /proc")
def test_release_hands_back_a_heap_that_keep_freed_memory_kept():
    """In a fresh process with rlhflab's glibc settings: 400 MB freed stays resident until released."""
    code = """
import os, torch
from rlhflab.malloc import keep_freed_memory, release_freed_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
assert keep_freed_memory()
base = rss()
block = torch.ones(100 * 2**20)  # 400 MB, written
del block
kept = rss()
print(round(kept - base), release_freed_memory(), round(rss() - base))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=str(ROOT))
    kept, released, after = out.stdout.split()
    assert int(kept) > 350  # glibc kept it (the speed setting)
    assert released == "True" and int(after) < 50


def _fake_stage(monkeypatch, name: str, megabytes: int) -> None:
    """A registered stage that writes and frees `megabytes` of heap, and reports its peak."""
    def run(cfg, *, runtime, **_):
        block = torch.ones(megabytes * 2**18) if megabytes else None  # float32: 4 bytes each
        del block
        return types.SimpleNamespace(peak=peak_memory_mb(runtime.device))

    monkeypatch.setitem(registry.STAGES, name, types.SimpleNamespace(module=types.SimpleNamespace(run=run)))


@pytest.mark.skipif(not LINUX, reason="the resident-set peak is reset through /proc/self/clear_refs (Linux)")
def test_a_stage_after_a_big_one_reports_its_own_peak(tmp_path, monkeypatch):
    """Without handing the first stage's freed heap back, the second would start (and peak) above it."""
    assert malloc.keep_freed_memory()  # as the CLI runs stages (conftest applies it too)
    _fake_stage(monkeypatch, "big", 500)
    _fake_stage(monkeypatch, "small", 0)
    cfg = Config(runtime=FP32, name="memory", runs_dir=str(tmp_path / "runs"))
    big = run_stage("big", cfg, progress=False).peak
    small = run_stage("small", cfg, progress=False).peak
    assert small < big - 400
