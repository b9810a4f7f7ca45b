"""Pieces every stage uses: the data splits, the run directory, resume checks."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Callable, Iterator

from rlhflab.config import Config, DataConfig, dump_yaml, parse_yaml, to_dict, upgrade_names
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.interrupt import stop_at_once
from rlhflab.io import RunDir, atomic_write_text, read_json, run_lock, write_json


def load_splits(cfg: Config, data: DataConfig | None = None, *, require_labels: bool = False):
    """Reviews of `data` (default `cfg.data`): balanced by label unless per_class is None, split by seed."""
    from rlhflab.data import balanced_sample, load_reviews, split_reviews

    data = data or cfg.data
    reviews = load_reviews(
        data.source,
        text_column=data.text_column,
        label_column=data.label_column,
        split=data.split,
        require_labels=require_labels or data.per_class is not None,
    )
    left_out = reviews.dropped  # rows and files the reader could not use, by reason
    if data.per_class is not None:
        reviews = balanced_sample(reviews, data.per_class, cfg.seed)
    return dataclasses.replace(split_reviews(reviews, data.fractions, cfg.seed), left_out=left_out)


def open_run_dir(cfg: Config, stage: str, *, resume: bool, overwrite: bool, runtime=None) -> RunDir:
    """Open `runs/<name>/<stage>` (registry.stage_dir: an old run's folder keeps its old name) for a
    run and record its config and key; on resume, insist that both are unchanged (the same
    settings, the same data and upstream runs). Under several processes the main one does this and
    the others follow (or raise the same error)."""
    from rlhflab.stages.registry import stage_dir

    run_dir = RunDir(stage_dir(Path(cfg.runs_dir) / cfg.name, stage))
    error = None
    if runtime is None or runtime.is_main:
        try:
            _open(cfg, stage, run_dir, resume=resume, overwrite=overwrite)
        except RlhfLabError as exc:
            error = str(exc)
    if runtime is not None and runtime.distributed:
        error = runtime.broadcast(error)
        run_dir.path = run_dir.partial  # the other processes read (checkpoints) where the main one writes
    if error:
        raise RlhfLabError(error)
    return run_dir


def _read_own_yaml(path: Path):
    """A run's config.yaml for the resume check; a handed file that is not plain YAML (a Python tag,
    a syntax error) is one line, never constructed (the safe loader)."""
    import yaml

    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RlhfLabError(f"{path} is not plain YAML ({str(exc).splitlines()[0]}); this run cannot be resumed. "
                           f"Start again with --overwrite.") from None


def _open(cfg: Config, stage: str, run_dir: RunDir, *, resume: bool, overwrite: bool) -> None:
    from rlhflab.stages.registry import stage_key

    key = stage_key(cfg, stage)
    run_dir.prepare(resume=resume, overwrite=overwrite)
    config_path = run_dir.path / "config.yaml"
    if resume and config_path.exists():
        before = upgrade_names(_read_own_yaml(config_path))  # a run started before ppo became rl + generation
        if before != to_dict(cfg):
            changed = sorted(_diff_keys(before, to_dict(cfg)))
            raise RlhfLabError(
                f"The config differs from the one that started {run_dir.final} ({', '.join(changed[:5])}). "
                f"Resume with the same config, or start again with --overwrite."
            )
        started = read_json(run_dir.path / "stage.json") if (run_dir.path / "stage.json").exists() else {}
        if not isinstance(started, dict):
            raise RlhfLabError(f"{run_dir.path / 'stage.json'} is not a JSON object; this run cannot be resumed. "
                               f"Start again with --overwrite.")
        if started.get("key") not in (None, key["key"]):
            changed = sorted(k for k in set(key["references"]) | set(started.get("references", {}))
                             if key["references"].get(k) != started.get("references", {}).get(k))
            raise RlhfLabError(
                f"What {run_dir.final} was started from has changed since ({', '.join(changed[:3]) or 'its inputs'}). "
                f"Start again with --overwrite."
            )
    atomic_write_text(config_path, dump_yaml(cfg))
    write_json(run_dir.path / "stage.json", key)
    run_dir.stage_facts = key
    from rlhflab.tracking import open_tracker

    run_dir.tracker = open_tracker(cfg.tracking, root=Path(cfg.runs_dir) / cfg.name, stage=stage, run_name=cfg.name,
                                   config=to_dict(cfg))


def finish_run(run_dir: RunDir, summary: dict, runtime) -> RunDir:
    """The main process writes summary.json and puts the run in place; the others wait for it."""
    if runtime.is_main:
        run_dir.finish(summary)
    runtime.barrier()
    run_dir.path = run_dir.final
    runtime.free_memory()
    return run_dir


def on_main_process(runtime, work: Callable[[], RunDir], final: Path) -> RunDir:
    """Run `work` on the main process alone; the others wait, then return the same run (or raise its error)."""
    if not runtime.distributed:
        return work()
    error = None
    if runtime.is_main:
        try:
            work()
        except RlhfLabError as exc:
            error = str(exc)
        except BaseException:
            runtime.broadcast("the main process failed (see its traceback)")
            raise
    error = runtime.broadcast(error)
    if error:
        raise RlhfLabError(error)
    return RunDir(final)


def refuse_under_deepspeed(runtime, section, *, resume: bool) -> None:
    """What is known not to work under DeepSpeed ZeRO-2, refused before anything loads: --resume
    (a checkpoint holds the main process's share of the optimizer state only, which every process
    would read back) and gradient accumulation (Accelerate's DeepSpeed backward steps the optimizer
    unless inside `accelerator.accumulate`; rlhflab accumulates under `no_sync`). Read from their
    code, not run (docs/distributed.md)."""
    from accelerate.utils import DistributedType

    if runtime.accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    if resume:
        raise RlhfLabError("--resume does not work under DeepSpeed yet (a checkpoint holds only the main process's "
                           "share of the optimizer state); rerun with --overwrite, or train under DDP or FSDP to resume.")
    if getattr(section, "gradient_accumulation_steps", 1) > 1:
        raise RlhfLabError("gradient_accumulation_steps above 1 does not work under DeepSpeed yet (every micro-batch "
                           "would step the optimizer); set it to 1 and the batch size you want, or use DDP or FSDP.")


def run_stage(name: str, cfg: Config, *, runtime=None, resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> RunDir:
    """Run one registered stage on `runtime` (default: this process's, from cfg.runtime) as the
    run folder's one writer; a run that fails before its first checkpoint leaves nothing behind.

    Raises RlhfLabError when another process writes the run, and RunInterrupted when Ctrl-C or
    SIGTERM stops it (at a step boundary with a checkpoint inside the training loop; at once, and
    keeping only a checkpoint already saved, anywhere else)."""
    from rlhflab.engine.runtime import Runtime, release_memory, reset_peak_memory
    from rlhflab.stages.registry import STAGES

    runtime = runtime or Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
    refuse_under_deepspeed(runtime, getattr(cfg, getattr(STAGES[name], "config_section", name), None), resume=resume)
    run_dir = RunDir(Path(cfg.runs_dir) / cfg.name / name)
    with one_writer(cfg, runtime), stop_at_once():
        # The summary's peak_memory_mb is this stage's own: it starts from what the process holds
        # now, with what the stages before this one freed handed back to the OS.
        release_memory(runtime.device)
        reset_peak_memory(runtime.device)
        try:
            return STAGES[name].module.run(cfg, runtime=runtime, resume=resume, overwrite=overwrite, progress=progress)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            if runtime.is_main:
                run_dir.discard_failed_start()
            if run_dir.has_checkpoint(run_dir.partial):
                raise RunInterrupted(f"{name} stopped; its last checkpoint is kept in {run_dir.partial}. "
                                     f"Continue with --resume.") from None
            raise RunInterrupted(f"{name} stopped before its first checkpoint; nothing of this run was kept "
                                 f"(run the same command to start it again).") from None
        except BaseException:
            if runtime.is_main:
                run_dir.discard_failed_start()
            raise


@contextlib.contextmanager
def one_writer(cfg: Config, runtime) -> Iterator[None]:
    """Hold runs/<name> for this command (rlhflab.io.run_lock): the main process takes the lock and
    the other processes of the same launch follow it (or raise its error)."""
    root = Path(cfg.runs_dir) / cfg.name
    with contextlib.ExitStack() as stack:
        error = None
        if runtime.is_main:
            try:
                stack.enter_context(run_lock(root))
            except RlhfLabError as exc:
                error = str(exc)
        if runtime.distributed:
            error = runtime.broadcast(error)
        if error:
            raise RlhfLabError(error)
        yield


def _diff_keys(a, b, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for key in set(a) | set(b):
            out |= _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}

