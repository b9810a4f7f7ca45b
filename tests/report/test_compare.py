"""`rlhflab compare` on RL runs written here by hand in the rl stage's real formats
(summary.json, metrics.jsonl, config.yaml; a sweep's sweep.json and point.yaml): no model runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.io import write_json, write_jsonl
from rlhflab.eval.compare import compare
from rlhflab.eval.report import build_report
from tests.helpers import assert_user_error, cli_run

CURVES = ["score_mean", "kl", "clip_fraction", "approx_kl", "policy_loss", "beta"]


def train_row(step: int, clip: float, approx: float) -> dict:
    return {"step": step, "split": "train", "score_mean": 0.1 * step, "score_std": 0.5, "kl": 0.2 * step, "beta": 0.05,
            "clip_fraction": clip, "approx_kl": approx, "policy_loss": -0.01 * step, "value_loss": 0.1, "entropy": 4.0}


REWARD = "runs/base/reward (reward_model, score, reads 256 tokens)"  # summary.json's "reward", as the rl stage writes it


def rl_run(folder: Path, *, steps: int, evals: list[tuple[int, float, float]], seconds: float | None,
           lr: float = 1e-4, kl_coef: float = 0.05, algorithm: str = "ppo", finished: bool = True,
           reward: str = REWARD, seed: int = 1, held_out: list[float] | None = None, config: str = "") -> None:
    """An rl stage folder (its config.yaml under the section's old name, ppo:): evals are (step, KL,
    P(positive)); clip fraction = step / 100, approx KL = step / 1000.
    held_out: the final per-prompt P(positive) values (eval_after.json); the config holds 64 eval prompts."""
    rows = [{"step": s, "split": "eval", "kl": kl, "score": 2 * p - 1, "positive_probability": p} for s, kl, p in evals]
    rows += [train_row(s, s / 100, s / 1000) for s in range(1, steps + 1)]
    rows.sort(key=lambda r: (r["step"], r["split"] != "eval"))
    target = folder if finished else folder.with_name(folder.name + ".partial")
    write_jsonl(target / "metrics.jsonl", rows)
    (target / "config.yaml").write_text(f"name: x\nseed: {seed}\nppo:\n  algorithm: {algorithm}\n  learning_rate: {lr}\n"
                                        f"  kl_coef: {kl_coef}\n  eval_prompts: 64\n{config}", encoding="utf-8")
    if finished:
        evaluations = [{"step": s, "kl": kl, "score": 2 * p - 1, "positive_probability": p} for s, kl, p in evals]
        write_json(target / "summary.json", {"algorithm": algorithm, "reward": reward, "steps": steps,
                                             "start": evaluations[0], "end": evaluations[-1],
                                             "evaluations": evaluations, "seconds": seconds})
    if held_out is not None:
        write_json(target / "eval_after.json", [{"prompt": f"p{i}", "response": "r", "kl": 1.0, "score": 2 * p - 1,
                                                 "positive_probability": p} for i, p in enumerate(held_out)])


@pytest.fixture
def sweep(tmp_path) -> Path:
    """runs/base/sweep with four points: two finished, one cut off (rl.partial), one not started."""
    folder = tmp_path / "runs" / "base" / "sweep"
    names = ["learning_rate-1e-5", "learning_rate-1e-4", "learning_rate-1e-3", "learning_rate-1e-2"]
    write_json(folder / "sweep.json", {
        "config": None, "fixed": ["ppo.steps=12"], "axes": {"ppo.learning_rate": ["1e-5", "1e-4", "1e-3", "1e-2"]},
        "points": [{"name": n, "overrides": [f"ppo.learning_rate={n.split('-', 1)[1]}"], "status": "done",
                    "seconds": None, "error": None, "log": str(folder / n / "log.txt")} for n in names]})
    # p1: final 0.700 at KL 2.0 from 0.5 (+0.2, 0.1 per nat), best 0.800 at step 6
    rl_run(folder / names[0] / "rl", steps=12, evals=[(0, 0.0, 0.5), (6, 1.0, 0.8), (12, 2.0, 0.7)], seconds=30.4, lr=1e-5)
    # p2: final 0.750 at KL 5.0 (+0.25, 0.05 per nat); step 12 logged twice (a resume): the last line counts
    rl_run(folder / names[1] / "rl", steps=12, evals=[(0, 0.0, 0.5), (12, 5.0, 0.75)], seconds=61.0)
    with open(folder / names[1] / "rl" / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(train_row(12, 0.22, 0.0)) + "\n")
    # p3: stopped at step 4 of a longer run
    rl_run(folder / names[2] / "rl", steps=4, evals=[(0, 0.0, 0.5), (4, 0.5, 0.9)], seconds=None, finished=False)
    return folder


def test_the_table_holds_final_best_and_last_step_means_per_point(sweep):
    result = compare([str(sweep)])
    assert result.folder == sweep / "compare"
    data = json.loads((sweep / "compare" / "compare.json").read_text())
    assert data["reward"] == "positive_probability"
    assert data["header"] == ["point", "learning_rate", "final P(positive)", "best P(positive)", "final KL",
                              "clip fraction (last 10)", "approx. KL (last 10)", "steps", "seconds"]
    assert data["rows"] == [
        # clip fraction over steps 3..12 = mean(3..12) / 100 = 0.075; approx KL 0.0075
        ["learning_rate-1e-5", "1e-5", "0.700", "0.800 (step 6)", "2.00", "0.075", "0.0075", "12", "30"],
        # step 12's second line: clip (3+..+11)/100 + 0.22 over 10 = 0.085, approx KL (3+..+11)/1000 over 10 = 0.0063
        ["learning_rate-1e-4", "1e-4", "0.750", "0.750 (step 12)", "5.00", "0.085", "0.0063", "12", "61"],
        ["learning_rate-1e-3", "1e-3", "not finished", "0.900 (step 4)", "-", "0.025", "0.0025", "4 so far", "-"],
        ["learning_rate-1e-2", "1e-2", "not finished", "-", "-", "-", "-", "-", "-"],
    ]
    first = data["runs"][0]
    assert first["reward_gain"] == pytest.approx(0.2) and first["reward_per_kl"] == pytest.approx(0.1)
    # one seed each, no per-prompt rows: binomial standard errors over the 64 eval prompts,
    # sqrt(.75 * .25 / 64) = 0.0541 and sqrt(.7 * .3 / 64) = 0.0573; 2 * hypot = 0.158 > 0.05
    assert data["sentences"] == [
        "learning_rate-1e-4, learning_rate-1e-5 tie for the highest final held-out P(positive) (0.750, 0.700): the "
        "difference, 0.050, is within 2 standard errors of the difference (±0.158; one seed each, standard errors "
        "from a binomial standard error over 64 held-out prompts).",
        "Of the runs that moved at least 0.5 nats from their start, learning_rate-1e-5 gains the most P(positive) "
        "per nat of KL: +0.200 over its start at a final KL of 2.00 (0.100 per nat).",
        "Not finished: learning_rate-1e-3, learning_rate-1e-2.",
    ]
    figures = sorted(p.name for p in (sweep / "compare" / "figures").iterdir())
    assert figures == sorted([f"compare_{k}.png" for k in CURVES] + ["compare_frontier.png"])
    assert [f["path"] for f in data["figures"]][-1] == "figures/compare_frontier.png"
    markdown = (sweep / "compare" / "compare.md").read_text()
    assert "0.800 (step 6)" in markdown and "](figures/compare_kl.png)" in markdown
    assert result.text.splitlines()[0].startswith("| point ") and "not finished" in result.text


def test_runs_and_stage_folders_show_algorithm_and_settings_and_fall_back_to_the_score(tmp_path):
    rl_run(tmp_path / "runs" / "a" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    rl_run(tmp_path / "runs" / "b" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 3.0, 0.7)], seconds=6.0,
           algorithm="grpo", lr=3e-5, kl_coef=0.1)
    summary = json.loads((tmp_path / "runs" / "b" / "rl" / "summary.json").read_text())
    for entry in [summary["start"], summary["end"], *summary["evaluations"]]:
        del entry["positive_probability"]  # a reward function without a probability
    write_json(tmp_path / "runs" / "b" / "rl" / "summary.json", summary)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "b" / "rl" / "metrics.jsonl").read_text().splitlines()]
    write_jsonl(tmp_path / "runs" / "b" / "rl" / "metrics.jsonl",
                [{k: v for k, v in r.items() if k != "positive_probability"} for r in rows])
    out = tmp_path / "out"
    result = compare([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b" / "rl")], out)
    assert result.data["reward"] == "score"  # one scale for every run
    assert result.data["rows"] == [
        ["a", "ppo", "0.0001", "0.05", "0.200", "0.200 (step 3)", "1.50", "0.020", "0.0020", "3", "5"],
        ["b", "grpo", "3e-05", "0.1", "0.400", "0.400 (step 3)", "3.00", "0.020", "0.0020", "3", "6"],
    ]
    assert result.data["header"][:4] == ["run", "algorithm", "learning_rate", "kl_coef"]
    assert (out / "compare.md").exists() and (out / "figures" / "compare_frontier.png").exists()


@pytest.mark.parametrize("make, fragment", [
    (lambda root: root / "missing", "is not a folder"),
    (lambda root: (root / "file.txt").write_text("x") and root / "file.txt", "is not a folder"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "holds no sweep.json"),
])
def test_an_argument_that_names_no_rl_run_is_a_one_line_error(tmp_path, capsys, make, fragment):
    path = make(tmp_path)
    with pytest.raises(RlhfLabError, match=fragment):
        compare([str(path)])
    line = assert_user_error(cli_run(capsys, "compare", path), str(path), fragment)
    assert "runs/NAME/sweep" in line


def test_a_manifest_without_points_is_an_error(tmp_path):
    write_json(tmp_path / "sweep" / "sweep.json", {"points": "nope"})
    with pytest.raises(RlhfLabError, match="no list of points"):
        compare([str(tmp_path / "sweep")])


def test_the_cli_prints_the_table_and_the_path_last(sweep, capsys, tmp_path):
    result = cli_run(capsys, "compare", sweep, "--out", tmp_path / "elsewhere")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == str(tmp_path / "elsewhere" / "compare.md")
    assert lines[0].startswith("| point") and any("learning_rate-1e-5" in line for line in lines)


def test_the_run_report_has_a_sweep_section_when_the_sweep_was_compared(sweep):
    base = sweep.parent
    rl_run(base / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.0, 0.6)], seconds=5.0)
    _, markdown = build_report(base)
    assert "## Sweep" not in markdown.read_text()
    compare([str(sweep)])
    html, markdown = build_report(base)
    text = markdown.read_text()
    assert "## Sweep" in text and "0.800 (step 6)" in text
    assert "](../sweep/compare/figures/compare_frontier.png)" in text
    assert html.read_text().count("data:image/png;base64,") >= 7


def test_the_report_of_a_sweep_that_shares_no_stage_is_its_sweep(sweep):
    # A sweep over the seed (or anything SFT reads) trains every stage in the points: the base run
    # holds only sweep/, and its report is the sweep's, not "nothing to report".
    compare([str(sweep)])
    _, markdown = build_report(sweep.parent)
    assert "## Sweep" in markdown.read_text()


def test_runs_scored_with_different_rewards_get_a_table_and_a_ranking_each(tmp_path):
    runs = tmp_path / "runs"
    # a and b: the same reward model (stage.json's run id), named by a relative and an absolute path
    rl_run(runs / "a" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 2.0, 0.9)], seconds=1.0, held_out=[0.9] * 32 + [0.9] * 32)
    write_json(runs / "a" / "rl" / "stage.json", {"references": {"<this run>/reward": "run:r1"}, "run_id": "a"})
    absolute = "/elsewhere/runs/base/reward"
    rl_run(runs / "b" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 2.0, 0.5)], seconds=1.0, held_out=[0.5] * 64, lr=3e-5,
           reward=f"{absolute} (reward_model, score, reads 256 tokens)", config=f"reward_fn:\n  source: {absolute}\n")
    write_json(runs / "b" / "rl" / "stage.json", {"references": {absolute: "run:r1"}, "run_id": "b"})
    # c: the same path as a, but the reward model was trained again (another run id); d: a VADER function
    rl_run(runs / "c" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 2.0, 0.95)], seconds=1.0)
    write_json(runs / "c" / "rl" / "stage.json", {"references": {"<this run>/reward": "run:r2"}, "run_id": "c"})
    rl_run(runs / "d" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 2.0, 0.99)], seconds=1.0,
           reward="rlhflab._api_rewards:vader_1234abcd (callable, score)")
    result = compare([str(runs / name) for name in "abcd"], tmp_path / "out")
    tables = result.data["tables"]
    assert [[row[0] for row in t["rows"]] for t in tables] == [["a", "b"], ["c"], ["d"]]
    assert [t["reward"] for t in tables] == [REWARD, REWARD, "rlhflab._api_rewards:vader_1234abcd (callable, score)"]
    said = result.data["sentences"]
    assert said[0].startswith("These runs were scored with 3 different rewards, so their numbers are not compared "
                              "across rewards")
    # a beats b by 0.4 with both their per-prompt spreads 0: one ranking, inside the first reward only
    ranked = [s for s in said if "highest" in s]
    assert ranked == [f"Scored with {REWARD}: a has the highest final held-out P(positive): 0.900, ahead of the next, b "
                      f"(0.500), by more than the noise (the difference, 0.400, is beyond 2 standard errors of the "
                      f"difference (±0.000; one seed each, standard errors from the spread over its 64 held-out prompts))."]
    assert result.text.count("Scored with ") >= 3 and result.text.count("| run ") == 3
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").glob("compare_frontier*.png"))
    assert figures == ["compare_frontier-2.png", "compare_frontier-3.png", "compare_frontier.png"]


def test_one_seed_each_a_difference_inside_the_held_out_noise_is_a_tie_and_says_why(tmp_path):
    spread = [0.0, 1.0] * 100  # 200 held-out prompts, P(positive) 0 or 1: sd 0.50, standard error 0.035
    rl_run(tmp_path / "a" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 1.0, 0.504)], seconds=1.0, held_out=spread)
    rl_run(tmp_path / "b" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 1.0, 0.503)], seconds=1.0, held_out=spread, lr=3e-5)
    said = compare([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out").data["sentences"]
    assert said[0] == ("a, b tie for the highest final held-out P(positive) (0.504, 0.503): the difference, 0.001, is "
                       "within 2 standard errors of the difference (±0.100; one seed each, standard errors from the "
                       "spread over its 200 held-out prompts).")
    assert not any("has the highest" in s for s in said)


def test_a_run_without_a_noise_estimate_is_named_best_but_not_called_more_than_noise(tmp_path):
    rl_run(tmp_path / "a" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 1.0, 0.9)], seconds=1.0)
    rl_run(tmp_path / "b" / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 1.0, 0.5)], seconds=1.0, lr=3e-5)
    for name in "ab":  # a reward without a probability and no eval_after.json: no standard error
        path = tmp_path / name / "rl" / "summary.json"
        summary = json.loads(path.read_text())
        for entry in [summary["start"], summary["end"], *summary["evaluations"]]:
            del entry["positive_probability"]
        write_json(path, summary)
        (tmp_path / name / "rl" / "metrics.jsonl").write_text("")
    said = compare([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "out").data["sentences"]
    assert said[0] == ("a has the highest final held-out reward: 0.800, against b's 0.000; whether that is more than "
                       "noise is not known (a has one seed and no per-prompt rows (eval_after.json) to measure it from).")


def seed_sweep(folder: Path, finals: dict[str, float]) -> None:
    """A sweep over seed x kl_coef: finals maps each point name (seed-S_kl_coef-K) to its final P(positive)."""
    write_json(folder / "sweep.json", {"points": [
        {"name": name, "overrides": [f"seed={name.split('_')[0].split('-')[1]}",
                                     f"ppo.kl_coef={name.split('kl_coef-')[1]}"]} for name in finals]})
    for name, final in finals.items():
        rl_run(folder / name / "rl", steps=2, evals=[(0, 0.0, 0.5), (2, 1.0 + final, final)], seconds=1.0)


def test_seeds_of_one_setting_show_mean_and_range_and_overlapping_seed_ranges_tie(tmp_path):
    names = [f"seed-{s}_kl_coef-{k}" for k in ("0.02", "0.1") for s in (1, 2, 3)]
    seed_sweep(tmp_path / "tie" / "sweep", dict(zip(names, [0.80, 0.86, 0.83, 0.84, 0.90, 0.87])))
    result = compare([str(tmp_path / "tie" / "sweep")])
    seeds = result.data["tables"][0]["seeds"]
    assert seeds["header"] == ["setting", "seeds", "final P(positive): mean", "range", "final KL: mean", "range"]
    assert seeds["rows"] == [["kl_coef=0.02", "3", "0.830", "0.800-0.860", "1.83", "1.80-1.86"],
                             ["kl_coef=0.1", "3", "0.870", "0.840-0.900", "1.87", "1.84-1.90"]]
    assert result.data["sentences"][0] == (
        "kl_coef=0.1, kl_coef=0.02 tie for the highest final held-out P(positive) (0.870 (mean of 3 seeds, range "
        "0.840-0.900), 0.830 (mean of 3 seeds, range 0.800-0.860)): their seed ranges overlap.")
    assert "| kl_coef=0.02 | 3 " in result.text.replace("  ", " ").replace("  ", " ")
    report = build_report(tmp_path / "tie")[1].read_text()  # the run report's Sweep section shows both tables
    assert "## Sweep" in report and "| kl\\_coef=0.1 | 3 | 0.870 | 0.840-0.900 |" in report and "tie for the highest" in report
    seed_sweep(tmp_path / "apart", dict(zip(names, [0.70, 0.74, 0.72, 0.84, 0.90, 0.87])))
    said = compare([str(tmp_path / "apart")]).data["sentences"][0]
    assert said.startswith("kl_coef=0.1 has the highest final held-out P(positive): 0.870 (mean of 3 seeds, range "
                           "0.840-0.900), ahead of the next, kl_coef=0.02 (0.720") and said.endswith(
                           "their seed ranges do not overlap).")
