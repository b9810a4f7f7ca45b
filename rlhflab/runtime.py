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

    if device not in ("auto", "cpu", "cuda"):
        raise RlhfLabError(f"device must be auto, cpu or cuda, got {device!r} (choose the GPU with CUDA_VISIBLE_DEVICES).")
    if device == "cuda" and not torch.cuda.is_available():
        raise RlhfLabError("device=cuda was requested but no CUDA GPU is visible; use device=auto or cpu.")
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    if use_cpu and mixed_precision == "fp16":
        raise RlhfLabError("mixed_precision=fp16 needs a GPU; use bf16 or no on the CPU.")
    return Accelerator(cpu=use_cpu, mixed_precision=mixed_precision)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
