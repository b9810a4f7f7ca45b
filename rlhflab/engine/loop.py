"""The one training loop every stage runs: step budget, evaluation cadence, checkpoints and
`--resume`, Ctrl-C / SIGTERM, metrics and progress. What is trained is an `Algorithm`.

Under several processes every rank runs this loop in lockstep; only the main process writes
(metrics, checkpoints), a stop request on any rank stops them all at the same step, and a
checkpoint holds every rank's random state so a resumed run continues each rank's stream.

A loss that becomes NaN or infinite stops the run at that step, on every rank, with one
RlhfLabError naming the step and the likely causes; no checkpoint is written with non-finite weights.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn, Protocol

import torch
from tqdm.auto import tqdm

from rlhflab.checkpoint import kept_after_failure, load_checkpoint, rng_state, save_checkpoint, set_rng_state, trainable_state
from rlhflab.engine.runtime import Runtime
from rlhflab.engine.sharding import is_sharded, whole, whole_optimizer_state
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.interrupt import StopRequest
from rlhflab.io import RunDir
from rlhflab.stages.registry import RENAMED


class Algorithm(Protocol):
    """What a stage trains, driven by `run_loop`.

    `step` does one unit of training (an optimizer step for supervised stages, a rollout and
    its updates for RL) and returns the metrics to log for it ({} logs nothing); a step whose
    loss is not finite must return it (under every key holding "loss"), even when it would
    otherwise log nothing, as the loop stops the run on it. The loop calls
    `evaluate` whenever `evaluation_due` says so and once more after the last step, unless the
    last step was just evaluated. `state_dict` is what, beside the trainable weights, optimizer
    and scheduler, a resumed run needs (tensors, numbers, strings, lists and dicts only).
    """

    module: torch.nn.Module  # its trainable parameters are checkpointed
    optimizer: Any
    scheduler: Any  # or None
    eval_split: str  # the `split` of evaluation records: "validation" or "eval"

    def step(self, step: int) -> dict[str, float]: ...
    def evaluation_due(self, step: int) -> bool: ...
    def evaluate(self, step: int) -> dict[str, Any]: ...
    def should_stop(self) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def progress(self) -> dict[str, str]: ...  # a few numbers for the progress bar


def run_loop(algorithm: Algorithm, *, runtime: Runtime, run_dir: RunDir, total_steps: int, checkpoint_every: int,
             resume: bool, progress: bool, desc: str, first_step: int = 0) -> int:
    """Train `algorithm` from step `first_step` up to step `total_steps` (fewer if it stops early);
    returns the step reached. A stage that runs the loop several times in one run folder (DPO's
    rounds) starts each where the last ended, so steps, metrics and checkpoints continue.

    Raises RunInterrupted after saving a checkpoint when Ctrl-C or SIGTERM arrives.
    """
    position: dict[str, Any] = {"step": first_step, "evaluated_at": None}
    if resume:
        position = _restore(algorithm, runtime, run_dir)

    def log(record: dict[str, Any]) -> None:
        if runtime.is_main:
            run_dir.log_metrics(record)

    def evaluate() -> None:
        position["evaluated_at"] = position["step"]
        log({"step": position["step"], "split": algorithm.eval_split, **algorithm.evaluate(position["step"])})

    saved: dict[str, Any] = {"step": position["step"] if resume else None}  # the checkpoint on disk
    lr = None  # the learning rate of the last step, for the message when training diverges

    def checkpoint() -> None:
        _save(algorithm, runtime, run_dir, position, saved["step"], lr)
        saved["step"] = position["step"]

    bar = tqdm(total=total_steps - first_step, initial=position["step"] - first_step, desc=desc, disable=not (progress and runtime.is_main),
               dynamic_ncols=True)
    with StopRequest() as stop:
        while position["step"] < total_steps and not algorithm.should_stop():
            lr = algorithm.optimizer.param_groups[0]["lr"]  # read before the scheduler moves it on
            record = algorithm.step(position["step"])
            position["step"] += 1
            bad = non_finite_loss(record)
            if runtime.max(float(bad is not None)) > 0:  # every rank stops here, before logging or evaluating NaNs
                bar.close()
                what = f"the training {bad[0]} became {bad[1]}" if bad else "a training loss became NaN or infinite on another process"
                raise RlhfLabError(_diverged(runtime, run_dir, position["step"], saved["step"], what, lr))
            if record:
                log({"step": position["step"], "split": "train", **record})
                bar.set_postfix(algorithm.progress())
            bar.update(1)
            if algorithm.evaluation_due(position["step"]):
                evaluate()
            if runtime.max(float(stop.requested)) > 0:  # any rank's Ctrl-C stops every rank here
                checkpoint()
                _interrupted(bar, position["step"], run_dir)
            if position["step"] % checkpoint_every == 0:
                checkpoint()
        if position["evaluated_at"] != position["step"]:
            evaluate()  # training that happened is judged (and kept when it is the best)
        checkpoint()
        # A stop asked for during the last step or the final evaluation stops the run here, saved: what
        # follows the loop (DPO's next round, a final evaluation) can take many minutes, longer than a
        # scheduler waits between SIGTERM and SIGKILL.
        if runtime.max(float(stop.requested)) > 0:
            _interrupted(bar, position["step"], run_dir)
    bar.close()
    return position["step"]


def _interrupted(bar, step: int, run_dir: RunDir) -> NoReturn:
    bar.close()
    raise RunInterrupted(f"Stopped at step {step}; checkpoint saved in {run_dir.checkpoint_dir}. Continue with --resume.")


def non_finite_loss(record: dict[str, Any]) -> tuple[str, float] | None:
    """The first (key, value) of `record` whose key holds "loss" (loss, policy_loss, value_loss, ...)
    and whose value is NaN or infinite; None when there is none."""
    for key, value in record.items():
        if "loss" in key.lower() and isinstance(value, (int, float)) and not math.isfinite(value):
            return key, float(value)
    return None


def _diverged(runtime: Runtime, run_dir: RunDir, step: int, saved_step: int | None, what: str, lr: float | None) -> str:
    """The one line that stops a run whose loss (or weights) stopped being finite at `step`."""
    # the stage folder is named as its config section (sft, reward, rl, ...), or by the stage's old name (ppo)
    section = RENAMED.get(run_dir.final.name, run_dir.final.name)
    used = f"{lr:.3g} at this step; " if lr is not None else ""
    causes = [f"a learning rate too high ({used}lower it in the {section}: settings)",
              "extreme values in the data (rewards, scores)"]
    if runtime.precision != "no":
        causes.append(f"overflow in {runtime.precision} mixed precision (try runtime.mixed_precision=no)")
    if saved_step is not None:
        kept = (f"The checkpoint of step {saved_step} in {run_dir.checkpoint_dir} is kept, though resuming with the "
                f"same settings repeats the same steps")
    else:
        kept = "No checkpoint had been saved, so nothing of this run is kept"
    if run_dir.is_finished():
        kept += f"; the finished run {run_dir.final} is unchanged"
    return (f"{section} stopped at step {step}: {what}. Likely causes: {', '.join(causes[:-1])} or {causes[-1]}. "
            f"{kept}. Fix the cause and start again with --overwrite.")


def _weights_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters() if p.requires_grad)


def _save(algorithm: Algorithm, runtime: Runtime, run_dir: RunDir, position: dict, saved_step: int | None,
          lr: float | None) -> None:
    """Write the checkpoint on the main process; every rank raises the same RlhfLabError when the
    weights are no longer finite (nothing is written) or the main process could not write it."""
    if runtime.max(float(not _weights_finite(algorithm.module))) > 0:
        # A step's update can blow the weights up while its loss, computed before it, was still finite.
        raise RlhfLabError(_diverged(runtime, run_dir, position["step"], saved_step,
                                     "the trainable weights became NaN or infinite", lr))
    rngs = runtime.gather_objects([rng_state()])  # every rank's stream, for a resume under the same ranks
    gathered, algorithm_state = {}, None
    if is_sharded(algorithm.module):  # FSDP: whole tensors are gathered by every process, then the main one writes
        gathered = {"model": trainable_state(algorithm.module), "optimizer": whole_optimizer_state(algorithm.optimizer)}
        algorithm_state = whole(algorithm.state_dict())
    error = None
    if runtime.is_main:
        try:
            save_checkpoint(run_dir.checkpoint_dir / "latest", model=algorithm.module, optimizer=algorithm.optimizer,
                            scheduler=algorithm.scheduler, loop=position,
                            extra={"algorithm": algorithm_state or algorithm.state_dict(), "rng_by_rank": rngs},
                            kept=kept_after_failure(run_dir), gathered=gathered)
        except RlhfLabError as exc:  # a full disk: the other ranks must not wait for the main one forever
            error = str(exc)
            if not runtime.distributed:
                raise
        except BaseException:
            if runtime.distributed:
                runtime.broadcast("the main process failed to save a checkpoint (see its traceback)")
            raise
    if runtime.distributed:
        error = runtime.broadcast(error)  # also the barrier: the others go on once the main process has written
        if error:
            raise RlhfLabError(error)


def _restore(algorithm: Algorithm, runtime: Runtime, run_dir: RunDir) -> dict:
    position, extra = load_checkpoint(run_dir.checkpoint_dir / "latest", model=algorithm.module,
                                      optimizer=algorithm.optimizer, scheduler=algorithm.scheduler)
    algorithm.load_state_dict(extra["algorithm"])
    rngs = extra.get("rng_by_rank") or []
    if len(rngs) == runtime.world_size:
        set_rng_state(rngs[runtime.rank])
    if runtime.is_main:
        run_dir.truncate_metrics(position["step"])
    runtime.barrier()
    return position
