"""`rlhflab compare RUN_OR_SWEEP ...`: RL runs side by side (a table, curves, the reward-KL frontier).

Arguments: a sweep folder (runs/x/sweep: all its points, in the manifest's order), a run folder
(runs/x: its rl stage) or an RL stage folder (runs/x/rl; runs/x/ppo in a run made before the
stage was renamed rl). Reads only the run directory contract: each RL run's summary.json,
metrics.jsonl and config.yaml (a sweep point's point.yaml).
Writes <out>/compare.json, <out>/compare.md and <out>/figures/compare_*.png; the run report
shows compare.json of <run>/sweep/compare as its "Sweep" section.

Runs may come from someone else, so their files are read as data (rlhflab/eval/run_files.py):
only regular files inside the folder an argument names, never through a symbolic link. The
rule for a run's file that cannot be used (a link, JSON or YAML that does not parse, a YAML tag
such as `!!python/object`, a list where an object goes, a string where a number goes): its
numbers show as missing ("-", "not finished") and a sentence names the file and why; the
comparison still builds. An argument that names no RL run, or a sweep.json without a usable
list of points (it says what to compare), is an RlhfLabError.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlhflab.errors import RlhfLabError
from rlhflab.eval.run_files import (
    HandedFileError,
    first_line,
    read_json_lines,
    read_json_object,
    read_yaml_mapping,
    run_file,
    writable_folder,
)
from rlhflab.io import atomic_write_text, write_json
from rlhflab.stages.registry import RENAMED, recorded_input, stage_dir, stage_folders

RL_STAGE = "rl"  # the stage folder of every RL algorithm (ppo, grpo, rloo, ...)
RL_FOLDERS = (RL_STAGE, *(old for old, new in RENAMED.items() if new == RL_STAGE))  # and its name in older runs
LAST_STEPS = 10  # clip fraction and approximate KL are averaged over this many last steps
MIN_KL = 0.5  # nats; a run that moved less is left out of "reward per nat": a sampled KL near 0 is mostly noise
DEFAULT_KEYS = ("rl.algorithm", "rl.learning_rate", "rl.kl_coef")  # shown for runs outside a sweep
# metrics.jsonl train keys drawn one figure each: key, title, y label
CURVES = (
    ("score_mean", "Mean reward of the training batches", "reward"),
    ("kl", "KL to the reference model", "KL (nats / response)"),
    ("clip_fraction", "Clip fraction", "share of tokens clipped"),
    ("approx_kl", "Approximate KL between the rollout policy and the updated one", "approx. KL (nats / token)"),
    ("policy_loss", "Policy loss", "loss"),
    ("beta", "KL coefficient β", "β"),
)
NOT_FINISHED = "not finished"
USAGE = ("Pass a sweep folder (runs/NAME/sweep, with sweep.json), a run folder (runs/NAME, with an rl/ stage) or an "
         "RL stage folder (runs/NAME/rl, with summary.json or metrics.jsonl).")


@dataclass
class RlRun:
    """One RL run to compare: where it is, what was swept, what it wrote."""

    name: str
    folder: Path  # the RL stage folder (runs/x/rl); need not exist yet
    swept: dict[str, str] = field(default_factory=dict)  # key -> value as typed (sweep points)
    config: dict | None = None
    summary: dict | None = None
    rows: list[dict] = field(default_factory=list)
    root: Path | None = None  # the folder the argument named: nothing outside it is read (default: folder's parent)
    problems: list[str] = field(default_factory=list)  # files of this run that were not used, and why
    stage: dict | None = None  # stage.json: the fingerprints of what it read (the reward among them)
    held_out: list[dict] = field(default_factory=list)  # eval_after.json: one row per held-out prompt

    @property
    def finished(self) -> bool:
        return isinstance(self.summary, dict) and isinstance(self.summary.get("end"), dict)


@dataclass
class Comparison:
    folder: Path
    markdown: Path
    json: Path
    text: str  # the table and the sentences, for the terminal
    data: dict


# -- reading --------------------------------------------------------------------------------


def _handed(run: RlRun, read, relative: Path, default=None):
    """read(root, relative) of a run's file; a file that cannot be used (HandedFileError) is
    noted in run.problems and gives `default`. A config we cannot read only costs its columns."""
    try:
        return read(run.root, relative.as_posix())
    except HandedFileError as exc:
        run.problems.append(str(exc))
        return default


def _read(run: RlRun) -> RlRun:
    """Fill in summary, metrics and config: from the finished folder, or what an unfinished run left in <stage>.partial."""
    run.root = run.root or run.folder.parent
    folder = run.folder.relative_to(run.root)  # Path(".") when the argument is the stage folder itself
    partial = folder.with_name(f"{folder.name}.partial") if folder.name else None
    run.summary = _handed(run, read_json_object, folder / "summary.json")
    unfinished = run.summary is None and partial is not None and (run.root / partial).is_dir()
    source = partial if unfinished else folder
    run.rows = _handed(run, read_json_lines, source / "metrics.jsonl", [])
    if run.config is None:
        run.config = (_handed(run, read_yaml_mapping, source / "config.yaml") or (None, None))[1]
    run.stage = _handed(run, read_json_object, source / "stage.json")
    if run.summary is not None:
        run.held_out = _handed(run, _read_json_rows, folder / "eval_after.json", [])
    return run


def _read_json_rows(root: Path, relative: str) -> list[dict]:
    """The JSON list of objects in `root / relative` ([] when there is none); HandedFileError
    (see run_files) when it may not be read or is not such a list."""
    path = run_file(root, relative)
    if path is None:
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise HandedFileError(f"{path} is not a readable JSON list ({first_line(exc)[:200]}); it was not read.") from None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise HandedFileError(f"{path} is not a JSON list of objects; it was not read.")
    return data


def _is_rl_stage(path: Path) -> bool:
    if path.name in (*RL_FOLDERS, *(f"{name}.partial" for name in RL_FOLDERS)):
        return True
    try:
        summary = read_json_object(path, "summary.json")
    except HandedFileError:
        return False
    return summary is not None and "end" in summary and "evaluations" in summary


def _point_names(path: Path) -> list[tuple[str, dict[str, str]]]:
    """(name, swept key -> value) of each point a sweep.json lists; RlhfLabError naming the file
    when it has no usable list (a name must be one folder inside the sweep)."""
    try:
        manifest = read_json_object(path, "sweep.json")
    except HandedFileError as exc:
        raise RlhfLabError(f"{exc} Rerun the sweep to rewrite it.") from None
    points = manifest.get("points") if manifest else None
    if not isinstance(points, list) or not all(isinstance(p, dict) and "name" in p for p in points):
        raise RlhfLabError(f"{path / 'sweep.json'} has no list of points; rerun the sweep to rewrite it.")
    out = []
    for point in points:
        name, overrides = point["name"], point.get("overrides", [])
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
            raise RlhfLabError(f"{path / 'sweep.json'} lists a point named {name!r}, which is not a folder inside "
                               f"{path}; rerun the sweep to rewrite it.")
        if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
            raise RlhfLabError(f"{path / 'sweep.json'}: the overrides of point {name} are not a list of key=value "
                               "strings; rerun the sweep to rewrite it.")
        out.append((name, dict(item.split("=", 1) for item in overrides if "=" in item)))
    return out


def _is_run(path: Path) -> bool:
    return any((path / stage).is_dir() or (path / f"{stage}.partial").is_dir() for stage in stage_folders())


def resolve(argument: str) -> list[RlRun]:
    """The RL runs one argument names. Raises RlhfLabError naming the argument when it is none of the three."""
    path = Path(argument)
    if not path.is_dir():
        raise RlhfLabError(f"{argument} is not a folder. {USAGE}")
    if os.path.lexists(path / "sweep.json"):
        runs = []
        for name, swept in _point_names(path):
            run = RlRun(name, stage_dir(path / name, RL_STAGE), swept, root=path)
            run.config = (_handed(run, read_yaml_mapping, Path(name, "point.yaml")) or (None, None))[1]
            runs.append(run)
        return runs
    if _is_rl_stage(path):
        stage = path.name.removesuffix(".partial") in RL_FOLDERS
        name = path.resolve().parent.name if stage else path.resolve().name
        folder = path.with_name(path.name.removesuffix(".partial")) if stage else path
        # runs/x/rl(.partial): runs/x is the run handed over; a stage folder of another name is its own root
        return [RlRun(name, folder, root=path.parent if stage else path)]
    if _is_run(path):
        return [RlRun(path.resolve().name, stage_dir(path, RL_STAGE), root=path)]
    raise RlhfLabError(f"{argument} holds no sweep.json, no stage folders and no RL summary. {USAGE}")


def collect(arguments: Sequence[str]) -> tuple[list[RlRun], list[str]]:
    """(runs, swept keys) of every argument, each run read; names made unique."""
    if not arguments:
        raise RlhfLabError(f"Nothing to compare. {USAGE}")
    runs: list[RlRun] = []
    keys: list[str] = []
    plain = False
    for argument in arguments:
        found = resolve(argument)
        sweep = (Path(argument) / "sweep.json").is_file()
        plain = plain or not sweep
        for run in found:
            if sweep:
                keys += [k for k in run.swept if k not in keys]
            runs.append(_read(run))
    if plain or not keys:
        keys += [k for k in DEFAULT_KEYS if k not in keys]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # the same point name in two sweeps, or a run given twice
        for run in runs:
            run.name = run.folder.parent.as_posix()
    return runs, keys


# -- numbers ----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite number from a run's file, else None (a string, a list, NaN, an int beyond float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _by_step(rows: list[dict], split: str) -> list[dict]:
    """Rows of one split (rows without a split are train rows), one per step (the last logged), by step."""
    out: dict[int, dict] = {}
    for row in rows:
        step = _number(row.get("step"))
        if row.get("split", "train") == split and step is not None:
            out[int(step)] = row
    return [out[step] for step in sorted(out)]


def evaluations(run: RlRun) -> list[dict]:
    """The held-out evaluations, by step: metrics.jsonl's eval rows, else summary.json's list."""
    rows = _by_step(run.rows, "eval")
    if rows:
        return rows
    listed = (run.summary or {}).get("evaluations")
    listed = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
    return sorted(listed, key=lambda e: _number(e.get("step")) or 0.0)


def reward_key(runs: Sequence[RlRun]) -> str:
    """positive_probability when every run with evaluations has it, else score (one scale for all)."""
    having = [evaluations(r) for r in runs]
    having = [e for e in having if e]
    if having and all(any("positive_probability" in row for row in e) for e in having):
        return "positive_probability"
    return "score"


def _mean_last(rows: list[dict], key: str) -> float | None:
    values = [v for v in (_number(r.get(key)) for r in rows[-LAST_STEPS:]) if v is not None]
    return statistics.fmean(values) if values else None


def numbers(run: RlRun, key: str) -> dict:
    """The table's numbers for one run (None where a run has not got that far)."""
    evals = [e for e in evaluations(run) if _number(e.get(key)) is not None]
    train = _by_step(run.rows, "train")
    out: dict[str, Any] = {"name": run.name, "folder": str(run.folder), "finished": run.finished, "swept": run.swept}
    best = max(evals, key=lambda e: float(e[key]), default=None)
    out["best_reward"] = _number(best[key]) if best else None
    out["best_step"] = best.get("step") if best else None
    out["clip_fraction_last"] = _mean_last(train, "clip_fraction")
    out["approx_kl_last"] = _mean_last(train, "approx_kl")
    steps = _number((run.summary or {}).get("steps")) if run.finished else (_number(train[-1]["step"]) if train else None)
    out["steps"] = None if steps is None else int(steps)
    out["seconds"] = _number((run.summary or {}).get("seconds")) if run.finished else None
    start = _dict((run.summary or {}).get("start")) if run.finished else (evals[0] if evals else {})
    end = _dict((run.summary or {}).get("end")) if run.finished else {}
    out["start_reward"] = _number(start.get(key))
    out["final_reward"] = _number(end.get(key))
    out["final_kl"] = _number(end.get("kl"))
    gain = None if out["final_reward"] is None or out["start_reward"] is None else out["final_reward"] - out["start_reward"]
    out["reward_gain"] = gain
    out["reward_per_kl"] = gain / out["final_kl"] if gain is not None and out["final_kl"] else None
    out["reward_id"], out["reward_described"] = reward_of(run)
    out["setting"] = setting_of(run)
    rest = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in run.swept.items() if k != "seed"]
    out["setting_label"] = (" ".join(rest) or "every point") if "seed" in run.swept else None
    out["final_se"], out["final_se_from"] = held_out_se(run, key, out["final_reward"]) if run.finished else (None, "")
    return out


# -- what compares: the reward, the setting, the noise ----------------------------------------

TIE_SE = 2.0  # one seed each: a difference within this many standard errors of the difference (about 95%) is a tie
NOT_RECORDED = "not recorded"


def reward_of(run: RlRun) -> tuple[str | None, str]:
    """(identity, description) of the reward that scored `run`; identity None when the run records none.

    The description is summary.json's "reward" (`<source> (<kind>, <output>[, flipped][, reads N
    tokens])`, else config.yaml's reward_fn.source). The identity puts stage.json's fingerprint of
    the source (a reward run's run id, a file's hash) in place of its path, so runs/x/reward,
    /abs/runs/x/reward and a sweep point's link to it are one reward, and a retrained reward model
    with the same path is another; reward_fn.label and .text, which change the score, join it."""
    described = (run.summary or {}).get("reward")
    described = described if isinstance(described, str) and described.strip() else None
    settings = _dict(_pick(run.config, "reward_fn"))
    source = settings.get("source") if isinstance(settings.get("source"), str) else None
    where = described.rsplit(" (", 1)[0] if described and described.endswith(")") and " (" in described else described
    how = described[len(where):].strip() if described and where else ""
    where = where or source
    printed = recorded_input(run.stage, source, "reward")
    if where is None and printed is None:
        return None, NOT_RECORDED
    identity = {"source": printed if isinstance(printed, str) else where, "how": how,
                **{k: settings.get(k) for k in ("label", "text") if k in settings}}
    return json.dumps(identity, sort_keys=True, default=str), described or f"{where} (from config.yaml's reward_fn.source)"


def setting_of(run: RlRun) -> str:
    """What the run's numbers depend on besides its seed: runs with the same setting are seeds of
    one configuration. A sweep point: its swept values but `seed`. Another run: its config.yaml
    without seed, name and runs_dir (its own folder's path written as <this run>); a run whose
    config cannot be read is a setting of its own."""
    if run.swept:
        return json.dumps({"sweep": str(run.root), **{k: v for k, v in run.swept.items() if k != "seed"}}, sort_keys=True)
    if not isinstance(run.config, dict):
        return json.dumps({"run": str(run.folder)})
    tree = {k: v for k, v in run.config.items() if k not in ("seed", "name", "runs_dir")}
    own = _pick(run.config, "runs_dir"), _pick(run.config, "name")
    if all(isinstance(part, str) for part in own):
        prefix = str(Path(*own))
        tree = json.loads(json.dumps(tree, default=str).replace(json.dumps(prefix)[1:-1], "<this run>"))
    return json.dumps(tree, sort_keys=True, default=str)


def held_out_se(run: RlRun, key: str, final: float | None) -> tuple[float | None, str]:
    """(standard error of the final held-out mean of `key`, how it was had). From the spread of
    eval_after.json's per-prompt values (sd / sqrt(n)); else, for P(positive), the binomial bound
    sqrt(p (1 - p) / n) with n = rl.eval_prompts (a mean of numbers in [0, 1] varies at most that
    much); else (None, why)."""
    values = [v for v in (_number(row.get(key)) for row in run.held_out) if v is not None]
    if len(values) >= 2:
        return statistics.stdev(values) / math.sqrt(len(values)), f"the spread over its {len(values)} held-out prompts"
    prompts = _number(next((v for v in (_pick(run.config, f"{section}.eval_prompts") for section in ("rl", "ppo"))
                            if v is not None), None))  # `ppo` is the RL section's name before it was `rl`
    if key == "positive_probability" and final is not None and prompts and prompts >= 1:
        return math.sqrt(max(final * (1 - final), 0.0) / prompts), f"a binomial standard error over {int(prompts)} held-out prompts"
    return None, "no per-prompt rows (eval_after.json) to measure it from"


@dataclass
class Setting:
    """The finished runs of one setting (its seeds) under one reward: mean, range, noise."""

    label: str
    rows: list[dict]  # numbers() of each run

    @property
    def values(self) -> list[float]:
        return [n["final_reward"] for n in self.rows]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def seeds(self) -> int:
        return len(self.rows)

    @property
    def se(self) -> float | None:
        return self.rows[0]["final_se"] if self.seeds == 1 else None

    def shown(self) -> str:
        if self.seeds == 1:
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} (mean of {self.seeds} seeds, range {self.low:.3f}-{self.high:.3f})"


def tie(best: Setting, other: Setting) -> bool | None:
    """Whether `other`'s final reward is not told apart from `best`'s (best.mean >= other.mean):
    with several seeds each, their seed ranges overlap; with one seed each, the difference is
    within TIE_SE standard errors of the difference; one of each, the single run's TIE_SE band
    reaches the other's range. None when a single run has no standard error to judge by."""
    if best.seeds > 1 and other.seeds > 1:
        return best.low <= other.high
    if best.seeds == 1 and other.seeds == 1:
        if best.se is None or other.se is None:
            return None
        return best.mean - other.mean <= TIE_SE * math.hypot(best.se, other.se)
    single, several = (best, other) if best.seeds == 1 else (other, best)
    if single.se is None:
        return None
    return single.mean - TIE_SE * single.se <= several.high and several.low <= single.mean + TIE_SE * single.se


def settings(rows: Sequence[dict]) -> list[Setting]:
    """The finished runs of `rows` (one reward) grouped by setting (numbers()'s "setting"), in first-seen order."""
    grouped: dict[str, list[dict]] = {}
    for n in rows:
        if n["finished"] and n["final_reward"] is not None:
            grouped.setdefault(n["setting"], []).append(n)
    out = []
    for members in grouped.values():
        names = [n["name"] for n in members]
        label = names[0] if len(names) == 1 else members[0].get("setting_label") or " + ".join(names)
        out.append(Setting(label, members))
    return out


def ranking(rows: Sequence[dict], label: str) -> list[str]:
    """The sentence naming the best setting of one reward, or the settings that tie for best, and why."""
    found = sorted(settings(rows), key=lambda s: s.mean, reverse=True)
    if not found:
        return []
    best, rest = found[0], found[1:]
    if not rest:  # one setting: nothing to rank it against
        return [] if best.seeds == 1 else [f"{best.label}: final held-out {label} {best.shown()}."]
    verdicts = [(other, tie(best, other)) for other in rest]
    tied = [other for other, verdict in verdicts if verdict]
    unknown = [other for other, verdict in verdicts if verdict is None]
    runner = rest[0]
    if tied:
        names = ", ".join(s.label for s in [best, *tied])
        values = ", ".join(s.shown() for s in [best, *tied])
        return [f"{names} tie for the highest final held-out {label} ({values}): {_why(best, tied[-1], tied=True)}."]
    if unknown:
        return [f"{best.label} has the highest final held-out {label}: {best.shown()}, against {runner.label}'s "
                f"{runner.shown()}; whether that is more than noise is not known ({_why(best, runner, tied=None)})."]
    return [f"{best.label} has the highest final held-out {label}: {best.shown()}, ahead of the next, {runner.label} "
            f"({runner.shown()}), by more than the noise ({_why(best, runner, tied=False)})."]


def _why(best: Setting, other: Setting, *, tied: bool | None) -> str:
    """Why two settings tie or do not, in words with the figures."""
    if best.seeds > 1 and other.seeds > 1:
        return "their seed ranges overlap" if tied else "their seed ranges do not overlap"
    if tied is None:
        single = best if best.se is None else other
        return f"{single.label} has one seed and {single.rows[0]['final_se_from']}"
    if best.seeds == 1 and other.seeds == 1:
        band = TIE_SE * math.hypot(best.se, other.se)
        within = "within" if tied else "beyond"
        return (f"the difference, {best.mean - other.mean:.3f}, is {within} {TIE_SE:g} standard errors of the difference "
                f"(±{band:.3f}; one seed each, standard errors from {best.rows[0]['final_se_from']})")
    single = best if best.seeds == 1 else other
    return (f"{single.label}'s one seed ± {TIE_SE:g} standard errors (±{TIE_SE * single.se:.3f}, from "
            f"{single.rows[0]['final_se_from']}) {'reaches' if tied else 'stays clear of'} the other's seed range")


# -- the table --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value, default=str)  # YAML dates are not JSON


def _pick(tree: dict | None, key: str) -> Any:
    """tree[a][b] for key "a.b", else None; an `rl.*` key falls back to the `ppo:` section that runs
    made before the rename have."""
    found = tree
    for part in key.split("."):
        found = found.get(part) if isinstance(found, dict) else None
    if found is None and key.startswith("rl."):
        return _pick(tree, "ppo." + key[3:])
    return found


def _column_labels(keys: Sequence[str]) -> list[str]:
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return [k if leaves.count(leaf) > 1 else leaf for k, leaf in zip(keys, leaves)]


def table(runs: Sequence[RlRun], keys: Sequence[str], reward: str, rows: Sequence[dict], *, sweep: bool) -> tuple[list[str], list[list[str]]]:
    label = "P(positive)" if reward == "positive_probability" else "reward"
    header = ["point" if sweep else "run", *_column_labels(keys), f"final {label}", f"best {label}", "final KL",
              f"clip fraction (last {LAST_STEPS})", f"approx. KL (last {LAST_STEPS})", "steps", "seconds"]
    body = []
    for run, n in zip(runs, rows):
        swept = [run.swept[k] if k in run.swept else _value(_pick(run.config, k)) for k in keys]
        best = "-" if n["best_reward"] is None else f"{n['best_reward']:.3f} (step {n['best_step']})"
        final = _fmt(n["final_reward"]) if run.finished else NOT_FINISHED
        steps = "-" if n["steps"] is None else (str(n["steps"]) if run.finished else f"{n['steps']} so far")
        body.append([run.name, *swept, final, best, _fmt(n["final_kl"], 2), _fmt(n["clip_fraction_last"]),
                     _fmt(n["approx_kl_last"], 4), steps, _fmt(n["seconds"], 0)])
    return header, body


def sentences(rows: Sequence[dict], reward: str) -> list[str]:
    """The ranking of one reward's runs (settings within the noise tie, see ranking), their most
    reward per nat of KL, and the runs not finished."""
    label = "P(positive)" if reward == "positive_probability" else "reward"
    done = [n for n in rows if n["finished"] and n["final_reward"] is not None]
    out = []
    if not done:
        out.append("No run has finished yet: there is nothing to rank.")
    else:
        out += ranking(rows, label)
        efficient = [n for n in done if n["reward_per_kl"] is not None and n["final_kl"] >= MIN_KL]
        if efficient and len(done) > 1:
            top = max(efficient, key=lambda n: n["reward_per_kl"])
            out.append(f"Of the runs that moved at least {MIN_KL} nats from their start, {top['name']} gains the most "
                       f"{label} per nat of KL: {top['reward_gain']:+.3f} over its start at a final KL of "
                       f"{top['final_kl']:.2f} ({top['reward_per_kl']:.3f} per nat).")
    left = [n["name"] for n in rows if not n["finished"]]
    if left:
        out.append(f"Not finished: {', '.join(left)}.")
    return out


def seed_table(rows: Sequence[dict], reward: str) -> tuple[list[str], list[list[str]]] | None:
    """Mean and range over seeds of each setting with several finished seeds (None when none has)."""
    found = settings(rows)
    if not any(s.seeds > 1 for s in found):
        return None
    label = "P(positive)" if reward == "positive_probability" else "reward"
    header = ["setting", "seeds", f"final {label}: mean", "range", "final KL: mean", "range"]
    body = []
    for setting in found:
        kls = [n["final_kl"] for n in setting.rows if n["final_kl"] is not None]
        body.append([setting.label, str(setting.seeds), f"{setting.mean:.3f}", f"{setting.low:.3f}-{setting.high:.3f}",
                     f"{statistics.fmean(kls):.2f}" if kls else "-", f"{min(kls):.2f}-{max(kls):.2f}" if kls else "-"])
    return header, body


def reward_groups(runs: Sequence[RlRun]) -> list[tuple[str | None, str, list[RlRun]]]:
    """(identity, description, runs) per reward that scored them (reward_of), in first-seen order.
    Runs that record no reward join the others when those share one, else form a group of their own."""
    known: dict[str, tuple[str, list[RlRun]]] = {}
    unknown = []
    for run in runs:
        identity, described = reward_of(run)
        if identity is None:
            unknown.append(run)
        else:
            known.setdefault(identity, (described, []))[1].append(run)
    groups = [(identity, described, members) for identity, (described, members) in known.items()]
    if unknown and len(groups) == 1:
        identity, described, members = groups[0]
        groups = [(identity, described, [run for run in runs if run in members or run in unknown])]
    elif unknown:
        groups.append((None, NOT_RECORDED, unknown))
    return groups


def problems(runs: Sequence[RlRun]) -> list[str]:
    """A sentence per file of a run that was not used (the rule in the module docstring)."""
    return [f"Left out of {run.name}: {problem}" for run in runs for problem in run.problems]


def _plain_table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown pipe table with aligned columns, for the terminal."""
    cells = [header, *body]
    widths = [max(len(str(row[i]).replace("|", "\\|")) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).replace("|", "\\|").ljust(w) for c, w in zip(row, widths)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


# -- figures -----------------------------------------------------------------------------------


def _figures(groups: Sequence[tuple[str, str, Sequence[RlRun]]], folder: Path) -> list[dict]:
    """The curves of every run, and per reward (`groups`: (description, reward key, runs)) the
    training reward and the held-out reward against KL: one reward's scale on each axis."""
    from rlhflab.eval import plots

    written = []
    several = len(groups) > 1
    runs = [run for _, _, members in groups for run in members]
    for key, title, ylabel in CURVES:
        # the training reward is on each reward's own scale: drawn per reward, like the frontier
        parts = [(i, members, described) for i, (described, _, members) in enumerate(groups)] if key == "score_mean" \
            else [(0, runs, None)]
        for i, members, described in parts:
            # only finite numbers reach the plot: a handed metrics.jsonl may hold anything
            series = {run.name: [{"step": _number(r["step"]), key: _number(r.get(key))} for r in _by_step(run.rows, "train")
                                 if _number(r.get(key)) is not None] for run in members}
            if not any(series.values()):
                continue  # no run logged it (e.g. an algorithm without that statistic)
            path = plots.runs_metric(series, key, folder / f"compare_{key}{f'-{i + 1}' if i else ''}.png",
                                     title=title, ylabel=ylabel)
            scored = f" Scored with {described}." if several and described else ""
            written.append({"path": path, "caption": f"{title} ({key} in metrics.jsonl) per step, one colour per run; "
                                                     f"thick lines are rolling means where a run has enough steps.{scored}"})
    for i, (described, reward, members) in enumerate(groups):
        label = "P(positive)" if reward == "positive_probability" else "reward"
        frontier = {}
        for run in members:
            pairs = [(_number(e.get("kl")), _number(e.get(reward))) for e in evaluations(run)]
            frontier[run.name] = [(kl, value) for kl, value in pairs if kl is not None and value is not None]
        if any(frontier.values()):
            path = plots.reward_kl_frontier(frontier, folder / f"compare_frontier{f'-{i + 1}' if i else ''}.png",
                                            ylabel=f"held-out {label}")
            scored = f" Scored with {described}." if several else ""
            written.append({"path": path, "caption": f"Held-out {label} against KL to the reference at each evaluation, "
                                                     f"one line per run; the star is its last evaluation.{scored}"})
    for old in folder.glob("compare_*.png"):  # a metric no run logs any more
        if old.resolve() not in {Path(w["path"]).resolve() for w in written}:
            old.unlink(missing_ok=True)
    return written


# -- the whole comparison -----------------------------------------------------------------------


def compare(arguments: Sequence[str], out: str | Path | None = None) -> Comparison:
    """Compare the RL runs of `arguments`; write compare.json, compare.md and figures into `out`
    (default: <first argument>/compare). Raises RlhfLabError for an argument that names no RL run.

    Runs scored with different rewards (reward_of) get a table and a ranking each, never one
    column; settings whose final rewards lie within the noise (tie) are called a tie, not ranked."""
    from rlhflab.eval.document import to_markdown

    runs, keys = collect([str(a) for a in arguments])
    if out is None:  # inside the first argument: its compare/ must be a real folder, not a link to elsewhere
        writable_folder(Path(arguments[0]), "compare/figures")
    out = Path(out) if out is not None else Path(arguments[0]) / "compare"
    sweep = all((Path(a) / "sweep.json").is_file() for a in arguments)
    groups = reward_groups(runs) or [(None, NOT_RECORDED, [])]  # a sweep.json listing no point: an empty table
    several = len(groups) > 1
    tables, numbered, ranked = _reward_tables(groups, keys, sweep=sweep, several=several)
    said = _reward_notes(groups, runs) + ranked
    left = [n["name"] for n in numbered if not n["finished"]]
    if left:
        said.append(f"Not finished: {', '.join(left)}.")
    said += problems(runs)
    figures = _figures([(t["reward"], t["key"], members) for t, (_, _, members) in zip(tables, groups)], out / "figures")

    first = tables[0]
    data = {
        "sources": [str(a) for a in arguments],
        "reward": first["key"],  # the first table's (the only one unless the runs were scored with different rewards)
        "columns": list(keys),
        "header": first["header"],
        "rows": first["rows"],
        "tables": tables,
        "sentences": said,
        "runs": numbered,
        "figures": [{"path": Path(f["path"]).relative_to(out).as_posix(), "caption": f["caption"]} for f in figures],
    }
    json_path, md_path = out / "compare.json", out / "compare.md"
    write_json(json_path, data)
    atomic_write_text(md_path, to_markdown(_document(arguments, tables, keys, said, figures, several=several), out))
    return Comparison(out, md_path, json_path, _plain_text(tables, said, several=several), data)


def _reward_notes(groups: Sequence[tuple[str | None, str, Sequence[RlRun]]], runs: Sequence[RlRun]) -> list[str]:
    """The opening sentences: which runs each reward scored, or that no run says which reward scored it."""
    if len(groups) > 1:
        return [f"These runs were scored with {len(groups)} different rewards, so their numbers are not compared "
                f"across rewards: each reward has its own table and ranking. "
                + "; ".join(f"{described}: {', '.join(run.name for run in members)}" for _, described, members in groups)
                + "."]
    if groups and groups[0][0] is None and any(run.finished for run in runs):
        return ["No run records the reward that scored it (summary.json's \"reward\"), so this comparison cannot "
                "check that one reward scored them all."]
    return []


def _reward_tables(groups: Sequence[tuple[str | None, str, Sequence[RlRun]]], keys: Sequence[str], *, sweep: bool,
                   several: bool) -> tuple[list[dict], list[dict], list[str]]:
    """(one table per reward: its header, rows and seed table; every run's numbers; the ranking sentences)."""
    tables, numbered, ranked = [], [], []
    for _, described, members in groups:
        reward = reward_key(members)
        rows = [numbers(run, reward) for run in members]
        header, body = table(members, keys, reward, rows, sweep=sweep)
        ranked += [f"Scored with {described}: {s}" if several else s
                   for s in sentences(rows, reward) if not s.startswith("Not finished:")]
        seeds = seed_table(rows, reward)
        tables.append({"reward": described, "key": reward, "header": header, "rows": body,
                       "seeds": {"header": seeds[0], "rows": seeds[1]} if seeds else None})
        numbered += rows
    return tables, numbered, ranked


def _document(arguments: Sequence[str], tables: Sequence[dict], keys: Sequence[str], said: Sequence[str],
              figures: Sequence[dict], *, several: bool):
    """compare.md as a Document: the tables, the sentences, the curves."""
    from rlhflab.eval.document import Code, Document, Heading, Image, Table, para

    doc = Document("rlhflab compare")
    doc.add(para("Compared: ", *[part for a in arguments for part in (Code(str(a)), " ")]))
    for entry in tables:
        label = "P(positive)" if entry["key"] == "positive_probability" else "reward"
        scored = f" Scored with {entry['reward']}." if several else ""
        doc.add(Table(entry["header"], entry["rows"], left=1 + len(keys),
                      caption=f"Held-out {label}: the final evaluation and the best one (with its step); KL to the "
                              f"reference model at the end (nats per response); clip fraction and approximate KL "
                              f"averaged over the last {LAST_STEPS} steps.{scored}"))
        if entry["seeds"]:
            doc.add(Table(entry["seeds"]["header"], entry["seeds"]["rows"], left=1,
                          caption=f"Settings run with several seeds: the mean and range of the final held-out {label} "
                                  f"and KL over the seeds.{scored}"))
    doc.add(*(para(s) for s in said))
    if figures:
        doc.add(Heading("Curves"))
        doc.add(*(Image(Path(f["path"]), f["caption"]) for f in figures))
    return doc


def _plain_text(tables: Sequence[dict], said: Sequence[str], *, several: bool) -> str:
    """What `rlhflab compare` prints: the tables as text, then the sentences."""
    text = []
    for entry in tables:
        if several:
            text += [f"Scored with {entry['reward']}:"]
        text += [_plain_table(entry["header"], entry["rows"]), ""]
        if entry["seeds"]:
            text += [_plain_table(entry["seeds"]["header"], entry["seeds"]["rows"]), ""]
    return "\n".join([*text, *said])
