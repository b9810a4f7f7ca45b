"""The supervised training loop shared by the SFT and reward stages.

Epochs of shuffled minibatches, periodic validation with best-weight selection and early
stopping, metrics to `metrics.jsonl`, resumable checkpoints, and Ctrl-C that stops at a step
boundary. Each stage supplies only what differs: how one batch gives a loss, and how the
validation split is scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from rlhflab.checkpoint import load_checkpoint, save_checkpoint, trainable_state
from rlhflab.config import TrainingConfig
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.interrupt import StopRequest
from rlhflab.io import RunDir


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    max_steps: int | None
    batch_size: int
    eval_every: int | None  # steps between validation passes; None = once per epoch
    patience: int  # validation passes without improvement before stopping
    log_every: int
    checkpoint_every: int
    grad_clip: float
    seed: int
    select_metric: str  # the validation metric that picks the best weights
    higher_is_better: bool


    @classmethod
    def from_config(cls, cfg: TrainingConfig, seed: int, select_metric: str, higher_is_better: bool) -> "LoopSettings":
        return cls(
            epochs=cfg.epochs, max_steps=cfg.max_steps, batch_size=cfg.batch_size, eval_every=cfg.eval_every,
            patience=cfg.early_stopping_patience, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            grad_clip=cfg.grad_clip, seed=seed, select_metric=select_metric, higher_is_better=higher_is_better,
        )


def check_training_config(cfg: TrainingConfig, section: str) -> None:
    """Range checks the type system cannot express; `section` names the config key in messages."""
    checks = [
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be at least 1 (or null)"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (cfg.eval_batch_size >= 1, "eval_batch_size must be at least 1"),
        (cfg.learning_rate > 0, "learning_rate must be positive"),
        (cfg.weight_decay >= 0, "weight_decay must not be negative"),
        (0 <= cfg.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
        (cfg.grad_clip > 0, "grad_clip must be positive"),
        (cfg.eval_every is None or cfg.eval_every >= 1, "eval_every must be at least 1 (or null)"),
        (cfg.early_stopping_patience >= 1, "early_stopping_patience must be at least 1"),
        (cfg.log_every >= 1, "log_every must be at least 1"),
        (cfg.checkpoint_every >= 1, "checkpoint_every must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"{section}.{message}.")


def make_optimizer(model, cfg: TrainingConfig, n_train: int):
    """AdamW over the trainable weights with linear warm-up and cosine decay over the whole run."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total_steps = min(cfg.epochs * -(-n_train // cfg.batch_size), cfg.max_steps or 10**12)
    scheduler = get_scheduler("cosine", optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


def cache_facts(first: int | None, seconds: float) -> dict:
    return {"used": first is not None, "first_trainable_block": first, "seconds": round(seconds, 2)}


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]  # trainable weights of the best validation pass
    steps: int
    epochs_completed: int
    stopped_early: bool
    items_per_s: float  # training throughput in the stage's unit (tokens, examples)

    def facts(self) -> dict:
        return {"steps": self.steps, "epochs_completed": self.epochs_completed, "stopped_early": self.stopped_early}


# One optimizer step's forward: minibatch indices -> (mean loss to backpropagate, item count).
TrainStep = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def fit(
    *,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    accelerator,
    run_dir: RunDir,
    n_train: int,
    settings: LoopSettings,
    train_step: TrainStep,
    validate: Callable[[], dict[str, Any]] | None,
    resume: bool,
    progress: bool,
    desc: str,
    unit: str,
    log_extra: Callable[[float], dict[str, float]] = lambda mean_loss: {},
) -> FitResult:
    """Train until the epochs or step budget run out, or validation stops improving."""
    steps_per_epoch = -(-n_train // settings.batch_size)
    total_steps = min(settings.epochs * steps_per_epoch, settings.max_steps or 10**12)
    params = [p for p in model.parameters() if p.requires_grad]
    loop: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "best": None, "evals_without_gain": 0,
                            "items": 0, "seconds": 0.0}
    best = trainable_state(model)
    if resume:
        loop, extra = load_checkpoint(run_dir.checkpoint_dir / "latest", model=model, optimizer=optimizer, scheduler=scheduler)
        best = extra["best"]
        run_dir.truncate_metrics(loop["step"])

    def checkpoint() -> None:
        save_checkpoint(run_dir.checkpoint_dir / "latest", model=model, optimizer=optimizer, scheduler=scheduler,
                        loop=loop, extra={"best": best})

    def validate_now() -> bool:
        """Score validation, keep the best weights; True when patience has run out."""
        nonlocal best
        loop["validated_at"] = loop["step"]
        if validate is None:
            best = trainable_state(model)
            return False
        result = validate()
        run_dir.log_metrics({"step": loop["step"], "epoch": loop["epoch"], "split": "validation", **result})
        value = result[settings.select_metric]
        improved = loop["best"] is None or (value > loop["best"] if settings.higher_is_better else value < loop["best"])
        if improved:
            loop["best"], loop["evals_without_gain"] = value, 0
            best = trainable_state(model)
        else:
            loop["evals_without_gain"] += 1
        return loop["evals_without_gain"] >= settings.patience

    device = next(model.parameters()).device
    bar = tqdm(total=total_steps, initial=loop["step"], desc=desc, disable=not progress, dynamic_ncols=True)
    stopped_early = False
    window_items, window_loss, window_start = 0, 0.0, time.perf_counter()
    with StopRequest() as stop:
        while loop["step"] < total_steps and loop["epoch"] < settings.epochs and not stopped_early:
            # The order depends only on (seed, epoch), so a resumed epoch replays the same batches.
            generator = torch.Generator().manual_seed(settings.seed * 1000 + loop["epoch"])
            batches = torch.randperm(n_train, generator=generator).split(settings.batch_size)
            while loop["batch"] < len(batches) and loop["step"] < total_steps:
                started = time.perf_counter()
                model.train()
                loss, count = train_step(batches[loop["batch"]].to(device))
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(params, settings.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop["step"] += 1
                loop["batch"] += 1
                loop["items"] += count
                loop["seconds"] += time.perf_counter() - started
                window_items += count
                window_loss += float(loss.detach()) * count
                bar.update(1)
                if loop["step"] % settings.log_every == 0 or loop["step"] == total_steps:
                    mean = window_loss / max(window_items, 1)
                    rate = window_items / max(time.perf_counter() - window_start, 1e-9)
                    run_dir.log_metrics({"step": loop["step"], "epoch": loop["epoch"], "split": "train", "loss": mean,
                                         **log_extra(mean), "lr": scheduler.get_last_lr()[0], f"{unit}_per_s": rate})
                    bar.set_postfix(loss=f"{mean:.3f}", **{f"{unit}/s": f"{rate:.0f}"})
                    window_items, window_loss, window_start = 0, 0.0, time.perf_counter()
                if settings.eval_every and loop["step"] % settings.eval_every == 0:
                    stopped_early = validate_now()
                    if stopped_early:
                        break
                if stop.requested:
                    checkpoint()
                    bar.close()
                    raise RunInterrupted(f"Stopped at step {loop['step']}; checkpoint saved in {run_dir.checkpoint_dir}. Continue with --resume.")
                if loop["step"] % settings.checkpoint_every == 0:
                    checkpoint()
            if loop["batch"] >= len(batches):
                loop["epoch"] += 1
                loop["batch"] = 0
                if not settings.eval_every:
                    stopped_early = validate_now()
        if not stopped_early and loop.get("validated_at") != loop["step"]:
            # Steps since the last validation pass (or a budget that ended mid-epoch before any
            # pass): training that happened is judged, and kept when it is the best.
            validate_now()
        checkpoint()
    bar.close()
    return FitResult(
        best_state=best,
        steps=loop["step"],
        epochs_completed=loop["epoch"],
        stopped_early=stopped_early,
        items_per_s=loop["items"] / max(loop["seconds"], 1e-9),
    )
