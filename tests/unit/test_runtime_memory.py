"""A stage's peak_memory_mb is its own peak, not the running maximum of the process."""

import mmap
import sys
from pathlib import Path

import pytest
import torch

from rlhflab.engine.runtime import peak_memory_mb, reset_peak_memory

CPU = torch.device("cpu")


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/clear_refs").exists(),
                    reason="the resident-set peak is reset through /proc/self/clear_refs (Linux)")
def _touch(megabytes: int) -> mmap.mmap:
    """Resident memory of our own (an anonymous map, written), which close() returns to the OS
    whatever glibc's settings (rlhflab.malloc keeps freed heap memory)."""
    area = mmap.mmap(-1, megabytes * 2**20)
    area.write(b"x" * len(area))
    return area


def test_the_peak_restarts_after_a_reset():
    _touch(400).close()
    before = peak_memory_mb(CPU)
    assert before >= 400
    reset_peak_memory(CPU)
    after = peak_memory_mb(CPU)
    assert after < before - 300  # what an earlier stage touched and freed no longer counts
    kept = _touch(200)
    assert peak_memory_mb(CPU) >= after + 190  # a new peak is seen
    kept.close()
