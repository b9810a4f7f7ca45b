"""glibc heap settings for training loops (no torch import: the CLI calls this first)."""

from __future__ import annotations

import os
import sys

_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Training allocates and frees the same large activation and gradient buffers every step.
    By default glibc serves each one with a fresh mmap and unmaps it on free, so every step
    pays page faults to zero memory again: on 2 CPU cores that was a third of PPO's time
    (sys 4m25s of a 7m55s run). Keeping the heap (no mmap below 1 GiB, no trimming) gave
    PPO updates 2.2x the tokens/s for about 25% more resident memory (benchmarks/ppo.py).
    A no-op off glibc or with RLHFLAB_KEEP_FREED_MEMORY=0; returns whether the settings took.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux") or os.environ.get("RLHFLAB_KEEP_FREED_MEMORY") == "0":
        return _MALLOC_TUNED
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 2**31 - 1)
                         and libc.mallopt(m_top_pad, 64 << 20))
    return _MALLOC_TUNED


def release_freed_memory() -> bool:
    """Hand the memory that freed Python and torch objects left in glibc's heap back to the OS.

    `keep_freed_memory` makes glibc keep every freed byte, which is right inside a stage (the
    next step reuses it) but wrong between stages of one process: each stage would start with
    everything the stages before it freed still resident, so the process's peak grew stage by
    stage (`make demo`: 2.8 GB after SFT, 4.3 GB in evaluate). So between stages this collects
    garbage (anything freed only through a reference cycle) and calls glibc's malloc_trim(0),
    which returns the free pages of every arena, not only the top of the heap. Returns whether malloc_trim ran and released something; False
    off glibc (nothing else to do there).
    """
    import gc

    gc.collect()
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def _glibc():
    """glibc through ctypes, or None off Linux or where libc.so.6 is not glibc (musl has no malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
