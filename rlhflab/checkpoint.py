"""Resumable training state: trainable weights, optimizer, scheduler, RNG, loop position.

Only trainable parameters are stored (frozen ones come back from the base model), so a
checkpoint of a top-two-blocks run is a few tens of MB, not the whole model.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhflab.errors import RlhfLabError
from rlhflab.io import atomic_dir


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise RlhfLabError(
            f"The checkpoint does not match this model (unknown weights such as {missing[0]}). "
            f"Resume with the same config that started the run."
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


FORMAT = 2  # 1: pickled RNG objects, loadable only with weights_only=False (unsafe)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors, numbers and lists only, so `torch.load(weights_only=True)` reads them."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler, loop: dict[str, Any], extra: dict[str, Any] | None = None,
                    kept: str | None = None) -> None:
    """Write `folder` atomically: a crash mid-save leaves the previous checkpoint intact.

    `extra` holds tensors, numbers, strings, lists and dicts only (what a safe load reads back).
    Raises RlhfLabError when the disk fills up, saying what was kept: `kept` (the caller knows
    which run it belongs to), else whether `folder` holds a previous checkpoint.
    """
    state = {
        "format": FORMAT,
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "extra": extra or {},
    }
    with atomic_dir(folder) as tmp:
        try:
            torch.save(state, tmp / "state.pt")
            # state.json is written last: its presence marks a complete checkpoint.
            (tmp / "state.json").write_text(json.dumps(loop, indent=2) + "\n", encoding="utf-8")
        except (RuntimeError, OSError) as exc:
            needed, free = _tensor_bytes(state), _free_bytes(tmp)
            if not _out_of_space(exc, needed, free):
                raise
            if kept is None:
                kept = ("the previous checkpoint there is unchanged" if (folder / "state.json").is_file()
                        else "no checkpoint was written") + "; free space and run again"
            # One line instead of torch's "unexpected pos ..." traceback; atomic_dir removes the partial file.
            room = f"{_size(free)} free, " if free is not None else ""
            raise RlhfLabError(f"Cannot save the checkpoint {folder}: the disk is full ({room}the checkpoint needs "
                               f"about {_size(needed)}); {kept}.") from None


def _out_of_space(exc: BaseException, needed: int, free: int | None) -> bool:
    """Whether a failed write ran out of space. torch.save's zip writer reports ENOSPC as a RuntimeError
    ("unexpected pos ...", "file write failed") without an errno, so that one is judged by the space left."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return free is not None and free < needed


def _free_bytes(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None
    return stats.f_bavail * stats.f_frsize


def _tensor_bytes(value: Any) -> int:
    """The bytes of the tensors in nested dicts, lists and tuples: about what torch.save writes."""
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.0f} KB"


def load_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimizer, scheduler and RNG; return (loop position, extra).

    The state is read with `weights_only=True`: a checkpoint copied in from elsewhere can hold
    tensors and plain data but cannot run code. Raises RlhfLabError for a missing, corrupt,
    foreign or old-format checkpoint.
    """
    start_again = "Start again with --overwrite."
    try:
        loop = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RlhfLabError(f"Cannot read the checkpoint in {folder} ({_first_line(exc)}). {start_again}") from None
    file = folder / "state.pt"
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage surfaces as UnpicklingError, EOFError, IndexError, RuntimeError (zip), ...
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            # The pickle names a class or function (torch: "unsupported GLOBAL ..."): refused unrun.
            raise RlhfLabError(
                f"The checkpoint {file} holds Python objects that could run code, so it is not loaded "
                f"(written by an older rlhflab, or not by rlhflab). {start_again}"
            ) from None
        problem = "is corrupt or not an rlhflab checkpoint" if file.is_file() else f"cannot be read ({_first_line(exc)})"
        raise RlhfLabError(f"The checkpoint {file} {problem}. {start_again}") from None
    if not isinstance(state, dict) or not isinstance(loop, dict):
        raise RlhfLabError(f"The checkpoint in {folder} was not written by rlhflab. {start_again}")
    if state.get("format") != FORMAT:
        raise RlhfLabError(f"The checkpoint in {folder} was written by an older rlhflab. {start_again}")
    load_trainable_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return loop, state["extra"]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
