"""The one training loop every stage runs: step budget, evaluation cadence, checkpoints and
`--resume`, Ctrl-C / SIGTERM, metrics and progress. What is trained is an `Algorithm`.

Under several processes every rank runs this loop in lockstep; only the main process writes
(metrics, checkpoints), a stop request on any rank stops them all at the same step, and a
checkpoint holds every rank's random state so a resumed run continues each rank's stream.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from rlhflab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rlhflab.engine.runtime import Runtime
from rlhflab.errors import RunInterrupted
from rlhflab.interrupt import StopRequest
from rlhflab.io import RunDir


class Algorithm(Protocol):
    """What a stage trains, driven by `run_loop`.

    `step` does one unit of training (an optimizer step for supervised stages, a rollout and
    its updates for RL) and returns the metrics to log for it ({} logs nothing). The loop calls
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
             resume: bool, progress: bool, desc: str) -> int:
    """Train `algorithm` for `total_steps` (fewer if it stops early); returns the steps done.

    Raises RunInterrupted after saving a checkpoint when Ctrl-C or SIGTERM arrives.
    """
    position: dict[str, Any] = {"step": 0, "evaluated_at": None}
    if resume:
        position = _restore(algorithm, runtime, run_dir)

    def log(record: dict[str, Any]) -> None:
        if runtime.is_main:
            run_dir.log_metrics(record)

    def evaluate() -> None:
        position["evaluated_at"] = position["step"]
        log({"step": position["step"], "split": algorithm.eval_split, **algorithm.evaluate(position["step"])})

    def checkpoint() -> None:
        _save(algorithm, runtime, run_dir, position)

    bar = tqdm(total=total_steps, initial=position["step"], desc=desc, disable=not (progress and runtime.is_main),
               dynamic_ncols=True)
    with StopRequest() as stop:
        while position["step"] < total_steps and not algorithm.should_stop():
            record = algorithm.step(position["step"])
            position["step"] += 1
            if record:
                log({"step": position["step"], "split": "train", **record})
                bar.set_postfix(algorithm.progress())
            bar.update(1)
            if algorithm.evaluation_due(position["step"]):
                evaluate()
            if runtime.max(float(stop.requested)) > 0:  # any rank's Ctrl-C stops every rank here
                checkpoint()
                bar.close()
                raise RunInterrupted(f"Stopped at step {position['step']}; checkpoint saved in {run_dir.checkpoint_dir}. "
                                     f"Continue with --resume.")
            if position["step"] % checkpoint_every == 0:
                checkpoint()
        if position["evaluated_at"] != position["step"]:
            evaluate()  # training that happened is judged (and kept when it is the best)
        checkpoint()
    bar.close()
    return position["step"]


def _save(algorithm: Algorithm, runtime: Runtime, run_dir: RunDir, position: dict) -> None:
    rngs = runtime.gather_objects([rng_state()])  # every rank's stream, for a resume under the same ranks
    if runtime.is_main:
        save_checkpoint(run_dir.checkpoint_dir / "latest", model=algorithm.module, optimizer=algorithm.optimizer,
                        scheduler=algorithm.scheduler, loop=position,
                        extra={"algorithm": algorithm.state_dict(), "rng_by_rank": rngs})
    runtime.barrier()


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
