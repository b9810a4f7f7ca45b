"""`rlhflab compare RUN_OR_SWEEP ...`: RL runs side by side (a table, curves, the reward-KL frontier).

Arguments: a sweep folder (runs/x/sweep: all its points, in the manifest's order), a run folder
(runs/x: its ppo stage) or an RL stage folder (runs/x/ppo). Reads only the run directory
contract: each RL run's summary.json, metrics.jsonl and config.yaml (a sweep point's point.yaml).
Writes <out>/compare.json, <out>/compare.md and <out>/figures/compare_*.png; the run report
shows compare.json of <run>/sweep/compare as its "Sweep" section.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rlhflab.config import parse_yaml
from rlhflab.errors import RlhfLabError
from rlhflab.io import atomic_write_text, read_json, read_jsonl, write_json

RL_STAGE = "ppo"  # the stage folder of every RL algorithm (ppo, grpo, rloo)
LAST_STEPS = 10  # clip fraction and approximate KL are averaged over this many last steps
MIN_KL = 0.5  # nats; a run that moved less is left out of "reward per nat": a sampled KL near 0 is mostly noise
DEFAULT_KEYS = ("ppo.algorithm", "ppo.learning_rate", "ppo.kl_coef")  # shown for runs outside a sweep
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
USAGE = ("Pass a sweep folder (runs/NAME/sweep, with sweep.json), a run folder (runs/NAME, with a ppo/ stage) or an "
         "RL stage folder (runs/NAME/ppo, with summary.json or metrics.jsonl).")


@dataclass
class RlRun:
    """One RL run to compare: where it is, what was swept, what it wrote."""

    name: str
    folder: Path  # the RL stage folder (runs/x/ppo); need not exist yet
    swept: dict[str, str] = field(default_factory=dict)  # key -> value as typed (sweep points)
    config: dict | None = None
    summary: dict | None = None
    rows: list[dict] = field(default_factory=list)

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


def _yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # a config we cannot read only costs its columns
        return None
    return data if isinstance(data, dict) else None


def _read(run: RlRun) -> RlRun:
    """Fill in summary, metrics and config: from the finished folder, or what an unfinished run left in <stage>.partial."""
    folder, partial = run.folder, run.folder.with_name(f"{run.folder.name}.partial")
    if (folder / "summary.json").is_file():
        summary = read_json(folder / "summary.json")
        run.summary = summary if isinstance(summary, dict) else None
    source = folder if run.summary is not None or not partial.is_dir() else partial
    run.rows = read_jsonl(source / "metrics.jsonl")
    if run.config is None:
        run.config = _yaml(source / "config.yaml")
    return run


def _is_rl_stage(path: Path) -> bool:
    if path.name in (RL_STAGE, f"{RL_STAGE}.partial"):
        return True
    if (path / "summary.json").is_file():
        try:
            summary = read_json(path / "summary.json")
        except RlhfLabError:
            return False
        return isinstance(summary, dict) and "end" in summary and "evaluations" in summary
    return False


def _is_run(path: Path) -> bool:
    from rlhflab.stages.registry import STAGES

    return any((path / stage).is_dir() or (path / f"{stage}.partial").is_dir() for stage in STAGES)


def resolve(argument: str) -> list[RlRun]:
    """The RL runs one argument names. Raises RlhfLabError naming the argument when it is none of the three."""
    path = Path(argument)
    if not path.is_dir():
        raise RlhfLabError(f"{argument} is not a folder. {USAGE}")
    if (path / "sweep.json").is_file():
        manifest = read_json(path / "sweep.json")
        points = manifest.get("points") if isinstance(manifest, dict) else None
        if not isinstance(points, list) or not all(isinstance(p, dict) and "name" in p for p in points):
            raise RlhfLabError(f"{path / 'sweep.json'} has no list of points; rerun the sweep to rewrite it.")
        runs = []
        for point in points:
            swept = dict(item.split("=", 1) for item in point.get("overrides", []) if "=" in item)
            config = _yaml(path / point["name"] / "point.yaml")
            runs.append(RlRun(point["name"], path / point["name"] / RL_STAGE, swept, config))
        return runs
    if _is_rl_stage(path):
        name = path.resolve().parent.name if path.name in (RL_STAGE, f"{RL_STAGE}.partial") else path.resolve().name
        folder = path.with_name(RL_STAGE) if path.name == f"{RL_STAGE}.partial" else path
        return [RlRun(name, folder)]
    if _is_run(path):
        return [RlRun(path.resolve().name, path / RL_STAGE)]
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def _by_step(rows: list[dict], split: str) -> list[dict]:
    """Rows of one split (rows without a split are train rows), one per step (the last logged), by step."""
    out: dict[int, dict] = {}
    for row in rows:
        if row.get("split", "train") == split and isinstance(row.get("step"), (int, float)):
            out[int(row["step"])] = row
    return [out[step] for step in sorted(out)]


def evaluations(run: RlRun) -> list[dict]:
    """The held-out evaluations, by step: metrics.jsonl's eval rows, else summary.json's list."""
    rows = _by_step(run.rows, "eval")
    if rows:
        return rows
    listed = (run.summary or {}).get("evaluations") or []
    return sorted((e for e in listed if isinstance(e, dict)), key=lambda e: e.get("step", 0))


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
    out["steps"] = (run.summary or {}).get("steps") if run.finished else (int(train[-1]["step"]) if train else None)
    out["seconds"] = _number((run.summary or {}).get("seconds")) if run.finished else None
    start = (run.summary or {}).get("start") if run.finished else (evals[0] if evals else None)
    end = (run.summary or {}).get("end") if run.finished else None
    out["start_reward"] = _number((start or {}).get(key))
    out["final_reward"] = _number((end or {}).get(key))
    out["final_kl"] = _number((end or {}).get("kl"))
    gain = None if out["final_reward"] is None or out["start_reward"] is None else out["final_reward"] - out["start_reward"]
    out["reward_gain"] = gain
    out["reward_per_kl"] = gain / out["final_kl"] if gain is not None and out["final_kl"] else None
    return out


# -- the table --------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}f}"


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return value if isinstance(value, str) else json.dumps(value)


def _pick(tree: dict | None, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


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
    label = "P(positive)" if reward == "positive_probability" else "reward"
    done = [n for n in rows if n["finished"] and n["final_reward"] is not None]
    out = []
    if not done:
        out.append("No run has finished yet: there is nothing to rank.")
    else:
        best = max(done, key=lambda n: n["final_reward"])
        out.append(f"{best['name']} has the highest final held-out {label}: {best['final_reward']:.3f}.")
        efficient = [n for n in done if n["reward_per_kl"] is not None and n["final_kl"] >= MIN_KL]
        if efficient:
            top = max(efficient, key=lambda n: n["reward_per_kl"])
            out.append(f"Of the runs that moved at least {MIN_KL} nats from their start, {top['name']} gains the most "
                       f"{label} per nat of KL: {top['reward_gain']:+.3f} over its start at a final KL of "
                       f"{top['final_kl']:.2f} ({top['reward_per_kl']:.3f} per nat).")
    left = [n["name"] for n in rows if not n["finished"]]
    if left:
        out.append(f"Not finished: {', '.join(left)}.")
    return out


def _plain_table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown pipe table with aligned columns, for the terminal."""
    cells = [header, *body]
    widths = [max(len(str(row[i]).replace("|", "\\|")) for row in cells) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).replace("|", "\\|").ljust(w) for c, w in zip(row, widths)) + " |"
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), rule, *(line(row) for row in body)])


# -- figures -----------------------------------------------------------------------------------


def _figures(runs: Sequence[RlRun], reward: str, folder: Path) -> list[dict]:
    from rlhflab.eval import plots

    label = "P(positive)" if reward == "positive_probability" else "reward"
    written = []
    series = {run.name: _by_step(run.rows, "train") for run in runs}
    for key, title, ylabel in CURVES:
        if not any(_number(r.get(key)) is not None for rows in series.values() for r in rows):
            continue  # no run logged it (e.g. an algorithm without that statistic)
        path = plots.runs_metric(series, key, folder / f"compare_{key}.png", title=title, ylabel=ylabel)
        written.append({"path": path, "caption": f"{title} ({key} in metrics.jsonl) per step, one colour per run; "
                                                 f"thick lines are rolling means where a run has enough steps."})
    frontier = {}
    for run in runs:
        pairs = [(_number(e.get("kl")), _number(e.get(reward))) for e in evaluations(run)]
        frontier[run.name] = [(kl, value) for kl, value in pairs if kl is not None and value is not None]
    if any(frontier.values()):
        path = plots.reward_kl_frontier(frontier, folder / "compare_frontier.png", ylabel=f"held-out {label}")
        written.append({"path": path, "caption": f"Held-out {label} against KL to the reference at each evaluation, "
                                                 f"one line per run; the star is its last evaluation."})
    for old in folder.glob("compare_*.png"):  # a metric no run logs any more
        if old.resolve() not in {Path(w["path"]).resolve() for w in written}:
            old.unlink(missing_ok=True)
    return written


# -- the whole comparison -----------------------------------------------------------------------


def compare(arguments: Sequence[str], out: str | Path | None = None) -> Comparison:
    """Compare the RL runs of `arguments`; write compare.json, compare.md and figures into `out`
    (default: <first argument>/compare). Raises RlhfLabError for an argument that names no RL run."""
    from rlhflab.eval.document import Code, Document, Heading, Image, Table, para, to_markdown

    runs, keys = collect([str(a) for a in arguments])
    out = Path(out) if out is not None else Path(arguments[0]) / "compare"
    reward = reward_key(runs)
    rows = [numbers(run, reward) for run in runs]
    sweep = all((Path(a) / "sweep.json").is_file() for a in arguments)
    header, body = table(runs, keys, reward, rows, sweep=sweep)
    said = sentences(rows, reward)
    figures = _figures(runs, reward, out / "figures")

    doc = Document("rlhflab compare")
    doc.add(para("Compared: ", *[part for a in arguments for part in (Code(str(a)), " ")]))
    doc.add(Table(header, body, left=1 + len(keys),
                  caption=f"Held-out {'P(positive)' if reward == 'positive_probability' else 'reward'}: the final "
                          f"evaluation and the best one (with its step); KL to the reference model at the end (nats "
                          f"per response); clip fraction and approximate KL averaged over the last {LAST_STEPS} steps."))
    doc.add(*(para(s) for s in said))
    if figures:
        doc.add(Heading("Curves"))
        doc.add(*(Image(Path(f["path"]), f["caption"]) for f in figures))
    data = {
        "sources": [str(a) for a in arguments],
        "reward": reward,
        "columns": list(keys),
        "header": header,
        "rows": body,
        "sentences": said,
        "runs": rows,
        "figures": [{"path": Path(f["path"]).relative_to(out).as_posix(), "caption": f["caption"]} for f in figures],
    }
    json_path, md_path = out / "compare.json", out / "compare.md"
    write_json(json_path, data)
    atomic_write_text(md_path, to_markdown(doc, out))
    text = "\n".join([_plain_table(header, body), "", *said])
    return Comparison(out, md_path, json_path, text, data)
