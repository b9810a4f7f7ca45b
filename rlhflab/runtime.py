"""Seeds, devices and resource measurements shared by the stages."""

from __future__ import annotations

import random
import resource
import sys

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(device: str, mixed_precision: str):
    """An Accelerator on the requested device ("auto" picks CUDA when present)."""
    from accelerate import Accelerator

    from rlhflab.errors import RlhfLabError
    from rlhflab.malloc import keep_freed_memory

    keep_freed_memory()

    if device not in ("auto", "cpu", "cuda"):
        raise RlhfLabError(f"device must be auto, cpu or cuda, got {device!r} (choose the GPU with CUDA_VISIBLE_DEVICES).")
    if device == "cuda" and not torch.cuda.is_available():
        raise RlhfLabError("device=cuda was requested but no CUDA GPU is visible; use device=auto or cpu.")
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if fast_bf16(use_cpu) else "no"
    if use_cpu and mixed_precision == "fp16":
        raise RlhfLabError("mixed_precision=fp16 needs a GPU; use bf16 or no on the CPU.")
    # Accelerate keeps one process-wide state; stages run one after another in a pipeline may
    # ask for different precisions, so drop the previous stage's (the process group stays).
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def fast_bf16(cpu: bool) -> bool:
    """Whether bf16 matmuls run natively: a GPU that supports them, or a CPU with AVX512-BF16/AMX.

    On such CPUs bf16 autocast doubles SFT throughput; elsewhere it is emulated and slower.
    """
    if not cpu:
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = set(next((line for line in handle if line.startswith("flags")), "").split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_facts(accelerator, started: float) -> dict:
    """Where and how long a stage ran: the closing fields of every summary.json."""
    import time

    return {
        "peak_memory_mb": round(peak_memory_mb(accelerator.device), 1),
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "seconds": round(time.perf_counter() - started, 1),
    }
