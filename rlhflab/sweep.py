"""`rlhflab sweep`: a grid of config overrides, one pipeline run per point, then `rlhflab compare`;
and a frontier preset's list of runs (config `frontier:`), then `rlhflab frontier`.

    rlhflab sweep --config configs/default.yaml rl.learning_rate=1e-5,1e-4 rl.kl_coef=0.02,0.1

An override whose value lists several values (commas outside [..], {..} and quotes) is an axis;
the grid is the cartesian product of the axes in the order given, the first axis varying slowest.
The other overrides hold for every point. Layout, with <base> = <runs_dir>/<name>:

    <base>/<stage>/                  stages every point shares, trained once (the base run's own)
    <base>/sweep/sweep.json          the manifest: axes, fixed overrides, each point's status
    <base>/sweep/<point>/            each point is a run of its own (runs_dir=<base>/sweep, name=<point>)
        point.yaml, log.txt          its resolved config and the output of its pipeline process
        <shared stage> -> ../../<stage>   a relative link to the base run's stage
    <base>/sweep/compare/            `rlhflab compare <base>/sweep`

`rlhflab pipeline --config configs/frontier.yaml` runs the points a config's `frontier` section
lists instead of a grid (frontier_plan): the run's own stages train once in <base>, each point at
each seed is a run in <base>/sweep/<point>[-seed<s>] with those stages linked in, and the reward-KL
figure of them all goes to <base>/sweep/frontier/.

A stage is shared when its inputs (the config values the registry says it reads) are the same
under the base config and every point's, and so is every stage of this run it reads. A sweep over
PPO settings after `make demo` thus reuses runs/default/sft and runs/default/reward as they are.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlhflab.config import (Config, FrontierConfig, check_run_name, dump_yaml, flatten_settings, load_config, map_strings,
                             parse_yaml, to_dict)
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.fingerprint import strings
from rlhflab.interrupt import PARENT_ENV, stop_at_once
from rlhflab.io import SWEEP_DIR, atomic_write_text, read_json, run_lock, shared_stage_link, write_json
from rlhflab.stages.registry import stage_dir  # a declaration: no torch

MANIFEST = "sweep.json"
POINT_CONFIG = "point.yaml"
LOG = "log.txt"
FRONTIER_DIR = "frontier"  # <base>/sweep/frontier/: the figure of a frontier preset's points
COMPARE_DIR = "compare"  # <base>/sweep/compare/: `rlhflab compare` of a grid's points
NOT_AXES = ("name", "runs_dir")  # they place the points; every point is <runs_dir>/<name>/sweep/<point>
POLL_SECONDS = 0.2
LOCK_WAIT_SECONDS = 300.0  # how long a rerun waits for a point's earlier process (stopping after a kill of its driver)


# -- the grid (pure functions) ------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    key: str  # dotted config key, e.g. rl.learning_rate
    values: tuple[str, ...]  # as the user typed them


@dataclass(frozen=True)
class Point:
    name: str  # folder name, e.g. learning_rate-1e-5_kl_coef-0.02
    values: tuple[tuple[str, str], ...]  # (key, value as typed) per axis

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.values]


def split_values(text: str) -> list[str]:
    """`a,b,[c,d]` -> ['a', 'b', '[c,d]']: a comma inside [..], {..} or quotes does not split."""
    parts, current, depth, quote = [], [], 0, None
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def _parsed(text: str) -> str:
    """A value as the config will read it (1e-5 and 0.00001 are the same value), as a comparable string."""
    try:
        return json.dumps(parse_yaml(text), sort_keys=True, default=str)
    except Exception:  # noqa: BLE001 -- what YAML cannot read is taken as text, as load_config does
        return json.dumps(text)


def parse_overrides(overrides: Sequence[str]) -> tuple[list[str], list[Axis]]:
    """Split `key=value` overrides into fixed ones (one value) and grid axes (several values).

    Raises RlhfLabError for a malformed override, an axis with an empty or repeated value, an
    axis on name/runs_dir, or a key given both as an axis and elsewhere."""
    fixed: list[str] = []
    axes: list[Axis] = []
    keys: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RlhfLabError(f"Override {item!r} must look like section.key=value, or section.key=a,b,c for a grid axis.")
        values = split_values(text)
        is_axis = len(values) > 1
        if key in keys and (is_axis or keys[key] == "axis"):
            raise RlhfLabError(f"{key} is given more than once; give a swept setting once, with all its values ({key}=a,b).")
        keys[key] = "axis" if is_axis else "fixed"
        if not is_axis:
            fixed.append(item)
            continue
        if key in NOT_AXES:
            raise RlhfLabError(f"{key} cannot be swept: each point is its own run in <runs_dir>/<name>/sweep/<point>. "
                               f"Give {key} one value.")
        if any(not value for value in values):
            raise RlhfLabError(f"Sweep axis {item!r} has an empty value; separate the values by single commas ({key}=a,b).")
        seen: dict[str, str] = {}
        for value in values:
            same = seen.setdefault(_parsed(value), value)
            if same is not value:
                raise RlhfLabError(f"Sweep axis {key} lists the same value twice ({same} and {value}); give each value once.")
        axes.append(Axis(key, tuple(values)))
    return fixed, axes


def _labels(axes: Sequence[Axis]) -> dict[str, str]:
    """The name part of each axis: its last key part, or the whole dotted key where two axes share it."""
    leaves = [axis.key.rsplit(".", 1)[-1] for axis in axes]
    return {axis.key: axis.key if leaves.count(leaf) > 1 else leaf for axis, leaf in zip(axes, leaves)}


def _clean(value: str) -> str:
    """A value as part of a folder name: characters outside [A-Za-z0-9.+-] (and `..`) become `-`."""
    return re.sub(r"\.{2,}", "-", re.sub(r"[^A-Za-z0-9.+-]", "-", value))


def grid(axes: Sequence[Axis]) -> list[Point]:
    """Every combination of the axes' values, the first axis varying slowest, each named
    `<leaf>-<value>` joined by `_` (e.g. learning_rate-1e-5_kl_coef-0.02).

    Raises RlhfLabError when there are fewer than two points, or a name is not a plain folder name
    or comes out the same for two points."""
    if not axes:  # every axis has two values or more (parse_overrides), so any axis makes two points
        raise RlhfLabError("A sweep needs at least two points: give a setting several values separated by commas "
                           "(e.g. rl.learning_rate=1e-5,1e-4). For a single run use `rlhflab pipeline`.")
    labels = _labels(axes)
    points: list[Point] = []
    names: dict[str, Point] = {}
    for combination in itertools.product(*(axis.values for axis in axes)):
        values = tuple((axis.key, value) for axis, value in zip(axes, combination))
        name = "_".join(f"{labels[key]}-{_clean(value)}" for key, value in values)
        try:
            check_run_name(name)
        except RlhfLabError:
            raise RlhfLabError(f"The sweep point {' '.join(f'{k}={v}' for k, v in values)} would be named {name!r}, which is "
                               f"not a plain folder name (at most 200 characters); sweep fewer settings or shorter values.") from None
        if name in names:
            raise RlhfLabError(f"Two sweep points would share the folder name {name!r} "
                               f"({' '.join(names[name].overrides)} and {' '.join(f'{k}={v}' for k, v in values)}); "
                               f"give values that differ in letters or digits.")
        point = Point(name, values)
        names[name] = point
        points.append(point)
    return points


# -- what the points share -----------------------------------------------------------------


def _stage_inputs(tree: dict, stage) -> dict:
    from rlhflab.stages.registry import _pick

    return {key: _pick(tree, key) for key in stage.inputs}


def _dependencies(cfg: Config, stage, inputs: dict, root: Path) -> set[str]:
    """This run's stages that `stage` reads: by name (Stage.reads) or as a path in its inputs (run:<stage>)."""
    from rlhflab.stages.registry import STAGES

    found = set(stage.reads(cfg))
    for text in strings(inputs):
        for other in STAGES:
            where = str(stage_dir(root, other))
            if text == where or text.startswith(where + os.sep):
                found.add(other)
    found.discard(stage.name)
    return found


def shared_stages(base: Config, points: Sequence[Config]) -> tuple[list[str], list[str]]:
    """(shared, linked): the stages every point shares with the base run, and those plus the
    stages outside the pipeline (`stages:`) that the points read from the base run folder.

    `base` and `points` must have the same name and runs_dir, so that `run:<stage>` values
    resolve to the same paths. A stage is shared when it is in every pipeline, its inputs are
    equal everywhere, and every stage of this run it reads is shared (or outside the pipeline)."""
    from rlhflab.stages.registry import STAGES

    configs = [base, *points]
    if any((c.name, c.runs_dir) != (base.name, base.runs_dir) for c in configs):
        raise ValueError("shared_stages compares configs with the same name and runs_dir")
    root = Path(base.runs_dir) / base.name
    trees = [to_dict(c) for c in configs]
    in_pipeline = {stage for c in configs for stage in c.stages}
    shared: list[str] = []
    outside: set[str] = set()
    for name, stage in STAGES.items():
        inputs = [_stage_inputs(tree, stage) for tree in trees]
        needs = set().union(*(_dependencies(c, stage, i, root) for c, i in zip(configs, inputs)))
        if (all(name in c.stages for c in configs) and all(i == inputs[0] for i in inputs[1:])
                and all(d in shared or d not in in_pipeline for d in needs)):
            shared.append(name)
        if any(name in c.stages for c in points):
            outside |= {d for d in needs if d not in in_pipeline}
    return shared, [name for name in STAGES if name in shared or name in outside]


def _rebase(cfg: Config, paths: dict[str, str]) -> Config:
    """Replace every string value that is a key of `paths` (a point's path of a shared stage) by
    its value (the base run's path), so the shared stage's key is the same in the point."""
    return map_strings(cfg, lambda value: paths.get(value, value))


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Plan:
    config: str | None
    fixed: list[str]
    axes: list[Axis]
    points: list[Point]
    base: Config  # the config with the fixed overrides: runs the shared stages in <base>/<stage>
    configs: dict[str, Config]  # point name -> the point's own run config
    shared: list[str]
    linked: list[str]  # the shared stages and the stages outside the pipeline the points read
    command: list[str]  # what reruns (resumes) it
    kind: str = "sweep"  # or "frontier": a frontier preset's points (frontier_plan)

    @property
    def root(self) -> Path:
        return Path(self.base.runs_dir) / self.base.name

    @property
    def folder(self) -> Path:
        return self.root / SWEEP_DIR

    def point_dir(self, point: Point) -> Path:
        return self.folder / point.name


def _quoted(value: str) -> str:
    return json.dumps(value)  # a YAML double-quoted string: a path stays a string


def _place(folder: Path, name: str) -> list[str]:
    return [f"runs_dir={_quoted(str(folder))}", f"name={_quoted(name)}"]


def make_plan(config: str | None, overrides: Sequence[str]) -> Plan:
    """Parse the grid and load every point's config (so a bad value fails before anything runs)."""
    fixed, axes = parse_overrides(overrides)
    points = grid(axes)
    base = load_config(config, fixed)
    if base.frontier.points is not None:
        raise RlhfLabError("This config lists frontier points: they are runs of their own, which `rlhflab pipeline` "
                           "runs (and draws). Sweep a config without frontier.points, or run it with `rlhflab pipeline`.")
    compared = []
    for point in points:
        try:
            compared.append(load_config(config, [*fixed, *point.overrides]))
        except RlhfLabError as exc:
            raise RlhfLabError(f"Sweep point {point.name} ({' '.join(point.overrides)}): {exc}") from None
    shared, linked = shared_stages(base, compared)
    root = Path(base.runs_dir) / base.name
    folder = root / SWEEP_DIR
    configs = {}
    for point in points:
        cfg = load_config(config, [*fixed, *point.overrides, *_place(folder, point.name)])
        own = folder / point.name
        configs[point.name] = _rebase(cfg, {str(stage_dir(own, stage)): str(stage_dir(root, stage)) for stage in linked})
    command = ["rlhflab", "sweep", *(["--config", str(config)] if config else []), *fixed,
               *(f"{axis.key}={','.join(axis.values)}" for axis in axes)]
    return Plan(None if config is None else str(config), fixed, axes, points, base, configs, shared, linked, command)


def _check_frontier_point(point_name: str, cfg: Config, base: Config, own: Path) -> None:
    """A point runs none of the run's own stages, and reads no stage that neither it nor the run trains."""
    from rlhflab.stages.registry import STAGES

    twice = [stage for stage in cfg.stages if stage in base.stages]
    if twice:
        raise RlhfLabError(f"frontier.points.{point_name} runs {', '.join(twice)}, which the run trains once for "
                           f"every point (stages: {base.stages}); leave {'them' if len(twice) > 1 else 'it'} "
                           "out of the point's stages.")
    tree, root = to_dict(cfg), Path(base.runs_dir) / base.name
    # a point's run:<stage> may already name the base run's folder (the preset's frontier section was resolved with it)
    reads = {d for stage in cfg.stages for where in (own, root)
             for d in _dependencies(cfg, STAGES[stage], _stage_inputs(tree, STAGES[stage]), where)}
    missing = sorted(reads - set(cfg.stages) - set(base.stages))
    if missing:
        raise RlhfLabError(f"frontier.points.{point_name} reads this run's {', '.join(missing)}, which neither the "
                           f"run (stages: {base.stages}) nor the point trains; add it to stages.")


def frontier_plan(config: str | None, overrides: Sequence[str]) -> Plan:
    """The runs of a frontier preset (the config's `frontier` section): every point at the first seed,
    then at the next, ..., named <point>-seed<s> (<point> when there is one seed), each reading the run's own stages
    (trained once in <base>) through links. Every point's config is loaded now, so a bad setting
    fails before anything runs.

    Raises RlhfLabError naming the point when its settings do not load, when it runs a stage the run
    trains once for every point, when it reads a stage that neither runs, or when its name is not a
    plain folder name."""
    loaded = load_config(config, overrides)
    if loaded.frontier.points is None:
        raise RlhfLabError("This config lists no frontier points (frontier.points); `rlhflab pipeline` runs it as one run.")
    base = dataclasses.replace(loaded, frontier=FrontierConfig())  # its own stages: a plain pipeline
    root = Path(base.runs_dir) / base.name
    folder = root / SWEEP_DIR
    seeds = loaded.frontier.seeds
    points, configs = [], {}
    listed = {name: tuple((key, json.dumps(value)) for key, value in flatten_settings(settings).items())  # JSON is YAML
              for name, settings in loaded.frontier.points.items()}
    for seed in seeds:  # seed by seed: after the first, every method has a point
        for point_name, values in listed.items():
            name = point_name if len(seeds) == 1 else f"{point_name}-seed{seed}"
            if name in (COMPARE_DIR, FRONTIER_DIR):
                raise RlhfLabError(f"frontier.points.{point_name}: the point's folder would be {folder / name}, where the "
                                   f"frontier's figure goes; give the point another name.")
            try:
                check_run_name(name)
                point = Point(name, (*values, ("seed", str(seed))))
                cfg = load_config(config, [*overrides, *point.overrides, "frontier.points=null", *_place(folder, name)])
            except RlhfLabError as exc:
                raise RlhfLabError(f"frontier.points.{point_name}: {exc}") from None
            own = folder / name
            _check_frontier_point(point_name, cfg, base, own)
            configs[name] = _rebase(cfg, {str(stage_dir(own, stage)): str(stage_dir(root, stage)) for stage in base.stages})
            points.append(point)
    command = ["rlhflab", "pipeline", *(["--config", str(config)] if config else []), *overrides]
    return Plan(None if config is None else str(config), list(overrides), [], points, base, configs, list(base.stages),
                list(base.stages), command, kind="frontier")


def _link(folder: Path, stage: str, root: Path) -> bool:
    """`<point>/<stage> -> ../../<stage>` (relative, so the runs folder can move); True when linked.
    A base run made before a stage was renamed keeps its old folder name (stage_dir), and so does
    the link to it.

    A folder of the point's own (from a sweep where the stage differed) is left alone: its key
    decides whether the point's pipeline keeps it."""
    shared = stage_dir(root, stage)
    link, target, own = folder / shared.name, shared_stage_link(shared.name), stage_dir(folder, stage)
    if own != link and own.is_symlink():
        own.unlink()  # a link under the stage's other name: only the link goes
    elif own != link and own.exists():
        return False
    if link.is_symlink():
        if os.readlink(link) == str(target):
            return True
        link.unlink()  # a link somewhere else: only the link goes
    elif link.exists():
        return False
    if not shared.is_dir():
        return False
    os.symlink(target, link, target_is_directory=True)
    return True


def point_done(cfg: Config) -> bool:
    """Every stage of the point's pipeline finished with its current key."""
    from rlhflab.pipeline import stage_state
    from rlhflab.stages.registry import STAGES

    return all(stage_state(cfg, stage) == "done" for stage in STAGES if stage in cfg.stages)


# -- running ---------------------------------------------------------------------------------


def _launch(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """One point's pipeline in its own process, stdout and stderr appended to `log`.

    In a session of its own, so that a Ctrl-C at the terminal reaches the driver alone, which
    passes one stop on to each point (a background driver's `kill -INT` reaches no point otherwise);
    and told to stop when the driver dies (rlhflab.interrupt.stop_with_parent)."""
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {shlex.join(command)}\n")
        handle.flush()
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**env, PARENT_ENV: str(os.getpid())}, start_new_session=True)


@dataclass
class _Job:
    index: int
    point: Point
    process: Any
    started: float


@dataclass
class Sweep:
    plan: Plan
    parallel: int = 1
    echo: Callable[[str], None] = print
    manifest: dict = field(default_factory=dict)

    # -- the manifest --
    def _entry(self, point: Point) -> dict:
        return next(e for e in self.manifest["points"] if e["name"] == point.name)

    def _save(self) -> None:
        write_json(self.plan.folder / MANIFEST, self.manifest)

    def _start_manifest(self) -> None:
        plan = self.plan
        before = {}
        if (plan.folder / MANIFEST).is_file():
            try:
                before = {e["name"]: e for e in read_json(plan.folder / MANIFEST).get("points", [])}
            except (RlhfLabError, AttributeError, TypeError, KeyError):
                before = {}
        dropped = [name for name in before if name not in {p.name for p in plan.points}]
        if dropped:  # an earlier, different grid under the same name: say so rather than drop them silently
            self.echo(f"note      {len(dropped)} point(s) of the earlier sweep here are not in this grid and leave "
                      f"sweep.json and the comparison (their folders stay): {', '.join(dropped)}")
        self.manifest = {
            "config": plan.config,
            "command": shlex.join(plan.command),
            "fixed": plan.fixed,
            "axes": {axis.key: list(axis.values) for axis in plan.axes},
            "shared": plan.shared,
            "base": str(plan.root),
            "points": [{"name": p.name, "overrides": p.overrides, "status": "pending",
                        "seconds": (before.get(p.name) or {}).get("seconds"), "error": None,
                        "log": str(plan.point_dir(p) / LOG)} for p in plan.points],
        }

    def _prepare(self, point: Point) -> None:
        folder = self.plan.point_dir(point)
        folder.mkdir(parents=True, exist_ok=True)
        for stage in self.plan.linked:
            _link(folder, stage, self.plan.root)
        atomic_write_text(folder / POINT_CONFIG, dump_yaml(self.plan.configs[point.name]))

    # -- the run --
    def run(self) -> None:
        plan = self.plan
        self._start_manifest()
        todo = []
        for index, point in enumerate(plan.points, 1):
            status = self._judge(index, point)
            if status == "done":
                self._say(index, point, f"{'up to date':<14} {_headline(plan.point_dir(point))}")
            elif status == "todo":
                todo.append((index, point))
        self._save()
        running: list[_Job] = []
        try:
            while todo or running:
                while todo and len(running) < self.parallel:
                    running.append(self._start(*todo.pop(0)))
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    self._finish(job, job.process.returncode)
                if running:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (rlhflab.interrupt.stop_at_once, set by `run`)
            self._stop(running)
            raise RunInterrupted(self._stopped_message()) from None

    def _judge(self, index: int, point: Point) -> str:
        """Set the point's folder up and say whether it is 'done', 'todo' or 'failed' (another
        process still writes it: an earlier run's point, stopping after its driver was killed, is waited for)."""
        folder = self.plan.point_dir(point)

        def waiting(holder: str) -> None:
            self._say(index, point, f"waiting for {holder}, which still writes this point, to stop ...")

        try:
            with run_lock(folder, wait=LOCK_WAIT_SECONDS, waiting=waiting):
                self._prepare(point)
                done = point_done(self.plan.configs[point.name])
        except RlhfLabError as exc:
            if not str(exc).startswith(f"{folder} is in use"):
                raise
            self._entry(point).update(status="failed", error=f"error: {exc}")
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / LOG, "a", encoding="utf-8") as handle:  # where the sweep's error says to look
                handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}  not started\nerror: {exc}\n")
            self._say(index, point, f"FAILED: {exc}")
            return "failed"
        self._entry(point)["status"] = "done" if done else "pending"
        return "done" if done else "todo"

    def _say(self, index: int, point: Point, text: str) -> None:
        width = max(len(p.name) for p in self.plan.points)
        total = len(self.plan.points)
        self.echo(f"[{index:>{len(str(total))}}/{total}] {point.name:<{width}}  {text}".rstrip())

    def _start(self, index: int, point: Point) -> _Job:
        folder = self.plan.point_dir(point)
        command = [sys.executable, "-m", "rlhflab", "pipeline", "--config", str(folder / POINT_CONFIG), "--no-progress"]
        env = dict(os.environ)
        if self.parallel > 1 and "OMP_NUM_THREADS" not in env:  # points side by side share the cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        entry = self._entry(point)
        entry.update(status="running", error=None)
        self._save()
        self._say(index, point, f"running ...      log {folder / LOG}")
        return _Job(index, point, _launch(command, folder / LOG, env), time.perf_counter())

    def _finish(self, job: _Job, code: int | None, *, interrupted: bool = False) -> None:
        from rlhflab.pipeline import _duration

        entry = self._entry(job.point)
        seconds = time.perf_counter() - job.started
        entry["seconds"] = round(seconds, 1)
        log = self.plan.point_dir(job.point) / LOG
        if code == 0:
            entry.update(status="done", error=None)
            self._say(job.index, job.point, f"done in {_duration(seconds):<6} {_headline(self.plan.point_dir(job.point))}")
        elif interrupted or code == 130:
            entry.update(status="interrupted", error=None)
            self._say(job.index, job.point, f"interrupted after {_duration(seconds)} (a checkpoint is saved)")
        else:
            entry.update(status="failed", error=_last_line(log) or f"exit status {code}")
            self._say(job.index, job.point, f"FAILED after {_duration(seconds)}: {entry['error']}")
        self._save()

    def _stop(self, running: list[_Job]) -> None:
        """After Ctrl-C or SIGTERM: pass one SIGTERM on to each running point (each in a session of
        its own: nothing else reaches it), and wait for them to save a checkpoint and stop. A
        second Ctrl-C passes a second one on, which stops the points at once."""
        if running:
            self.echo(f"stopping: waiting for {len(running)} running point(s) to save a checkpoint ...")
        for job in running:
            job.process.send_signal(signal.SIGTERM)
        for job in running:
            while True:
                try:
                    code = job.process.wait()
                    break
                except KeyboardInterrupt:
                    for other in running:
                        if other.process.poll() is None:
                            other.process.send_signal(signal.SIGTERM)
            self._finish(job, code, interrupted=code != 0)
        self._save()

    def _stopped_message(self) -> str:
        left = [e["name"] for e in self.manifest["points"] if e["status"] != "done"]
        return (f"the sweep stopped with {len(left)} of {len(self.manifest['points'])} points not finished "
                f"({', '.join(left)}); rerun the same command to resume.")


def _headline(folder: Path) -> str:
    """The point's headline (start -> end reward, KL) from the summary.json of its rl, dpo or ilql
    stage (the first it has), if there is one."""
    from rlhflab.pipeline import headline

    for stage in ("rl", "dpo", "ilql"):
        path = stage_dir(folder, stage) / "summary.json"
        if path.is_file():
            try:
                return headline(stage, read_json(path))
            except (RlhfLabError, KeyError, TypeError, ValueError):
                return ""
    return ""


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line), "")


def run(config: str | None, overrides: Sequence[str], *, parallel: int = 1, progress: bool = True,
        echo: Callable[[str], None] = print, frontier: bool = False) -> Path:
    """Run the sweep (skipping finished points, resuming cut-off ones), then compare the points;
    returns the folder of the comparison (<base>/sweep/compare). `frontier`: run the points of the
    config's frontier section instead of a grid (frontier_plan), then draw them; returns the path of
    the figure (<base>/sweep/frontier/frontier.png).

    Raises RlhfLabError (after the comparison) when points failed or another process runs the
    same sweep, and RunInterrupted when Ctrl-C or SIGTERM stopped it."""
    if parallel < 1:
        raise RlhfLabError(f"--parallel must be at least 1; got {parallel}.")
    plan = (frontier_plan if frontier else make_plan)(config, overrides)
    with run_lock(plan.root), stop_at_once():  # one driver per sweep; Ctrl-C honoured also in the background
        try:
            return _run(plan, parallel=parallel, progress=progress, echo=echo)
        except KeyboardInterrupt:  # outside the points' loop (which says what stopped)
            raise RunInterrupted("the sweep stopped; rerun the same command to resume.") from None


def _run(plan: Plan, *, parallel: int, progress: bool, echo: Callable[[str], None]) -> Path:
    from rlhflab import pipeline

    shape = ' x '.join(f'{len(a.values)} {a.key}' for a in plan.axes) if plan.axes else "listed in frontier.points"
    echo(f"{plan.kind:<9} {len(plan.points)} {'runs' if plan.kind == 'frontier' else 'points'} ({shape}) in {plan.folder}")
    if plan.shared:
        echo(f"shared    {', '.join(plan.shared)}: trained once, in {plan.root}")
        try:
            pipeline.run(plan.base, only=plan.shared, report=False, progress=progress, echo=echo)
        except RunInterrupted as exc:  # "<stage> stopped and saved a checkpoint in ...; run the same pipeline ..."
            raise RunInterrupted(f"{str(exc).split(';')[0]}; rerun the same command to resume.") from None
    else:
        echo("shared    none: every stage differs between points")
    sweep = Sweep(plan, parallel=parallel, echo=echo)
    sweep.run()
    result = _summarise(plan, sweep, echo)
    failed = [e for e in sweep.manifest["points"] if e["status"] == "failed"]
    if failed:
        raise RlhfLabError(f"{len(failed)} of {len(plan.points)} points failed: {', '.join(e['name'] for e in failed)}; "
                           f"see {', '.join(e['log'] for e in failed)}.")
    left = [e for e in sweep.manifest["points"] if e["status"] != "done"]
    if left:
        raise RunInterrupted(sweep._stopped_message())
    return result


def _summarise(plan: Plan, sweep: Sweep, echo: Callable[[str], None]) -> Path:
    """A grid: `rlhflab compare` of every point (returns its folder). A frontier: `rlhflab frontier` of
    the points that finished (returns the figure; a point that failed or stopped is left out, and said)."""
    echo("")
    if plan.kind != "frontier":
        from rlhflab.eval.compare import compare

        result = compare([str(plan.folder)], plan.folder / COMPARE_DIR)
        echo(result.text)
        echo(str(result.markdown))
        return result.folder
    from rlhflab.eval.frontier import frontier

    done = [plan.point_dir(p) for p in plan.points if sweep._entry(p)["status"] == "done"]
    out = plan.folder / FRONTIER_DIR
    if not done:
        echo(f"frontier  no run finished, so nothing is drawn in {out}")
        return out / "frontier.png"
    if len(done) < len(plan.points):
        echo(f"frontier  {len(done)} of {len(plan.points)} runs finished; the figure shows those")
    drawn = frontier([str(folder) for folder in done], out)
    echo(drawn.text)
    return drawn.png
