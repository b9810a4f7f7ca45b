"""Supervised training (SFT, the reward model, pretraining): minibatch gradient descent over
seeded epochs, validation that keeps the best weights, early stopping.

A stage supplies only what differs: `loss(rows)` -> (summed loss, item count) over some rows of
its train split, and `validate()` -> metrics. The configured batch is the global batch: under
several processes each takes every world_size-th row, and the loss is divided by the global
item count, so gradients averaged by DDP equal the one-process gradient of the same batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from rlhflab.checkpoint import load_trainable_state, trainable_state
from rlhflab.config import TrainingConfig
from rlhflab.engine.runtime import Runtime

# rows (global indices into the train split) -> (loss summed over items, number of items)
Loss = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def total_steps(cfg: TrainingConfig, n_train: int) -> int:
    steps = cfg.epochs * -(-n_train // cfg.batch_size)
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)  # None: no cap


def make_optimizer(model, cfg: TrainingConfig, n_train: int):
    """AdamW over the trainable weights with linear warm-up and cosine decay over the whole run."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps = total_steps(cfg, n_train)
    scheduler = get_scheduler("cosine", optimizer, int(cfg.warmup_ratio * steps), steps)
    return optimizer, scheduler


def cache_facts(first: int | None, seconds: float) -> dict:
    return {"used": first is not None, "first_trainable_block": first, "seconds": round(seconds, 2)}


def evaluation_chunks(rows: torch.Tensor, size: int) -> tuple[tuple[torch.Tensor, ...], bool]:
    """This process's share `rows` of a split in chunks of `size`, and whether they count. A process
    whose share is empty (fewer rows than processes) gets row 0 to run and discard: a chunk of no rows
    cannot run, and DDP's first forward pass after a training step broadcasts the buffers, a collective
    the other processes enter."""
    if len(rows):
        return rows.split(size), True
    return (torch.zeros(1, dtype=rows.dtype, device=rows.device),), False


@dataclass
class Selection:
    metric: str  # the validation metric that picks the best weights
    higher_is_better: bool


class Supervised:
    """The Algorithm (rlhflab/engine/loop.py) of every supervised stage."""

    eval_split = "validation"

    def __init__(self, *, runtime: Runtime, model, prepared, optimizer, scheduler, cfg: TrainingConfig, seed: int,
                 n_train: int, loss: Loss, validate: Callable[[], dict[str, Any]] | None, selection: Selection, unit: str,
                 log_extra: Callable[[float], dict[str, float]] = lambda mean_loss: {},
                 batches: Callable[[torch.Generator], list[torch.Tensor]] | None = None, first_step: int = 0):
        self.runtime, self.module, self.prepared = runtime, model, prepared  # module: unwrapped; prepared: DDP etc.
        self.optimizer, self.scheduler = optimizer, scheduler
        self.cfg, self.seed, self.n_train, self.unit = cfg, seed, n_train, unit
        self.loss, self.validate, self.selection, self.log_extra = loss, validate, selection, log_extra
        # An epoch's batches from its generator (ceil(n_train / batch_size) of them, every row once);
        # None: a plain random permutation cut into batches.
        self.batches = batches
        self.first_step = first_step  # the loop's step when this training began (run_loop's first_step)
        self.params = [p for p in prepared.parameters() if p.requires_grad]
        self.state = {"epoch": 0, "batch": 0, "steps": 0, "best": None, "evals_without_gain": 0, "items": 0, "seconds": 0.0}
        self.best = trainable_state(model)
        self._window = [0.0, 0.0, time.perf_counter()]  # loss sum, items, start of the logging window
        self._last_loss = float("nan")

    # --- the steps -----------------------------------------------------------------------------
    def _batch(self) -> torch.Tensor:
        """This step's global batch: the order depends only on (seed, epoch), so a resumed epoch replays it."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.state["epoch"])
        if self.batches is not None:
            return self.batches(generator)[self.state["batch"]]
        batches = torch.randperm(self.n_train, generator=generator).split(self.cfg.batch_size)
        return batches[self.state["batch"]]

    def _steps_per_epoch(self) -> int:
        return -(-self.n_train // self.cfg.batch_size)

    def step(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        rows = self._batch()
        mine = rows[self.runtime.rank :: self.runtime.world_size]
        weight = 1.0
        if len(mine) == 0:  # a last batch smaller than the process count: join in with zero weight
            mine, weight = rows[:1], 0.0
        self.prepared.train()
        loss_sum, global_count = self._backward(mine.to(self.runtime.device), weight)
        self.runtime.accelerator.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        epoch = self.state["epoch"]  # the epoch this step belongs to (logged with it)
        self.state["batch"] += 1
        self.state["steps"] = step + 1
        if self.state["batch"] >= self._steps_per_epoch():
            self.state["epoch"], self.state["batch"] = self.state["epoch"] + 1, 0
        self.state["items"] += global_count
        self.state["seconds"] += time.perf_counter() - started
        step_loss = float(self.runtime.sum(loss_sum))
        self._window[0] += step_loss
        self._window[1] += global_count
        # A NaN or infinite loss is returned at once, whatever log_every says: the loop stops the run on it.
        return self._maybe_log(step + 1, epoch, force=not math.isfinite(step_loss))

    def _backward(self, rows: torch.Tensor, weight: float) -> tuple[float, float]:
        """Gradients of the mean loss over the global batch, from this process's `rows`; returns
        (this process's loss sum, the global item count).

        DDP averages gradients over processes, so each process backpropagates its loss sum times
        world / global count. With gradient_accumulation_steps > 1 the rows go through in
        micro-batches (gradients synchronised once, on the last) and the scale is applied to the
        summed gradients, since the global count is known only after the last forward pass."""
        world, accelerator = self.runtime.world_size, self.runtime.accelerator
        chunks = rows.split(-(-len(rows) // self.cfg.gradient_accumulation_steps))
        if len(chunks) == 1:
            loss_sum, count = self.loss(rows)
            global_count = float(self.runtime.sum(count * weight))
            accelerator.backward(loss_sum * weight * world / max(global_count, 1.0))
            return float(loss_sum.detach()) * weight, global_count
        total, count = 0.0, 0.0
        for i, chunk in enumerate(chunks):
            with contextlib.nullcontext() if i == len(chunks) - 1 else accelerator.no_sync(self.prepared):
                loss_sum, items = self.loss(chunk)
                accelerator.backward(loss_sum * weight)
            total, count = total + float(loss_sum.detach()) * weight, count + items * weight
        global_count = float(self.runtime.sum(count))
        for param in self.params:
            if param.grad is not None:
                param.grad.mul_(world / max(global_count, 1.0))
        return total, global_count

    def _maybe_log(self, step: int, epoch: int, force: bool = False) -> dict[str, float]:
        last = step - self.first_step == total_steps(self.cfg, self.n_train)
        if step % self.cfg.log_every and not last and not force:
            return {}
        loss_sum, items, start = self._window
        mean = loss_sum / max(items, 1.0)
        rate = items / max(time.perf_counter() - start, 1e-9)
        self._window = [0.0, 0.0, time.perf_counter()]
        self._last_loss, self._rate = mean, rate
        return {"epoch": epoch, "loss": mean, **self.log_extra(mean), "lr": self.scheduler.get_last_lr()[0],
                f"{self.unit}_per_s": rate}

    def progress(self) -> dict[str, str]:
        return {"loss": f"{self._last_loss:.3f}", f"{self.unit}/s": f"{getattr(self, '_rate', 0.0):.0f}"}

    # --- validation and the best weights ---------------------------------------------------------
    def evaluation_due(self, step: int) -> bool:
        if self.cfg.eval_every is not None:
            return step % self.cfg.eval_every == 0
        return self.state["batch"] == 0  # once per epoch, when one has just ended

    def evaluate(self, step: int) -> dict[str, Any]:
        """Score validation and keep the best weights (the current ones when there is nothing to validate on)."""
        # the epoch just trained: at an epoch's end the counter has already moved on
        epoch = self.state["epoch"] - 1 if self.state["batch"] == 0 and self.state["epoch"] > 0 else self.state["epoch"]
        if self.validate is None:
            self.best = trainable_state(self.module)
            return {"epoch": epoch}
        result = self.validate()
        value = result[self.selection.metric]
        best = self.state["best"]
        improved = best is None or (value > best if self.selection.higher_is_better else value < best)
        if improved:
            self.state["best"], self.state["evals_without_gain"] = value, 0
            self.best = trainable_state(self.module)
        else:
            self.state["evals_without_gain"] += 1
        return {"epoch": epoch, **result}

    def should_stop(self) -> bool:
        return self.state["evals_without_gain"] >= self.cfg.early_stopping_patience

    def keep_best(self) -> None:
        load_trainable_state(self.module, self.best)

    # --- resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"state": dict(self.state), "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state, self.best = dict(state["state"]), state["best"]

    def facts(self, steps: int) -> dict:
        return {"steps": steps, "epochs_completed": self.state["epoch"], "stopped_early": self.should_stop(),
                f"train_{self.unit}_per_s": self.state["items"] / max(self.state["seconds"], 1e-9)}
