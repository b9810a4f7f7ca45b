"""Resumable training state: trainable weights, optimizer, scheduler, RNG, loop position.

Only trainable parameters are stored (frozen ones come back from the base model), so a
checkpoint of a top-two-blocks run is a few tens of MB, not the whole model.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, atomic_dir, os_error_of


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A whole copy of every trainable weight. Under FSDP each is gathered from its shards: a
    collective, so every process calls it (rlhflab/engine/sharding.py)."""
    from rlhflab.engine.sharding import settle, whole

    settle()
    return {name: whole(p.detach()).clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` into `model`'s parameters. Raises RlhfLabError when it is not a dict of tensors
    shaped like the model's parameters (a foreign or damaged checkpoint)."""
    if not isinstance(state, dict):
        raise RlhfLabError("The checkpoint's weights are not a table of tensors, so it is corrupt or not an rlhflab "
                           "checkpoint. Start again with --overwrite.")
    from rlhflab.engine.sharding import settle, shard_like

    settle()  # under FSDP: write into the shards, not into gathered copies that the next reshard drops
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise RlhfLabError(
            f"The checkpoint does not match this model (unknown weights such as {missing[0]}). "
            f"Resume with the same config that started the run."
        )
    for name, value in state.items():
        if not torch.is_tensor(value) or value.shape != params[name].shape:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise RlhfLabError(
                f"The checkpoint does not match this model (weight {name} is {got}, the model's is "
                f"{tuple(params[name].shape)}). Resume with the same config that started the run, or start again "
                f"with --overwrite."
            )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(shard_like(value, params[name]))  # under FSDP: this process's shard of it


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
    """Restore what `rng_state` returned. Raises RlhfLabError when `state` is not such a thing."""
    try:
        version, internal, gauss = state["python"]
        numpy = state["numpy"]
        keys = numpy["keys"].numpy().astype(np.uint32)
        python = (version, tuple(internal), gauss)
        numpy_state = (numpy["kind"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
        previous = random.getstate(), np.random.get_state()
        try:
            random.setstate(python)
            np.random.set_state(numpy_state)
            torch.set_rng_state(state["torch"])
        except Exception:
            random.setstate(previous[0])
            np.random.set_state(previous[1])
            raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError):
        raise RlhfLabError("The checkpoint's random-number state is corrupt or not from rlhflab. "
                           "Start again with --overwrite.") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler, loop: dict[str, Any], extra: dict[str, Any] | None = None,
                    kept: str | None = None, gathered: dict[str, Any] | None = None) -> None:
    """Write `folder` atomically: a crash mid-save leaves the previous checkpoint intact.

    `extra` holds tensors, numbers, strings, lists and dicts only (what a safe load reads back).
    Raises RlhfLabError when the disk fills up, saying what was kept: `kept` (the caller knows
    which run it belongs to), else whether `folder` holds a previous checkpoint. Under FSDP the
    caller gathers the weights and optimizer state on every process first and passes them as
    `gathered` ({"model": ..., "optimizer": ...}), since only the main process writes.
    """
    gathered = gathered or {}
    state = {
        "format": FORMAT,
        "model": gathered["model"] if "model" in gathered else trainable_state(model),
        "optimizer": gathered["optimizer"] if "optimizer" in gathered else optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "extra": extra or {},
    }
    if kept is None:
        kept = ("the previous checkpoint there is unchanged" if (folder / "state.json").is_file()
                else "no checkpoint was written") + "; free space and run again"
    with out_of_space_is_one_line("the checkpoint", folder, needed=_tensor_bytes(state), kept=kept):
        with atomic_dir(folder) as tmp:
            torch.save(state, tmp / "state.pt")
            # state.json is written last: its presence marks a complete checkpoint.
            (tmp / "state.json").write_text(json.dumps(loop, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def out_of_space_is_one_line(what: str, folder: Path, *, needed: int, kept: str) -> Iterator[None]:
    """Turn a write of `what` into `folder` that ran out of space into one RlhfLabError saying so and
    what was `kept` (the folder itself is written atomically, so it is unchanged).

    Libraries report a full disk in their own ways: torch.save's zip writer as a RuntimeError with no
    errno ("unexpected pos ..."), judged by the space left against `needed` bytes; safetensors as a
    SafetensorError naming "os error 28"; Python as OSError(ENOSPC)."""
    try:
        yield
    except Exception as exc:
        free = _free_bytes(folder.parent)
        if isinstance(exc, RlhfLabError):
            if exc.__cause__ is None or os_error_of(exc.__cause__) is None:
                raise
            exc = exc.__cause__  # atomic_dir's own one line (io.user_os_errors), whose "kept" knows only the folder
        if not _out_of_space(exc, needed, free):
            raise
        room = f"{_size(free)} free, " if free is not None else ""
        raise RlhfLabError(f"Cannot save {what} {folder}: the disk is full ({room}{what} needs "
                           f"about {_size(needed)}); {kept}.") from None


def kept_after_failure(run_dir: RunDir) -> str:
    """What a run that fails now leaves, in words: its last checkpoint (resumable), the finished run."""
    try:
        step = json.loads((run_dir.checkpoint_dir / "latest" / "state.json").read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        step = None
    kept = (f"the checkpoint of step {step} is kept (free space, then continue with --resume)" if step is not None
            else "no checkpoint of this run had been saved yet, so a rerun starts it again")
    if run_dir.is_finished():
        kept += f"; the finished run {run_dir.final} is unchanged"
    return kept


def _out_of_space(exc: BaseException, needed: int, free: int | None) -> bool:
    cause = os_error_of(exc)  # an OSError, or a Rust library's error naming one ("(os error 28)")
    if cause is not None:
        return cause.errno in (errno.ENOSPC, errno.EDQUOT)
    if os.strerror(errno.ENOSPC) in str(exc):
        return True
    return isinstance(exc, RuntimeError) and free is not None and free < needed


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
    corrupt = f"The checkpoint {file} is corrupt or not an rlhflab checkpoint. {start_again}"
    if not _is_loop(loop):
        raise RlhfLabError(f"The checkpoint {folder / 'state.json'} is corrupt or not an rlhflab checkpoint. "
                           f"{start_again}")
    shapes = {"model": dict, "optimizer": dict, "scheduler": (dict, type(None)), "rng": dict, "extra": dict}
    if any(not isinstance(state.get(key), kind) for key, kind in shapes.items()):
        raise RlhfLabError(corrupt)
    load_trainable_state(model, state["model"])
    from rlhflab.engine.sharding import is_sharded, load_optimizer_state

    try:
        if is_sharded(model):  # under FSDP: each moment back to this process's shard of it
            load_optimizer_state(optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"] is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        _check_optimizer_shapes(optimizer)
    except (RlhfLabError, TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError):
        raise RlhfLabError(corrupt) from None
    return loop, state["extra"]


def _check_optimizer_shapes(optimizer) -> None:
    """The loaded per-parameter state (Adam's moments) must be shaped like its parameter, else the first
    step fails deep inside torch."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError("optimizer state shaped unlike its parameter")


def _is_loop(loop: Any) -> bool:
    """state.json holds the loop position: a whole-number step and the step last evaluated (or null)."""
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return (isinstance(loop, dict) and whole(loop.get("step"))
            and (loop.get("evaluated_at") is None or whole(loop.get("evaluated_at"))))


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
