"""`rlhflab frontier RUN [RUN ...]`: held-out reward against KL to the reference, every method on one figure.

The model is Figure 2 of the DPO paper (Rafailov et al. 2023): each method a line through its
points sorted by KL, so "more reward per nat" reads as "further up and to the left". A point is
one setting of one method (an RL run at one β / kl_target, a DPO run, ILQL sampled at one β,
best-of-n at one n); runs that differ only by seed are one point, drawn at the mean with bars
from the lowest to the highest seed on both axes.

Where the points come from (the run-folder contract; nothing is recomputed):
  - a tuned stage folder (runs/x/rl, runs/x/dpo, runs/x/ilql) or a run folder (each of those it
    holds): summary.json's held-out evaluation at the end ("end": kl, positive_probability or
    score; ILQL: every sampling β of "by_beta"; DPO: every round of "by_round", one line per
    dpo.loss and dpo.reference) on the stage's own held-out prompts, whose list is read from eval_after.json(l);
  - an evaluate stage folder (runs/x/evaluate): every model it evaluated but the reference
    (kl_to_reference, positive_probability.mean or score.mean) and its best-of-n rows (KL: the
    analytic bound log n - (n-1)/n, drawn hollow), with each gold judge's positive rate when
    evaluate.gold was set (a second panel), and the optimum the same samples estimate at each KL
    budget (a dashed line: what no policy beats; ops.kl.kl_optimal_values). Best-of-n answers the
    first evaluate.best_of_prompts of the same prompt list.

Only the named folders' own files are read: a reward, a starting model or an evaluated model that a
summary names is known by the fingerprint the run's stage.json recorded for it when it ran (a reward
run's run id), so `runs/default/reward`, its absolute path and a sweep point's link to it are one
reward from any working folder, and a path written in a handed run is never opened (an evaluate
stage's models are read only where they are stages of its own run).

Refused (RlhfLabError naming the run): a folder with no such stage, a point without a KL or a
reward, runs scored with different rewards or on different held-out prompts:
runs of one seed must have answered the same list (a hash of it), runs of different seeds the
same draw (the config's data section and the count; the held-out prompts are drawn with the
run's seed unless data.eval_prompts names a file, so bars over seeds include that draw). The
stages' own evaluations and the evaluate stage use different prompts (evaluate draws its own
with another seed), so they do not mix.

Writes <out>/frontier.png, frontier.json (every seed's numbers and each point's mean and range)
and frontier.csv (one row per point), each atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Sequence

from rlhflab.errors import RlhfLabError
from rlhflab.eval.run_files import HandedFileError, read_json_lines, read_json_object, read_yaml_mapping
from rlhflab.io import atomic_write_text, write_json
from rlhflab.stages.registry import RENAMED, recorded_input, stage_dir, with_later_defaults

OPTIMUM = "optimum"  # the most reward any policy reaches within a KL budget, estimated from best-of-n's samples
TUNED = ("rl", "dpo", "ilql")  # stages whose summary.json carries a held-out start and end
EVALUATE = "evaluate"
# A tuned stage folder's name (the RL stage's old name, ppo, in older runs) -> the config section
# that is a point's setting.
SECTION = {**{stage: stage for stage in TUNED}, **{old: new for old, new in RENAMED.items() if new in TUNED}}
NOT_SETTINGS = ("seed", "checkpoint_every", "eval_batch_size", "batch_size_eval", "sample_every", "eval_every")
# ILQL's sampling β is each point's own setting (sampling_beta): which β a run evaluated, and which it saves
# as its default, do not change what it trained, so runs that chose other β share the points they have in common.
NOT_SETTINGS_OF = {"ilql": ("beta", "eval_betas")}
USAGE = "Pass run folders (runs/NAME), tuned stage folders (runs/NAME/rl, dpo, ilql) or an evaluate stage folder."


@dataclass
class Point:
    """One measurement: one seed of one setting of one method."""

    method: str  # ppo, grpo, rloo, ... (rl.algorithm), dpo, ilql, best-of-n, start
    setting: dict  # the method's config section (seed left out) plus what picks the point (ilql's β, best-of's n)
    seed: int | None
    kl: float  # nats per response, to the reference the run names
    reward: float  # held-out P(positive) (or mean reward: see Frontier.reward_key)
    gold: dict[str, float] = field(default_factory=dict)  # gold judge -> share of responses judged positive
    source: str = ""  # the folder it was read from
    bound: bool = False  # KL is an analytic bound (best-of-n), not a measurement
    reward_id: str = ""
    prompts_id: str = ""  # the exact prompt list
    prompts_recipe: str = ""  # where the list was drawn from (data section, count): the same for every seed


@dataclass
class Frontier:
    png: Path
    json: Path
    csv: Path
    text: str
    data: dict


# -- reading ------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json(folder: Path, name: str) -> dict | None:
    try:
        return read_json_object(folder, name)
    except HandedFileError as exc:
        raise RlhfLabError(str(exc)) from None


def _config(folder: Path, relative: str = "config.yaml") -> dict:
    try:
        found = read_yaml_mapping(folder, relative)
    except HandedFileError:
        return {}
    return found[1] if found else {}


def _own_stage(config: dict, source: Any) -> str | None:
    """The folder name of the stage that `source` (a model's path in an evaluate summary) is, when it is
    a stage of the evaluate stage's own run (runs_dir/name as it ran; "ilql@beta=4" is the ilql stage),
    else None: a model of another run lies outside the handed folder and is not read."""
    if not isinstance(source, str) or not isinstance(config.get("name"), str):
        return None
    own = PurePath(str(config.get("runs_dir", "runs"))) / config["name"]
    parts = PurePath(source.split("@")[0]).parts
    return parts[-1] if len(parts) == len(own.parts) + 1 and parts[:-1] == own.parts else None


def _reward_id(description: Any, where: Path, stage: dict | None, config: dict) -> str:
    """What identifies the reward a run was scored with: "<its fingerprint> (<how it is read>)", or
    summary.json's description as it is where no fingerprint was recorded. By the fingerprint
    (registry.recorded_input), a relative and an absolute path to one reward run, a run read from
    another folder, and sweep points linking one shared stage name one reward, and no path written in
    a handed file is opened."""
    if not isinstance(description, str) or not description:
        raise RlhfLabError(f"{where}/summary.json records no reward: it was not scored, so it has no place on the frontier.")
    settings = config.get("reward_fn") if isinstance(config.get("reward_fn"), dict) else {}
    found = recorded_input(stage, settings.get("source"), "reward")
    _, paren, how = description.partition(" (")
    return description if found is None else f"{found}{paren}{how}"


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _prompts(prompts: Sequence[str], config: dict, kind: str) -> dict:
    """prompts_id (the list itself) and prompts_recipe (the config's data section and the count: the
    held-out prompts are drawn with the run's seed unless data.eval_prompts names a file; the evaluate
    stage draws with another seed than the tuned stages, so `kind` is part of it)."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    return {"prompts_id": _hash(list(prompts)), "prompts_recipe": _hash([kind, data, len(prompts)])}


def _stage_prompts(folder: Path) -> list[str]:
    """The held-out prompts of a tuned stage, in order, from its eval_after file (ILQL: the first β's rows)."""
    rows = None
    path = folder / "eval_after.json"  # a JSON list (ppo), which read_json_object refuses
    if path.is_file() and not path.is_symlink():
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RlhfLabError(f"{path} cannot be read ({exc}); its held-out prompts are unknown.") from None
    elif (folder / "eval_after.jsonl").is_file():
        try:
            rows = read_json_lines(folder, "eval_after.jsonl")
        except HandedFileError as exc:
            raise RlhfLabError(str(exc)) from None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in rows):
        raise RlhfLabError(f"{folder} has no eval_after.json(l) listing its held-out prompts, so it cannot be checked "
                           "against the other runs' prompts.")
    first = rows[0].get("beta")
    return [r["prompt"] for r in rows if r.get("beta") == first]


def _reward_key(metrics: dict) -> str | None:
    return "positive_probability" if _number(metrics.get("positive_probability")) is not None else (
        "score" if _number(metrics.get("score")) is not None else None)


def _measured(metrics: Any, folder: Path, what: str) -> tuple[float, str, float]:
    """(kl, reward key, reward) of a held-out metrics dict; RlhfLabError naming the run when one is missing."""
    metrics = metrics if isinstance(metrics, dict) else {}
    kl = _number(metrics.get("kl"))
    if kl is None:
        raise RlhfLabError(f"{folder}/summary.json records no KL to the reference for {what}; rerun it with this "
                           "version of rlhflab, or leave it out.")
    key = _reward_key(metrics)
    if key is None:
        raise RlhfLabError(f"{folder}/summary.json records no held-out reward for {what}.")
    return kl, key, float(metrics[key])


def _setting(config: dict, method_section: str, stage: dict | None) -> dict:
    """The method's config section without the seed (and what does not change results), its starting
    model named by its fingerprint (registry.recorded_input): two runs with this setting differ only by seed."""
    section = config.get(method_section)
    if not isinstance(section, dict) and method_section == "rl":
        section = config.get("ppo")  # a run from before the RL section was renamed rl (config aliases)
    section = section if isinstance(section, dict) else {}
    section = with_later_defaults({method_section: section})[method_section]  # older runs lack them
    ignored = NOT_SETTINGS + NOT_SETTINGS_OF.get(method_section, ())
    setting = {k: v for k, v in section.items() if k not in ignored}
    setting["policy"] = recorded_input(stage, section.get("policy"), "sft") or section.get("policy")
    return setting


def tuned_points(folder: Path) -> list[Point]:
    """The end points of one rl/dpo/ilql stage folder (and its start, as method "start")."""
    summary = _json(folder, "summary.json")
    if not summary or "end" not in summary:
        raise RlhfLabError(f"{folder} has no finished summary.json with a held-out evaluation. {USAGE}")
    config = _config(folder)
    seed = config.get("seed") if isinstance(config.get("seed"), int) else None
    method = summary.get("algorithm") if isinstance(summary.get("algorithm"), str) else folder.name
    stage = folder.name if folder.name in SECTION else {"dpo": "dpo", "ilql": "ilql"}.get(method, "rl")
    recorded = _json(folder, "stage.json")
    reward_id = _reward_id(summary.get("reward"), folder, recorded, config)
    common = dict(seed=seed, source=str(folder), reward_id=reward_id, **_prompts(_stage_prompts(folder), config, "stage"))
    setting = _setting(config, SECTION[stage], recorded)
    points, keys = [], set()
    if stage == "ilql" and isinstance(summary.get("by_beta"), dict):
        for beta, metrics in summary["by_beta"].items():
            kl, key, value = _measured(metrics, folder, f"sampling β={beta}")
            points.append(Point(method, {**setting, "sampling_beta": float(beta)}, kl=kl, reward=value, **common))
            keys.add(key)
    elif stage == "dpo" and isinstance(summary.get("by_round"), list) and summary["by_round"]:
        # Each round a point of one line; a round's point does not depend on how many rounds followed it.
        # Another loss, or updating the reference each round, is another method (another line).
        variant = [summary["loss"]] if summary.get("loss") not in (None, "sigmoid") else []
        variant += ["reference: previous round"] if summary.get("reference") == "previous_round" else []
        method = f"dpo ({', '.join(variant)})" if variant else method
        setting.pop("rounds", None)
        for row in summary["by_round"]:
            number = row.get("round") if isinstance(row, dict) else None
            kl, key, value = _measured(row.get("end") if isinstance(row, dict) else None, folder, f"round {number}")
            points.append(Point(method, {**setting, "round": number}, kl=kl, reward=value, **common))
            keys.add(key)
    else:
        kl, key, value = _measured(summary["end"], folder, "the end of training")
        points.append(Point(method, setting, kl=kl, reward=value, **common))
        keys.add(key)
    start = summary.get("start")
    if isinstance(start, dict) and _reward_key(start):
        kl, key, value = _measured({"kl": 0.0, **start}, folder, "its start")
        points.append(Point("start", {"policy": setting["policy"]}, kl=kl, reward=value, **common))
        keys.add(key)
    for p in points:
        p.setting["_reward_key"] = next(iter(keys)) if len(keys) == 1 else "score"
    return points


def evaluate_points(folder: Path) -> list[Point]:
    """Every evaluated model but the reference, and best-of-n, of one evaluate stage folder."""
    summary = _json(folder, "summary.json")
    if not summary or not isinstance(summary.get("models"), dict):
        raise RlhfLabError(f"{folder} has no evaluate summary.json listing models. {USAGE}")
    try:
        rows = read_json_lines(folder, "samples.jsonl")
    except HandedFileError as exc:
        raise RlhfLabError(str(exc)) from None
    prompts = {r["prompt_id"]: r["prompt"] for r in rows if isinstance(r.get("prompt_id"), int) and isinstance(r.get("prompt"), str)}
    if not prompts:
        raise RlhfLabError(f"{folder}/samples.jsonl lists no prompts, so the held-out prompts cannot be checked.")
    config = _config(folder)
    seed = config.get("seed") if isinstance(config.get("seed"), int) else None
    common = dict(seed=seed, source=str(folder), reward_id=_reward_id(summary.get("reward"), folder,
                                                                      _json(folder, "stage.json"), config),
                  **_prompts([prompts[i] for i in sorted(prompts)], config, "evaluate"))
    reference = summary.get("reference")
    points = []
    for name, model in summary["models"].items():
        if not isinstance(model, dict):
            continue
        probability = model.get("positive_probability") if isinstance(model.get("positive_probability"), dict) else {}
        reward = _number(probability.get("mean"))
        key = "positive_probability"
        if reward is None:
            reward, key = _number((model.get("score") or {}).get("mean")) if isinstance(model.get("score"), dict) else None, "score"
        kl = 0.0 if name == reference else _number(model.get("kl_to_reference"))
        if kl is None or reward is None:
            raise RlhfLabError(f"{folder}/summary.json records no {'KL to the reference' if kl is None else 'reward'} "
                               f"for model {name}.")
        gold = {j: float(v["positive_rate"]) for j, v in (model.get("judges") or {}).items()
                if j != "proxy" and isinstance(v, dict) and _number(v.get("positive_rate")) is not None}
        method, setting = "start" if name == reference else name, {"model": name}
        stage = _own_stage(config, model.get("source"))
        if name != reference and stage:  # a stage of this run: it says what it is (another run's is not read)
            stage_summary = _json(folder.parent, f"{stage}/summary.json") or {}
            method = stage_summary.get("algorithm") if isinstance(stage_summary.get("algorithm"), str) else name
            stage_config = _config(folder.parent, f"{stage}/config.yaml")
            section = SECTION.get(stage) or SECTION.get(method, "rl")
            setting = _setting(stage_config, section, _json(folder.parent, f"{stage}/stage.json"))
            seed = stage_config.get("seed") if isinstance(stage_config.get("seed"), int) else common["seed"]
        points.append(Point(method, {**setting, "_reward_key": key}, kl=kl, reward=reward, gold=gold,
                            **{**common, "seed": seed if name != reference else common["seed"]}))
    best = summary.get("best_of")
    if isinstance(best, dict) and isinstance(best.get("rows"), list):
        for row in best["rows"]:
            n, kl = row.get("n"), _number(row.get("kl_bound"))
            key, value = _row_value(row)
            if not isinstance(n, int) or n < 2 or kl is None or value is None:
                continue  # n = 1 is the reference model itself on fewer prompts
            gold = {j: float(v) for j, v in (row.get("judges") or {}).items() if _number(v) is not None}
            points.append(Point("best-of-n", {"n": n, "_reward_key": key}, kl=kl, reward=value, gold=gold, bound=True,
                                **common))
        for row in (r for r in best.get("optimum") or [] if isinstance(r, dict)):  # the most within each KL budget
            kl, (key, value) = _number(row.get("kl")), _row_value(row)
            if kl is not None and value is not None:
                points.append(Point(OPTIMUM, {"n": best.get("drawn"), "_budget": kl, "_reward_key": key}, kl=kl,
                                    reward=value, **common))
    return points


def _row_value(row: dict) -> tuple[str, float | None]:
    """(key, value) of a best-of-n or optimum row: its P(positive), else its mean reward."""
    value = _number(row.get("positive_probability"))
    return ("positive_probability", value) if value is not None else ("score", _number(row.get("score")))


def points_of(argument: str) -> list[Point]:
    """Every point one argument names; RlhfLabError when it names none."""
    path = Path(argument)
    if not path.is_dir():
        raise RlhfLabError(f"{argument} is not a folder. {USAGE}")
    if (path / "sweep.json").is_file():  # every point of a sweep, each a run folder inside it
        manifest = _json(path, "sweep.json") or {}
        names = [p.get("name") for p in manifest.get("points", []) if isinstance(p, dict)]
        names = [n for n in names if isinstance(n, str) and n not in ("", ".", "..") and "/" not in n and "\\" not in n]
        if not names:
            raise RlhfLabError(f"{path / 'sweep.json'} lists no points. {USAGE}")
        # a point that is a link may lead out of the handed sweep: not followed
        return [p for n in names if (path / n).is_dir() and not (path / n).is_symlink() for p in points_of(str(path / n))]
    if path.name == EVALUATE or (path.name not in SECTION and (path / "samples.jsonl").is_file()
                                 and isinstance((_json(path, "summary.json") or {}).get("models"), dict)):
        return evaluate_points(path)
    if (path / "summary.json").is_file():
        return tuned_points(path)
    stages = [stage_dir(path, s) for s in TUNED if (stage_dir(path, s) / "summary.json").is_file()]
    if not stages:
        raise RlhfLabError(f"{argument} holds no finished rl, dpo or ilql stage. {USAGE}")
    return [p for stage in stages for p in tuned_points(stage)]


# -- checking and grouping --------------------------------------------------------------------------


def _check_same(points: list[Point], attribute: str, what: str) -> None:
    seen: dict[str, str] = {}
    for p in points:
        seen.setdefault(getattr(p, attribute), p.source)
    if len(seen) > 1:
        (a, first), (b, second) = list(seen.items())[:2]
        raise RlhfLabError(f"{first} and {second} were scored {what} ({a} vs {b}); their rewards do not compare. "
                           "Pass runs of one evaluation.")


def group(points: list[Point]) -> list[dict]:
    """One dict per (method, setting): the seeds' numbers, their mean and min/max/std of KL, reward and each gold judge."""
    groups: dict[str, dict] = {}
    for p in points:
        key = json.dumps([p.method, p.setting], sort_keys=True, default=str)
        g = groups.setdefault(key, {"method": p.method, "setting": p.setting, "bound": p.bound, "members": []})
        if p.method == "start" and any(m.seed == p.seed for m in g["members"]):
            continue  # every run from one model and seed measured the same start: count it once
        g["members"].append(p)
    out = []
    for g in groups.values():
        members = g.pop("members")
        g["seeds"] = sorted({m.seed for m in members}, key=str)  # distinct seeds; "runs" counts every run
        g["runs"] = len(members)
        g["sources"] = [m.source for m in members]
        for name, values in (("kl", [m.kl for m in members]), ("reward", [m.reward for m in members])):
            g[name] = _stats(values)
        judges = sorted({j for m in members for j in m.gold})
        g["gold"] = {j: _stats([m.gold[j] for m in members if j in m.gold]) for j in judges}
        out.append(g)
    _label(out)
    return sorted(out, key=lambda g: (g["method"], g["kl"]["mean"]))


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values), "values": values}


def _label(groups: list[dict]) -> None:
    """Each point's label: the setting keys that differ between points of its method (best-of: n)."""
    for method in {g["method"] for g in groups}:
        mine = [g for g in groups if g["method"] == method]
        keys = sorted({k for g in mine for k in g["setting"] if not k.startswith("_")})
        varying = [k for k in keys if len({json.dumps(g["setting"].get(k), default=str) for g in mine}) > 1]
        for g in mine:
            g["label"] = ", ".join(f"{k}={g['setting'].get(k)}" for k in varying)


# -- drawing ---------------------------------------------------------------------------------------


def figure(groups: list[dict], ylabel: str):
    """Proxy panel (and a gold panel when any point has gold judges): mean with min-max bars, one line per method."""
    from rlhflab.eval.plots import PALETTE, _figure

    judges = sorted({j for g in groups for j in g["gold"]})
    fig, axes = _figure(6.4 * (2 if judges else 1), 4.4, cols=2 if judges else 1)
    methods = [m for m in dict.fromkeys(g["method"] for g in groups) if m != "start"]
    colour = {m: PALETTE[(i + 1) % len(PALETTE)] for i, m in enumerate(methods)} | {"start": "#000000"}

    def draw(ax, value_of, styles=("-",), judge_names=(None,)):
        for judge, style in zip(judge_names, styles):
            for method in ["start", *methods]:
                mine = sorted([g for g in groups if g["method"] == method and value_of(g, judge)], key=lambda g: g["kl"]["mean"])
                if not mine:
                    continue
                x = [g["kl"]["mean"] for g in mine]
                y = [value_of(g, judge)["mean"] for g in mine]
                xerr = [[g["kl"]["mean"] - g["kl"]["min"] for g in mine], [g["kl"]["max"] - g["kl"]["mean"] for g in mine]]
                yerr = [[value_of(g, judge)["mean"] - value_of(g, judge)["min"] for g in mine],
                        [value_of(g, judge)["max"] - value_of(g, judge)["mean"] for g in mine]]
                if method == OPTIMUM:  # a ceiling, not a method: a thin dashed line without points
                    ax.errorbar(x, y, xerr=xerr, yerr=yerr, color="#777777", linestyle="--", linewidth=1, elinewidth=0.8, capsize=0,
                                label=f"optimum at each KL (estimated from {mine[0]['setting'].get('n')} samples)")
                    continue
                hollow = all(g["bound"] for g in mine)
                label = method + (" (KL bound)" if hollow else "") + (f" - {judge}" if judge else "")
                ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=colour[method], linestyle="none" if method == "start" else style,
                            marker="o", markerfacecolor="white" if hollow else colour[method], capsize=3, label=label)
                for g, xi, yi in zip(mine, x, y):
                    if g["label"]:
                        ax.annotate(g["label"], (xi, yi), fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("KL to the reference (nats per response)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")

    draw(axes[0][0], lambda g, _: g["reward"])
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].set_title("Proxy reward (what was optimised)")
    if judges:
        draw(axes[0][1], lambda g, j: g["gold"].get(j), styles=("-", "--", ":", "-.")[: len(judges)] * 4, judge_names=judges)
        axes[0][1].set_ylabel("share judged positive by the gold judge")
        axes[0][1].set_title("Gold judges")
    return fig


# -- the whole figure -------------------------------------------------------------------------------


def default_out(argument: str) -> Path:
    """<run>/frontier for a run folder; beside the stage (<run>/frontier) for a stage folder."""
    path = Path(argument)
    inside_run = path.name in (*TUNED, EVALUATE) or (path / "summary.json").is_file()
    return (path.parent if inside_run else path) / "frontier"


def frontier(arguments: Sequence[str], out: str | Path | None = None) -> Frontier:
    """Read every point of `arguments`, refuse what does not compare (module docstring), group by
    method and setting over seeds, write frontier.png/.json/.csv into `out` (default: default_out
    of the first argument). Returns the paths and a short table for the terminal."""
    if not arguments:
        raise RlhfLabError(f"Nothing to plot. {USAGE}")
    points = [p for a in arguments for p in points_of(str(a))]
    _check_same(points, "reward_id", "with different rewards")
    # Runs of one seed must have answered the very same prompts; runs of different seeds drew theirs
    # with their seed from one source (unless data.eval_prompts names a file), so a point's bars
    # over seeds include the draw of the prompts, as they include everything else a seed changes.
    _check_same(points, "prompts_recipe", "on different held-out prompts")
    for seed in {p.seed for p in points}:
        _check_same([p for p in points if p.seed == seed], "prompts_id", f"on different held-out prompts with one seed ({seed})")
    keys = {p.setting.pop("_reward_key") for p in points}
    if len(keys) > 1:
        raise RlhfLabError("Some runs record a held-out P(positive) and others only a reward score; "
                           "they are not on one scale.")
    reward_key = keys.pop()
    ylabel = "held-out P(positive)" if reward_key == "positive_probability" else "held-out mean reward"
    groups = group(points)
    out = Path(out) if out is not None else default_out(str(arguments[0]))
    from rlhflab.eval.plots import save_figure

    png = save_figure(figure(groups, ylabel), out / "frontier.png")
    judges = sorted({j for g in groups for j in g["gold"]})
    header = ["method", "setting", "runs", "seeds", "kl_mean", "kl_min", "kl_max", f"{reward_key}_mean", f"{reward_key}_min",
              f"{reward_key}_max", f"{reward_key}_std", "kl_is_bound", *[f"gold_{j}_mean" for j in judges]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for g in groups:
        writer.writerow([g["method"], g["label"], g["runs"], len(g["seeds"]), *(f"{g['kl'][k]:.4f}" for k in ("mean", "min", "max")),
                         *(f"{g['reward'][k]:.4f}" for k in ("mean", "min", "max", "std")), g["bound"],
                         *(f"{g['gold'][j]['mean']:.4f}" if j in g["gold"] else "" for j in judges)])
    csv_path = out / "frontier.csv"
    atomic_write_text(csv_path, buffer.getvalue())
    data = {"sources": [str(a) for a in arguments], "reward": reward_key, "reward_id": points[0].reward_id,
            "prompts_recipe": points[0].prompts_recipe, "prompts_id": {str(p.seed): p.prompts_id for p in points},
            "points": groups, "figure": png.name}
    json_path = out / "frontier.json"
    write_json(json_path, data)
    lines = [f"{'method':<12} {'setting':<28} {'runs':>4} {'seeds':>5} {'KL':>9} {reward_key + ' [min, max]':>28}"]
    for g in groups:
        lines.append(f"{g['method']:<12} {g['label'][:28]:<28} {g['runs']:>4} {len(g['seeds']):>5} {g['kl']['mean']:>8.2f}"
                     f"{'*' if g['bound'] else ' '} {g['reward']['mean']:>10.3f} [{g['reward']['min']:.3f}, {g['reward']['max']:.3f}]")
    lines.append(f"wrote {png}, {csv_path.name} and {json_path.name}" + (" (* KL is best-of-n's bound)" if any(g["bound"] for g in groups) else ""))
    return Frontier(png, json_path, csv_path, "\n".join(lines), data)
