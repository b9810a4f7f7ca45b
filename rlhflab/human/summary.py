"""The table for a blind rating: per model, the reward model's score, positivity and
sense (mean, std), the number of ratings, and whether the models differ significantly.

    summary = rating_summary("runs/human/rlhflab.sqlite")         # the latest rating task with ratings
    print(format_rating_table(summary))                             # Markdown
    write_rating_summary(summary, summary_folder(summary, db))      # rating_summary.json + .md

Ratings belong to the run whose samples were rated: a task made from runs/<name>/evaluate/samples.jsonl
(or with `rate create --run`) records that run folder, and its summary goes to
`runs/<name>/human/<task>/`, which is where `rlhflab report runs/<name>` looks (and only there,
so no other run's report shows them). A task from samples of no run writes to `<db folder>/<task>/`.
A summary of no ratings is never written: it would replace one that has them.

`rating_summary.json`:

    {
      "task": "blind-rating", "created_at": "2025-01-31T12:00:00.000+00:00", "run": "/abs/runs/default",
      "prompts": 20, "items": 40, "raters": 2, "ratings": 80, "alpha": 0.05,
      "models": [                       # in the task's order; the first is the baseline
        {"model": "sft", "source": "runs/default/sft", "responses": 20, "ratings": 40,
         "reward":     {"mean": -0.1, "std": 0.9, "n": 20},    # null mean/std when n == 0
         "positivity": {"mean": 2.9,  "std": 1.1, "n": 40},    # over individual ratings
         "sense":      {"mean": 3.4,  "std": 0.8, "n": 40}}, ...],
      "comparisons": [                  # every other model against the baseline, per metric
        {"model": "ppo", "baseline": "sft", "metric": "positivity", "test": "wilcoxon",
         "paired": true, "n": 20, "mean_difference": 1.2, "statistic": 12.0, "p_value": 0.003,
         "significant": true}, ...]     # test null (p_value null) when there is too little data
    }

Significance: ratings are first averaged per (prompt, model) over raters, so each prompt counts
once. Two models' values on the prompts both were rated on are compared with the Wilcoxon
signed-rank test (paired, two-sided, zero differences dropped); with fewer than
`MIN_PAIRED` such prompts (where no two-sided exact Wilcoxon can reach p < 0.05) it falls back
to the Mann-Whitney U test on all per-prompt means (unpaired, two-sided). The reward score is
compared the same way. p-values are not corrected for comparing several models.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path, PurePath
from typing import Any

from rlhflab.errors import RlhfLabError
from rlhflab.eval.run_files import writable_folder
from rlhflab.human import store
from rlhflab.io import atomic_write_text, write_json

ALPHA = 0.05
MIN_PAIRED = 6
METRICS = ("reward", "positivity", "sense")
SUMMARY_JSON = "rating_summary.json"
SUMMARY_MD = "rating_summary.md"
TEST_NAMES = {"wilcoxon": "Wilcoxon signed-rank (paired over prompts)", "mannwhitneyu": "Mann-Whitney U (unpaired)"}


def rating_summary(db_path: str | Path, task: str | None = None) -> dict[str, Any]:
    """The summary of rating task `task` (default: the most recently created one that has ratings,
    so a new, unrated task never hides the ratings already made). RlhfLabError when there is none."""
    with store.opened(db_path, create=False) as conn:
        if task is None:
            tasks = store.list_tasks(conn, "rating")
            if not tasks:
                raise RlhfLabError(f"{db_path} has no rating task. Create one with `rlhflab rate create`.")
            rated = [t for t in tasks if t["answers"]]
            if not rated:
                shown = ", ".join(f"{t['name']} (0 of {t['items']} responses rated)" for t in tasks[-3:])
                raise RlhfLabError(f"No rating task in {db_path} has ratings yet ({shown}). Rate in the app "
                                   "(`rlhflab serve`), then run `rlhflab rate summary` again.")
            info = rated[-1]
        else:
            info = store.get_task(conn, task)
            if info["kind"] != "rating":
                raise RlhfLabError(f"{task!r} is a {info['kind']} task, not a rating task; `rlhflab label export --task {task}` exports it.")
        items = {item["id"]: item for item in store.task_items(conn, info["id"])}
        answers = store.task_answers(conn, info["id"])
    return summarise(info, list(items.values()), answers)


def summarise(task: dict, items: list[dict], answers: list[dict]) -> dict[str, Any]:
    """The summary from a task's items and answers (pure; `rating_summary` reads them)."""
    models = list(task["info"]["models"])
    by_id = {item["id"]: item for item in items}
    # per metric -> model -> prompt -> values (reward: one per item; ratings: one per answer)
    values: dict[str, dict[str, dict[Any, list[float]]]] = {m: defaultdict(lambda: defaultdict(list)) for m in METRICS}
    responses: dict[str, int] = defaultdict(int)
    for item in items:
        meta = item["meta"]
        responses[meta["model"]] += 1
        if meta.get("score") is not None:
            values["reward"][meta["model"]][_key(meta["prompt_id"])].append(float(meta["score"]))
    for answer in answers:
        meta = by_id[answer["item_id"]]["meta"]
        for metric in ("positivity", "sense"):
            values[metric][meta["model"]][_key(meta["prompt_id"])].append(float(answer["value"][metric]))
    rows = []
    for model in models:
        row: dict[str, Any] = {"model": model, "source": task["info"].get("sources", {}).get(model), "responses": responses[model]}
        for metric in METRICS:
            row[metric] = _stats([v for vs in values[metric][model].values() for v in vs])
        row["ratings"] = row["positivity"]["n"]
        rows.append(row)
    comparisons = []
    for model in models[1:]:
        for metric in METRICS:
            comparisons.append(compare(_means(values[metric][models[0]]), _means(values[metric][model]))
                               | {"model": model, "baseline": models[0], "metric": metric})
    return {
        "task": task["name"], "created_at": task["created_at"], "run": task["info"].get("run"), "prompts": len({_key(i["meta"]["prompt_id"]) for i in items}),
        "items": len(items), "raters": len({a["rater"] for a in answers}), "ratings": len(answers), "alpha": ALPHA,
        "models": rows, "comparisons": comparisons,
    }


def compare(baseline: dict[Any, float], other: dict[Any, float], alpha: float = ALPHA) -> dict[str, Any]:
    """Two models' per-prompt values: Wilcoxon signed-rank over shared prompts, else Mann-Whitney U."""
    from scipy import stats

    shared = [k for k in baseline if k in other]
    result: dict[str, Any] = {"test": None, "paired": None, "n": 0, "mean_difference": None, "statistic": None, "p_value": None, "significant": None}
    if len(shared) >= MIN_PAIRED:
        diffs = [other[k] - baseline[k] for k in shared]
        result.update(test="wilcoxon", paired=True, n=len(shared), mean_difference=statistics.fmean(diffs))
        if all(d == 0 for d in diffs):  # scipy cannot rank nothing; no difference at all
            result.update(statistic=0.0, p_value=1.0)
        else:
            test = stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided")
            result.update(statistic=float(test.statistic), p_value=float(test.pvalue))
    elif baseline and other:
        a, b = list(baseline.values()), list(other.values())
        test = stats.mannwhitneyu(b, a, alternative="two-sided")
        result.update(test="mannwhitneyu", paired=False, n=len(a) + len(b), mean_difference=statistics.fmean(b) - statistics.fmean(a),
                      statistic=float(test.statistic), p_value=float(test.pvalue))
    if result["p_value"] is not None:
        result["p_value"] = result["p_value"] if math.isfinite(result["p_value"]) else 1.0
        result["significant"] = result["p_value"] < alpha
    return result


def format_rating_table(summary: dict[str, Any]) -> str:
    """Markdown: the per-model table, then one line per comparison with its test."""
    lines = [
        f"Blind rating `{summary['task']}`: {summary['prompts']} prompt{'s' * (summary['prompts'] != 1)}, "
        f"{summary['items']} response{'s' * (summary['items'] != 1)}, "
        f"{summary['raters']} rater{'s' if summary['raters'] != 1 else ''}, {summary['ratings']} rating{'s' * (summary['ratings'] != 1)}.",
        "",
        "| model | reward score | positivity (1-5) | sense (1-5) | ratings |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in summary["models"]:
        lines.append(f"| {row['model']} | {_cell(row['reward'])} | {_cell(row['positivity'])} | {_cell(row['sense'])} | {row['ratings']} |")
    if summary["comparisons"]:
        lines += ["", f"Mean ± std. Differences (two-sided, significant at p < {summary['alpha']}; ratings averaged per prompt first):", "",
                  "| comparison | metric | difference | test | n | p | significant |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in summary["comparisons"]:
            if c["test"] is None:
                lines.append(f"| {c['model']} vs {c['baseline']} | {c['metric']} | - | too few ratings | {c['n']} | - | - |")
                continue
            lines.append(f"| {c['model']} vs {c['baseline']} | {c['metric']} | {c['mean_difference']:+.2f} | {TEST_NAMES[c['test']]} "
                         f"| {c['n']} | {_p(c['p_value'])} | {'yes' if c['significant'] else 'no'} |")
    return "\n".join(lines) + "\n"


def summary_folder(summary: dict[str, Any], db_path: str | Path) -> Path:
    """Where a task's summary goes: `<run>/human/<task>/` for a task of a run, else
    `<db folder>/<task>/`. RlhfLabError when the run folder is gone."""
    run = summary.get("run")
    if run is None:
        root, relative = Path(db_path).parent, PurePath(summary["task"])
    else:
        if not Path(run).is_dir():
            raise RlhfLabError(f"The run folder {run} whose samples task {summary['task']!r} rates no longer exists. "
                               "Pass --out FOLDER to write the summary elsewhere.")
        root, relative = Path(run), PurePath("human", summary["task"])
    # A run handed over with human/ or human/<task>/ as a link would have the summary written outside it.
    writable_folder(root, relative)
    return root / relative


def write_rating_summary(summary: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """rating_summary.json and rating_summary.md in `out_dir` (atomic writes). A summary with no
    ratings is refused (RlhfLabError): it would replace a table of ratings with an empty one."""
    if not summary.get("ratings"):
        raise RlhfLabError(f"Task {summary['task']!r} has no ratings yet ({summary['items']} responses to rate), so "
                           "nothing was written and any earlier summary is kept. Rate in the app (`rlhflab serve`) first.")
    out = Path(out_dir)
    json_path, md_path = out / SUMMARY_JSON, out / SUMMARY_MD
    write_json(json_path, summary)
    atomic_write_text(md_path, format_rating_table(summary))
    return json_path, md_path


def _key(prompt_id: Any) -> str:
    return str(prompt_id)


def _means(per_prompt: dict[Any, list[float]]) -> dict[Any, float]:
    return {k: statistics.fmean(v) for k, v in per_prompt.items() if v}


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _cell(stat: dict[str, Any]) -> str:
    return "-" if stat["mean"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"
