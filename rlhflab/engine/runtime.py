"""One Runtime per process: the Accelerator, who this process is, and the reductions across processes.

The CLI and the Python API create it once (`Runtime.create`) and pass it down; stages never
build their own. On one process every reduction is the identity, so the same code runs under
`python -m rlhflab ...` and `accelerate launch --num_processes N -m rlhflab ...`.

Conventions (nanoGPT's DDP contract, lm-human-preference-details' batch sizes):
- the configured batch is the *global* batch; each process takes its share (`shard`);
- statistics are reduced as sums and counts before dividing (never averages of averages);
- data order depends only on the seed (the same on every rank), sampling seeds on the rank;
- only the main process writes files; the others wait at `barrier`.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from rlhflab.errors import RlhfLabError

_ACCELERATOR = None  # the process's one Accelerator (Accelerate keeps one state per process anyway)


def _accelerator(device: str):
    global _ACCELERATOR
    if device not in ("auto", "cpu", "cuda"):
        raise RlhfLabError(f"runtime.device must be auto, cpu or cuda, got {device!r} (choose the GPU with CUDA_VISIBLE_DEVICES).")
    if device == "cuda" and not torch.cuda.is_available():
        raise RlhfLabError("runtime.device=cuda was requested but no CUDA GPU is visible; use device=auto or cpu.")
    use_cpu = device == "cpu" or not torch.cuda.is_available()
    if _ACCELERATOR is None:
        from accelerate import Accelerator

        from rlhflab.malloc import keep_freed_memory

        keep_freed_memory()
        # Precision is applied per stage by Runtime.autocast, so a pipeline (or a test session)
        # can mix bf16 and fp32 stages in one process without touching Accelerate's global state.
        _ACCELERATOR = Accelerator(cpu=use_cpu)
        _fsdp_on_cpu(_ACCELERATOR)
        _deepspeed_on_cpu(_ACCELERATOR)
        _deepspeed_checks(_ACCELERATOR)
    elif use_cpu != (_ACCELERATOR.device.type == "cpu"):
        raise RlhfLabError(f"runtime.device={device} differs from the device this process already uses "
                           f"({_ACCELERATOR.device}); run the stage in its own process.")
    return _ACCELERATOR


def _fsdp_on_cpu(accelerator) -> None:
    """Run FSDP 2 on the CPU (gloo) when `accelerate launch` was given an FSDP config there.

    Accelerate takes its FSDP path only on accelerators: on a machine without GPUs it falls back
    to plain DDP over gloo, while transformers, reading the same launch variables
    (ACCELERATE_USE_FSDP, FSDP_CPU_RAM_EFFICIENT_LOADING), still loads the non-main processes'
    new weights (a fresh reward head) on the meta device for an FSDP broadcast that never comes:
    "Cannot copy out of meta tensor" (issue 21). torch's FSDP 2 (`fully_shard`) runs on the CPU
    with gloo, so the launch config is honoured instead: Accelerate's own FSDP plugin is built
    from the launch variables and its FSDP 2 preparation (sharding, rank 0's weights broadcast,
    full state dicts) does the rest. FSDP 1 has no CPU path: RlhfLabError."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables `accelerate launch` set
    if plugin.fsdp_version != 2:
        raise RlhfLabError("FSDP on the CPU needs fsdp_version: 2 in the accelerate config (FSDP 1 runs on GPUs only).")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state = accelerator.state
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _deepspeed_on_cpu(accelerator) -> None:
    """Run DeepSpeed ZeRO on the CPU (gloo) when `accelerate launch` was given a DeepSpeed config there.

    Accelerate takes its DeepSpeed path only off the CPU (it runs plain DDP over gloo instead), but
    DeepSpeed 0.19.8's CPU accelerator runs ZeRO-2 and ZeRO-3 over gloo when oneCCL's bindings are
    absent. So, as for FSDP above, Accelerate's own plugin is built from the launch variables
    (ACCELERATE_DEEPSPEED_*) and `prepare` calls `deepspeed.initialize`."""
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = DeepSpeedPlugin()  # from the ACCELERATE_DEEPSPEED_* variables `accelerate launch` set
    plugin.set_mixed_precision(accelerator.mixed_precision)
    plugin.select(_from_accelerator_state=True)
    state = accelerator.state
    state.deepspeed_plugins = plugin
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED
    accelerator.deepspeed_engine_wrapped = None


def _deepspeed_checks(accelerator) -> None:
    """Under DeepSpeed: refuse ZeRO-3, and give DeepSpeed a micro-batch size.

    ZeRO-3 partitions the parameters themselves, and rlhflab does not gather them yet: on 2 CPU
    processes with stage3_param_persistence_threshold 0, sft trained but counted 0 parameters and
    wrote a model/ of empty tensors. (Below DeepSpeed's default threshold, 1e5 elements, a tiny
    model is not partitioned at all, so a tiny test would not show it.)
    rlhflab forms its own batches and calls backward once per batch, so DeepSpeed's micro-batch size
    is only its bookkeeping; Accelerate fills an "auto" one from a prepared dataloader, and rlhflab
    prepares none (Accelerate would raise), so it is set to 1."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    if plugin.zero_stage == 3:
        raise RlhfLabError("DeepSpeed ZeRO-3 does not run in rlhflab yet (its partitioned weights are not gathered "
                           "for saving); use ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml) or FSDP "
                           "(configs/accelerate/fsdp.yaml), which shards the weights too.")
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 1


@dataclass
class Runtime:
    accelerator: Any
    precision: str  # "no" | "bf16" | "fp16": what `autocast` runs the forward passes in

    @classmethod
    def create(cls, device: str = "auto", mixed_precision: str = "auto") -> "Runtime":
        """The process's Runtime for a `runtime:` config section (device, mixed_precision)."""
        accelerator = _accelerator(device)
        cpu = accelerator.device.type == "cpu"
        launched = accelerator.mixed_precision  # what `accelerate launch --mixed_precision` asked for
        precision = mixed_precision
        if precision == "auto":
            precision = launched if launched != "no" else ("bf16" if fast_bf16(cpu) else "no")
        if precision == "fp16" and (cpu or launched != "fp16"):
            raise RlhfLabError("mixed_precision=fp16 needs a GPU and loss scaling: launch with `accelerate launch "
                               "--mixed_precision fp16 ...`, or use bf16 (or no).")
        return cls(accelerator, precision)

    # --- who this process is -------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        """Whether prepared models are sharded across the processes (FSDP), not whole on each (DDP)."""
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type == DistributedType.FSDP

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a model that `accelerator.prepare` will take to this process's device.

        Under FSDP, prepare shards it and moves the shards itself; with cpu_ram_efficient_loading
        the non-main processes' fresh weights are still on the meta device here, waiting for the
        main process's values, and moving them would raise."""
        return module if self.sharded else module.to(self.device)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # --- precision ---------------------------------------------------------------------------
    def autocast(self):
        """The forward-pass precision context (bf16 autocast, or nothing)."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "fp16":
            return self.accelerator.autocast()
        return contextlib.nullcontext()

    # --- data and randomness ---------------------------------------------------------------
    def shard(self, items: Sequence) -> list:
        """This process's share of a global batch: every world_size-th item from its rank.

        Raises RlhfLabError when the batch does not split evenly (ranks would disagree on the
        number of steps, and DDP would wait forever)."""
        if len(items) % self.world_size:
            raise RlhfLabError(f"A batch of {len(items)} does not split over {self.world_size} processes; "
                               f"use a batch size that is a multiple of the number of processes.")
        return list(items[self.rank :: self.world_size])

    def seed(self, seed: int, *, per_rank: bool) -> None:
        """Seed python, numpy and torch; `per_rank` gives each process its own sampling stream."""
        value = seed + (self.rank if per_rank else 0)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)

    # --- reductions (identity on one process) ----------------------------------------------
    def sum(self, value: float | torch.Tensor) -> torch.Tensor:
        return self._reduce(value, "sum")

    def max(self, value: float | torch.Tensor) -> torch.Tensor:
        return self._reduce(value, "max")

    def mean(self, total: float | torch.Tensor, count: float | torch.Tensor) -> torch.Tensor:
        """Global mean from local sums and counts: sum(total) / sum(count)."""
        return self.sum(total) / self.sum(count).clamp(min=1e-12)

    def _reduce(self, value, op: str) -> torch.Tensor:
        tensor = torch.as_tensor(value, dtype=torch.float64 if not torch.is_tensor(value) else None).to(self.device)
        if not self.distributed:
            return tensor
        tensor = tensor.clone()
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return tensor

    def gather_objects(self, items: list) -> list:
        """Every process's list, concatenated in rank order (identity on one process)."""
        if not self.distributed:
            return list(items)
        from accelerate.utils import gather_object

        return gather_object(list(items))

    def gather_round_robin(self, items: list) -> list:
        """Undo a round-robin split: rank r held items r, r + W, r + 2W, ... of a list that every
        process gets back whole, in its original order."""
        gathered = self.gather_objects(items)
        world = self.world_size
        if world == 1:
            return gathered
        counts = [len(range(r, len(gathered), world)) for r in range(world)]
        starts = [sum(counts[:r]) for r in range(world)]
        return [gathered[starts[i % world] + i // world] for i in range(len(gathered))]

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` on every process (identity on one process)."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def free_memory(self) -> None:
        """Drop Accelerate's references to the stage's models and optimizers (one process runs many stages)."""
        self.accelerator.free_memory()


def fast_bf16(cpu: bool) -> bool:
    """Whether bf16 matmuls run natively: a GPU that supports them, or a CPU with AVX512-BF16/AMX.

    On such CPUs bf16 autocast doubles SFT throughput; elsewhere it is emulated and slower.
    """
    if not cpu:
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = set(next((line for line in handle if line.startswith("flags")), "").split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def frozen_cache_allowed(runtime: Runtime) -> bool:
    """Whether the frozen lower blocks' outputs may be reused (sft/reward/dpo/ilql's cache, rl's
    reference sharing the policy's frozen blocks). One process, DDP and FSDP 2: under FSDP the cache
    is computed before `prepare` on the whole model, and the top blocks run through their own FSDP
    units. Measured under FSDP on 2 CPU processes (docs/distributed.md): sft trains 1.4x faster, rl
    samples 1.36x faster with 460 MB less peak memory. DeepSpeed partitions the blocks its own way
    and was not tried with it, so it is off there."""
    from accelerate.utils import DistributedType

    return runtime.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU,
                                                    DistributedType.FSDP)


def release_memory(device: torch.device) -> None:
    """Return what freed objects left behind to the OS (host: glibc's heap, see
    rlhflab.malloc.release_freed_memory; GPU: also torch's cached blocks), between stages of one
    process. Costs a garbage collection and the trim: 0.2 s after a PPO run, handing back 850 MB."""
    from rlhflab.malloc import release_freed_memory

    release_freed_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak, so that a stage's `peak_memory_mb` is its own and not the running maximum
    of every stage this process ran before it (a pipeline runs them all in one process).

    On Linux, writing 5 to /proc/self/clear_refs resets the resident-set high-water mark that
    ru_maxrss and VmHWM report (proc(5)); elsewhere the process's peak stays cumulative."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident memory on the CPU, since the
    last `reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run_facts(runtime: Runtime, started: float) -> dict:
    """Where and how long a stage ran: the closing fields of every summary.json."""
    return {
        "peak_memory_mb": round(peak_memory_mb(runtime.device), 1),
        "device": str(runtime.device),
        "processes": runtime.world_size,
        "mixed_precision": runtime.precision,
        "seconds": round(time.perf_counter() - started, 1),
    }


def resolve_device(name: str = "auto") -> torch.device:
    """cpu / cuda / auto (CUDA when present), for code that runs outside a stage (e.g. `rlhflab score`)."""
    if name not in ("auto", "cpu", "cuda"):
        raise RlhfLabError(f"device must be auto, cpu or cuda, got {name!r}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise RlhfLabError("device=cuda was requested but no CUDA GPU is visible; use device=auto or cpu.")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def close_process_group() -> bool:
    """Tear down the process group (gloo under `accelerate launch`); whether there was one.

    This does not stop gloo's threads: measured on the FSDP 2 SFT worker (2 CPU processes), the
    `gloo_tcp_loop` thread and both `pt_gloo_runloop` threads were still running on each process
    after `destroy_process_group()`, also after Accelerate's `free_memory()` and a garbage
    collection (one DeviceMesh, which FSDP built, stays alive and holds the gloo group). They are
    torn down at interpreter exit instead, in whatever order finalization takes; see
    `exit_process` for what that costs and how a distributed process ends."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def exit_process(code: int) -> None:
    """End a process that took part in a process group: flush, tear the group down, `os._exit`.

    Why not a plain exit: a gloo process sometimes aborted after its work was done ("terminate called
    without an active exception", exit -6; about 1 run in 4 of tests/distributed/test_fsdp.py under
    load, once in a clean-clone CI run). That message is std::terminate from destroying a
    still-joinable std::thread; gloo's threads outlive `destroy_process_group` (see
    `close_process_group`), and in torch 2.13's libtorch_cpu `gloo::transport::tcp::Loop::~Loop`
    calls `Loop::shutdown()`, which returns without joining the loop thread when its `done_` flag is
    already set, and then destroys that thread (the call to std::terminate at its end). os._exit
    skips the interpreter's and C++'s teardown, so none of that runs. atexit handlers do not run
    either: everything a stage writes is closed when the stage ends, and stdout/stderr are flushed
    here. A process that `accelerate launch` (torchrun) did not start as one of several, or that
    never loaded torch, ends with a plain `sys.exit`."""
    if "torch.distributed" in sys.modules:
        close_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "torch" not in sys.modules:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
