"""Resumable training state: trainable weights, optimizer, scheduler, RNG, loop position.

Only trainable parameters are stored (frozen ones come back from the base model), so a
checkpoint of a top-two-blocks run is a few tens of MB, not the whole model.
"""

from __future__ import annotations

import json
import random
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


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler, loop: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write `folder` atomically: a crash mid-save leaves the previous checkpoint intact."""
    with atomic_dir(folder) as tmp:
        torch.save(
            {
                "model": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
                "extra": extra or {},
            },
            tmp / "state.pt",
        )
        # state.json is written last: its presence marks a complete checkpoint.
        (tmp / "state.json").write_text(json.dumps(loop, indent=2) + "\n", encoding="utf-8")


def load_checkpoint(folder: Path, *, model: nn.Module, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore weights, optimizer, scheduler and RNG; return (loop position, extra)."""
    try:
        loop = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    except (OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise RlhfLabError(f"Cannot read the checkpoint in {folder} ({exc}). Start again with --overwrite.") from None
    load_trainable_state(model, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return loop, state["extra"]
