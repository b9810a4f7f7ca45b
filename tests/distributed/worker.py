"""One rank of a multi-process test run (started by `accelerate launch`, see test_multiprocess.py).

    worker.py OUT STAGE [--stop-after N] [--resume] key=value ...

Runs STAGE through rlhflab's own entry point (run_stage) and writes what this rank ended with to
OUT/rank<r>.json: a digest of every trainable weight, the KL coefficient of RL stages, and
whether the run was interrupted. Test code only: the product writes from the main rank alone.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from rlhflab.config import load_config
from rlhflab.engine import loop
from rlhflab.engine.runtime import Runtime
from rlhflab.engine.sharding import whole
from rlhflab.errors import RunInterrupted
from rlhflab.stages.common import run_stage


def main(argv: list[str]) -> None:
    out, stage, *rest = argv
    stop_after = int(rest[rest.index("--stop-after") + 1]) if "--stop-after" in rest else None
    resume = "--resume" in rest
    overrides = [item for item in rest if "=" in item]
    cfg = load_config(None, overrides)
    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
    captured = {}
    real_run_loop = loop.run_loop

    def spy(algorithm, **kwargs):
        captured["algorithm"] = algorithm
        return real_run_loop(algorithm, **kwargs)

    module = sys.modules[f"rlhflab.stages.{stage}"] if f"rlhflab.stages.{stage}" in sys.modules else __import__(
        f"rlhflab.stages.{stage}", fromlist=["run"])
    module.run_loop = spy
    if stop_after is not None:
        from tests.helpers import StopAt

        loop.StopRequest = lambda: StopAt(stop_after)
    interrupted = False
    try:
        run_stage(stage, cfg, runtime=runtime, resume=resume, overwrite=not resume, progress=False)
    except RunInterrupted:
        interrupted = True
    algorithm = captured["algorithm"]
    digest = hashlib.sha256()
    for name, param in sorted(algorithm.module.named_parameters()):
        if param.requires_grad:  # under FSDP a shard: whole() gathers it (every rank takes part)
            digest.update(name.encode() + whole(param.detach()).float().cpu().numpy().tobytes())
    state = getattr(algorithm, "state", {})
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{runtime.rank}.json").write_text(json.dumps({
        "weights": digest.hexdigest(), "beta": state.get("beta"), "interrupted": interrupted,
        "world_size": runtime.world_size, "engine": runtime.accelerator.distributed_type.value,
        "prepared": type(algorithm.prepared).__name__}))


if __name__ == "__main__":
    torch.set_num_threads(1)
    try:
        main(sys.argv[1:])
    finally:
        from rlhflab.engine.runtime import close_process_group

        close_process_group()
    from rlhflab.engine.runtime import exit_process

    exit_process(0)  # under accelerate launch: os._exit once flushed (gloo's teardown can abort)
