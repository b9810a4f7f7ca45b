"""engine/runtime.exit_process: how a process ends (os._exit only for one of several launched processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ("import atexit, torch\n"
          "from rlhflab.engine.runtime import exit_process\n"
          "atexit.register(lambda: print('atexit ran', flush=True))\n"
          "print('written', end='')\n"
          "exit_process(3)\n")


@pytest.mark.parametrize("world_size, atexit_runs", [("2", False), ("1", True)])
def test_exit_process_flushes_and_keeps_the_code(world_size, atexit_runs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": world_size}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout.startswith("written")  # flushed before os._exit
    assert ("atexit ran" in result.stdout) is atexit_runs  # os._exit skips the interpreter's teardown
