"""Metrics to TensorBoard or Weights & Biases as well, through Accelerate's trackers (`tracking:`).

metrics.jsonl stays the record every rlhflab command reads; a tracker is a copy for the tools
where users compare curves. `tracking: tensorboard` writes event files to
`<runs_dir>/<name>/tensorboard/<stage>/` (`tensorboard --logdir runs` shows every run, stage and
sweep point); `tracking: wandb` logs to the W&B project "rlhflab", run `<name>/<stage>`. Only the
main process logs. The packages are optional: without them the config is refused at once.
"""

from __future__ import annotations

import importlib.util
import numbers
from pathlib import Path
from typing import Any

from rlhflab.errors import RlhfLabError

# tracking value -> modules that can serve it (Accelerate's TensorBoardTracker falls back to tensorboardX)
NEEDS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_tracking(kind: str) -> None:
    """RlhfLabError naming the package to install when `kind`'s package is missing."""
    if kind != "none" and not any(importlib.util.find_spec(module) for module in NEEDS[kind]):
        raise RlhfLabError(f"tracking: {kind} needs the {NEEDS[kind][0]} package: pip install {NEEDS[kind][0]} "
                           f"(or set tracking: none; metrics.jsonl is always written).")


def open_tracker(kind: str, *, root: Path, stage: str, run_name: str, config: dict):
    """A started Accelerate tracker for one stage, with the resolved config as its hyperparameters; None for "none"."""
    if kind == "none":
        return None
    check_tracking(kind)
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    if kind == "tensorboard":
        tracker = TensorBoardTracker(stage, root / "tensorboard")
    else:
        tracker = WandBTracker("rlhflab", name=f"{run_name}/{stage}", dir=str(root))
    tracker.start()
    tracker.store_init_configuration(_flat(config))
    return tracker


def log(tracker, record: dict[str, Any]) -> None:
    """One metrics.jsonl record: its numbers as `<split>/<key>` at its step."""
    split = record.get("split", "train")
    values = {f"{split}/{key}": value for key, value in record.items()
              if key not in ("step", "split") and isinstance(value, numbers.Real) and not isinstance(value, bool)}
    if values:
        tracker.log(values, step=record.get("step"))


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"rl": {"kl_coef": 0.05}} -> {"rl.kl_coef": 0.05}; lists and None as text (hyperparameters are scalars)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out
