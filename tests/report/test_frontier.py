"""`rlhflab frontier`: held-out reward against KL over runs of every method. Run folders are
written here by hand in the stages' real formats (summary.json, config.yaml, eval_after.json(l),
evaluate's samples.jsonl); one test runs two tiny DPO seeds end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.eval.frontier import figure, frontier
from rlhflab.io import write_json, write_jsonl
from tests.helpers import assert_user_error, cli_run

REWARD = "runs/base/reward (reward_model, score, reads 256 tokens)"


def prompts(seed: int, n: int = 4) -> list[str]:
    return [f"prompt {seed}-{i}" for i in range(n)]


def config(seed: int, section: str, **settings) -> str:
    body = "".join(f"  {k}: {v}\n" for k, v in settings.items())
    return f"name: x\nseed: {seed}\ndata:\n  source: imdb\n{section}:\n{body}"


def tuned(folder: Path, *, seed: int, kl: float, p: float, method: str = "ppo", section: str = "ppo",
          reward: str = REWARD, end: dict | None = None, by_beta: dict | None = None, held_out: list[str] | None = None,
          **settings) -> Path:
    """A finished rl/dpo/ilql stage folder: start at P 0.5, end at (kl, p); its held-out prompts in eval_after."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config(seed, section, **settings), encoding="utf-8")
    summary = {"algorithm": method, "reward": reward, "policy": None,
               "start": {"kl": 0.0, "score": 0.0, "positive_probability": 0.5},
               "end": end if end is not None else {"kl": kl, "score": 2 * p - 1, "positive_probability": p}}
    rows = [{"prompt": q, "response": "r", "kl": kl, "score": 0.0, "positive_probability": p}
            for q in (held_out or prompts(seed))]
    if by_beta is not None:
        summary["by_beta"] = by_beta
        write_jsonl(folder / "eval_after.jsonl", [{"beta": b, **r} for b in by_beta for r in rows])
    elif section == "ppo":
        write_json(folder / "eval_after.json", rows)
    else:
        write_jsonl(folder / "eval_after.jsonl", rows)
    write_json(folder / "summary.json", summary)
    return folder


def evaluate_stage(folder: Path, *, seed: int = 0) -> Path:
    """An evaluate stage folder: sft (reference) and ppo with two gold judges, best-of-2 and best-of-4."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config(seed, "evaluate", prompts=4), encoding="utf-8")
    judges = lambda a, b: {"proxy": {"mean": 0.0, "positive_rate": 0.0}, "vader": {"mean": 0.1, "positive_rate": a},
                           "sst2": {"mean": 0.2, "positive_rate": b}}
    models = {"sft": {"source": "nowhere/sft", "kl_to_reference": 0.0, "positive_probability": {"mean": 0.5},
                      "judges": judges(0.4, 0.45)},
              "ppo": {"source": "nowhere/ppo", "kl_to_reference": 5.0, "positive_probability": {"mean": 0.88},
                      "judges": judges(0.6, 0.7)}}
    best = {"prompts": 2, "drawn": 4, "rows": [
        {"n": 1, "score": 0.0, "kl_bound": 0.0, "positive_probability": 0.5, "judges": {"vader": 0.4, "sst2": 0.4}},
        {"n": 2, "score": 0.3, "kl_bound": 0.193, "positive_probability": 0.7, "judges": {"vader": 0.5, "sst2": 0.55}},
        {"n": 4, "score": 0.6, "kl_bound": 0.636, "positive_probability": 0.8, "judges": {"vader": 0.55, "sst2": 0.6}}],
        "optimum": [{"kl": 0.25, "positive_probability": 0.76}, {"kl": 0.5, "positive_probability": 0.83}]}
    write_json(folder / "summary.json", {"prompts": 4, "reward": REWARD, "reference": "sft", "models": models,
                                         "best_of": best})
    write_jsonl(folder / "samples.jsonl", [{"prompt_id": i, "prompt": q, "model": m, "response": "r"}
                                           for m in models for i, q in enumerate(prompts(100 + seed))])
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    """PPO at two kl_coef x seeds 0 and 1, DPO at one beta x seeds 0 and 1, ILQL (seed 0) sampled at β 0 and 4."""
    root = tmp_path / "runs"
    for seed, (lo, hi) in enumerate([(0.80, 0.90), (0.84, 0.86)]):
        tuned(root / f"ppo-a-{seed}" / "rl", seed=seed, kl=4.0 + seed, p=lo, kl_coef=0.1)
        tuned(root / f"ppo-b-{seed}" / "rl", seed=seed, kl=8.0, p=hi, kl_coef=0.01)
        tuned(root / f"dpo-{seed}" / "dpo", seed=seed, kl=2.0 + 2 * seed, p=0.7 + 0.1 * seed, method="dpo",
              section="dpo", beta=0.1)
    tuned(root / "ilql-0" / "ilql", seed=0, kl=0, p=0, method="ilql", section="ilql", beta=1.0,
          end={"kl": 1.0, "positive_probability": 0.6},
          by_beta={"0.0": {"kl": 0.5, "positive_probability": 0.55}, "4.0": {"kl": 3.0, "positive_probability": 0.65}})
    return root


def test_points_grouped_over_seeds_with_ranges_and_lines_by_kl(runs, tmp_path):
    folders = [runs / n for n in ("ppo-a-0", "ppo-a-1", "ppo-b-0", "ppo-b-1", "dpo-0", "dpo-1", "ilql-0")]
    result = frontier(folders, tmp_path / "out")
    points = {(p["method"], p["label"]): p for p in result.data["points"]}
    assert set(points) == {("ppo", "kl_coef=0.01"), ("ppo", "kl_coef=0.1"), ("dpo", ""), ("ilql", "sampling_beta=0.0"),
                           ("ilql", "sampling_beta=4.0"), ("start", "")}
    low = points["ppo", "kl_coef=0.1"]
    assert low["seeds"] == [0, 1] and low["runs"] == 2
    assert low["kl"]["mean"] == pytest.approx(4.5) and (low["kl"]["min"], low["kl"]["max"]) == (4.0, 5.0)
    assert low["reward"]["mean"] == pytest.approx(0.82) and low["reward"]["min"] == pytest.approx(0.80)
    assert points["dpo", ""]["reward"]["max"] == pytest.approx(0.8) and points["dpo", ""]["reward"]["std"] > 0
    assert points["start", ""]["runs"] == 2  # one start per seed, however many runs share it
    assert result.data["reward"] == "positive_probability"
    # each method's points sorted by KL (the line through them)
    ppo = [p["kl"]["mean"] for p in result.data["points"] if p["method"] == "ppo"]
    assert ppo == sorted(ppo) == [4.5, 8.0]
    with open(result.csv, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 6 and {r["method"] for r in table} == {"ppo", "dpo", "ilql", "start"}
    assert result.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(result.json.read_text())["points"][0]["method"] == "dpo"


def test_ilql_seeds_that_sampled_other_betas_share_the_betas_they_have_in_common(runs, tmp_path):
    """Each sampling β is a point; which β a run evaluated (eval_betas) and saved (beta) are not settings."""
    tuned(runs / "ilql-1" / "ilql", seed=1, kl=0, p=0, method="ilql", section="ilql", beta=4.0, eval_betas="[3.0, 4.0]",
          end={"kl": 3.4, "positive_probability": 0.75},
          by_beta={"3.0": {"kl": 2.0, "positive_probability": 0.6}, "4.0": {"kl": 3.4, "positive_probability": 0.75}})
    tuned(runs / "ilql-lr" / "ilql", seed=1, kl=0, p=0, method="ilql", section="ilql", beta=1.0, learning_rate=0.5,
          end={"kl": 9.0, "positive_probability": 0.9}, by_beta={"1.0": {"kl": 9.0, "positive_probability": 0.9}})
    result = frontier([runs / "ilql-0", runs / "ilql-1", runs / "ilql-lr"], tmp_path / "out")
    points = {p["label"]: p for p in result.data["points"] if p["method"] == "ilql"}
    at = lambda beta: points[f"learning_rate=None, sampling_beta={beta}"]  # noqa: E731
    assert at(4.0)["seeds"] == [0, 1] and at(4.0)["reward"]["mean"] == pytest.approx(0.7)
    assert at(0.0)["seeds"] == [0] and at(3.0)["seeds"] == [1]
    assert points["learning_rate=0.5, sampling_beta=1.0"]["seeds"] == [1]  # a training setting stays a line of its own


def test_a_setting_added_later_at_its_default_is_the_runs_from_before_it(runs, tmp_path):
    """A seed run before rl.value_warmup_steps existed (no key) and one at its default (0) are one setting."""
    tuned(runs / "ppo-c-0" / "rl", seed=0, kl=3.0, p=0.8, kl_coef=0.2)
    tuned(runs / "ppo-c-1" / "rl", seed=1, kl=4.0, p=0.9, kl_coef=0.2, value_warmup_steps=0, lr_schedule="constant")
    tuned(runs / "ppo-w-1" / "rl", seed=1, kl=5.0, p=0.9, kl_coef=0.2, value_warmup_steps=5)
    result = frontier([runs / "ppo-c-0", runs / "ppo-c-1", runs / "ppo-w-1"], tmp_path / "out")
    points = {p["label"]: p["seeds"] for p in result.data["points"] if p["method"] == "ppo"}
    assert points == {"value_warmup_steps=0": [0, 1], "value_warmup_steps=5": [1]}


def test_a_sweep_folder_gives_every_point(runs, tmp_path):
    sweep = runs / "base" / "sweep"
    for name, coef in (("kl_coef-0.1", 0.1), ("kl_coef-0.01", 0.01)):
        tuned(sweep / name / "rl", seed=0, kl=1 / coef, p=0.8, kl_coef=coef)
    write_json(sweep / "sweep.json", {"points": [{"name": "kl_coef-0.1"}, {"name": "kl_coef-0.01"}]})
    result = frontier([sweep], tmp_path / "out")
    assert sorted(p["label"] for p in result.data["points"] if p["method"] == "ppo") == ["kl_coef=0.01", "kl_coef=0.1"]


def test_evaluate_stage_gives_models_best_of_n_and_a_gold_panel(tmp_path):
    folder = evaluate_stage(tmp_path / "runs" / "x" / "evaluate")
    result = frontier([folder])
    assert result.png == tmp_path / "runs" / "x" / "frontier" / "frontier.png"
    points = {(p["method"], p["label"]): p for p in result.data["points"]}
    assert set(points) == {("ppo", ""), ("start", ""), ("best-of-n", "n=2"), ("best-of-n", "n=4"), ("optimum", "")}
    assert points["best-of-n", "n=4"]["bound"] and points["best-of-n", "n=4"]["kl"]["mean"] == pytest.approx(0.636)
    optimum = sorted((p for p in result.data["points"] if p["method"] == "optimum"), key=lambda p: p["kl"]["mean"])
    assert [(p["kl"]["mean"], p["reward"]["mean"]) for p in optimum] == [(0.25, 0.76), (0.5, 0.83)]
    assert not any(p["bound"] for p in optimum)  # at a budget, not a bound: the KL is what it spends
    assert points["ppo", ""]["gold"]["sst2"]["mean"] == pytest.approx(0.7)
    assert "proxy" not in points["ppo", ""]["gold"]  # the proxy is the left panel
    assert len(figure(result.data["points"], "P").axes) == 2
    header = result.csv.read_text().splitlines()[0]
    assert "gold_sst2_mean" in header and "gold_vader_mean" in header


def test_without_gold_one_panel(runs, tmp_path):
    result = frontier([runs / "ppo-a-0"], tmp_path / "out")
    assert len(figure(result.data["points"], "P").axes) == 1


def recorded(folder: Path, reward_source: str | None, fingerprint: str, policy: str = "run:sft0") -> Path:
    """Give a stage folder what a real one has: reward_fn.source in its config and the fingerprints its
    stage.json recorded for its inputs (a reward run known by its run id)."""
    if reward_source is not None:
        (folder / "config.yaml").write_text((folder / "config.yaml").read_text() + f"reward_fn:\n  source: {reward_source}\n")
    key = reward_source or "<this run>/reward"
    write_json(folder / "stage.json", {"key": "k", "run_id": "own", "references": {key: fingerprint,
                                                                                 "<this run>/sft": policy}})
    return folder


def test_a_relative_and_an_absolute_path_to_one_reward_run_agree_from_any_folder(runs, tmp_path, monkeypatch):
    absolute = tmp_path / "runs" / "base" / "reward"
    recorded(tuned(runs / "rel" / "rl", seed=0, kl=1.0, p=0.6), "runs/base/reward", "run:abc123")
    recorded(tuned(runs / "abs" / "rl", seed=0, kl=2.0, p=0.7, reward=f"{absolute} (reward_model, score, reads 256 tokens)"),
             str(absolute), "run:abc123")
    # a sweep point's own reward stage (a link to the shared one), read from another working folder
    recorded(tuned(runs / "point" / "rl", seed=0, kl=3.0, p=0.8, reward="runs/sweep/point/reward (reward_model, score, "
                   "reads 256 tokens)"), None, "run:abc123")
    monkeypatch.chdir(tmp_path.parent)
    assert frontier([runs / "rel", runs / "abs", runs / "point"], tmp_path / "out").data["reward_id"] == \
        "run:abc123 (reward_model, score, reads 256 tokens)"
    # another reward run (another seed of the same config): not the same reward
    recorded(tuned(runs / "other" / "rl", seed=0, kl=2.0, p=0.7), "runs/seed1/reward", "run:another")
    with pytest.raises(RlhfLabError, match="different rewards"):
        frontier([runs / "abs", runs / "other"], tmp_path / "out2")


def test_seeds_of_sweep_points_starting_from_one_linked_model_are_one_setting(runs, tmp_path):
    for seed in (0, 1):  # each point's summary names its own link to the shared SFT stage
        folder = tuned(runs / f"dpo-seed{seed}" / "dpo", seed=seed, kl=1.0 + seed, p=0.7, method="dpo", section="dpo",
                       beta=0.1)
        summary = json.loads((folder / "summary.json").read_text())
        write_json(folder / "summary.json", {**summary, "policy": f"runs/sweep/dpo-seed{seed}/sft"})
        recorded(folder, None, "run:r", policy="run:sft0")
    (dpo,) = [p for p in frontier([runs / "dpo-seed0", runs / "dpo-seed1"], tmp_path / "out").data["points"]
              if p["method"] == "dpo"]
    assert dpo["seeds"] == [0, 1] and dpo["setting"]["policy"] == "run:sft0"


def test_paths_written_in_handed_runs_are_never_opened(runs, tmp_path, monkeypatch):
    """A reward, policy or evaluated model that a handed summary names outside the handed folder is not
    read: the identity comes from the run's own stage.json, and nothing else is opened."""
    import rlhflab.eval.run_files as run_files

    outside = tmp_path / "private"
    for stage in ("reward", "rl"):
        write_json(outside / stage / "stage.json", {"run_id": "secret"})
        write_json(outside / stage / "summary.json", {"algorithm": "secret", "reward": "x (y)"})
    handed = tuned(runs / "handed" / "rl", seed=0, kl=1.0, p=0.6, reward=f"{outside / 'reward'} (reward_model, score)")
    summary = json.loads((handed / "summary.json").read_text())
    write_json(handed / "summary.json", {**summary, "policy": str(outside / "rl")})
    ev = evaluate_stage(runs / "ev" / "evaluate")
    summary = json.loads((ev / "summary.json").read_text())
    summary["models"]["ppo"]["source"] = str(outside / "rl")
    write_json(ev / "summary.json", summary)
    opened = []
    real = run_files.run_file
    monkeypatch.setattr(run_files, "run_file", lambda root, relative, **kw: opened.append(Path(root) / relative)
                        or real(root, relative, **kw))
    result = frontier([runs / "handed"], tmp_path / "out")
    evaluated = frontier([ev], tmp_path / "out2")
    assert opened and not [p for p in opened if outside in p.parents]
    assert "secret" not in json.dumps(result.data) + json.dumps(evaluated.data)
    assert {p["method"] for p in evaluated.data["points"]} >= {"ppo", "best-of-n"}  # named as evaluated, not "secret"


def test_refuses_different_rewards_naming_both(runs, tmp_path, capsys):
    tuned(runs / "vader" / "rl", seed=0, kl=2.0, p=0.7, reward="vader (callable)")
    result = cli_run(capsys, "frontier", runs / "ppo-a-0", runs / "vader", "--out", tmp_path / "out")
    assert_user_error(result, "different rewards", str(runs / "ppo-a-0" / "rl"), str(runs / "vader" / "rl"))
    assert not (tmp_path / "out").exists()


def test_refuses_different_prompts_within_a_seed_and_a_different_draw(runs, tmp_path, capsys):
    tuned(runs / "elsewhere" / "rl", seed=0, kl=2.0, p=0.7, held_out=["another prompt"] * 4)
    result = cli_run(capsys, "frontier", runs / "ppo-a-0", runs / "elsewhere", "--out", tmp_path / "out")
    assert_user_error(result, "different held-out prompts", str(runs / "elsewhere" / "rl"))
    # seeds 0 and 1 may differ in their prompts (drawn with the seed) but not in where they were drawn from
    frontier([runs / "ppo-a-0", runs / "ppo-a-1"], tmp_path / "out")
    tuned(runs / "fewer" / "rl", seed=1, kl=2.0, p=0.7, held_out=prompts(1, 3))
    with pytest.raises(RlhfLabError, match="different held-out prompts"):
        frontier([runs / "ppo-a-0", runs / "fewer"], tmp_path / "out")
    # the evaluate stage's prompts are not the tuned stages'
    with pytest.raises(RlhfLabError, match="different held-out prompts"):
        frontier([runs / "ppo-a-0", evaluate_stage(runs / "ev" / "evaluate")], tmp_path / "out")


def test_refuses_a_run_without_kl(runs, tmp_path, capsys):
    tuned(runs / "old" / "dpo", seed=0, kl=0, p=0, method="dpo", section="dpo", end={"positive_probability": 0.7})
    result = cli_run(capsys, "frontier", runs / "dpo-0", runs / "old", "--out", tmp_path / "out")
    assert_user_error(result, "no KL", str(runs / "old" / "dpo"))


def test_refuses_what_is_no_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert_user_error(cli_run(capsys, "frontier", tmp_path / "empty"), "no finished rl, dpo or ilql stage")
    assert_user_error(cli_run(capsys, "frontier", tmp_path / "missing"), "is not a folder")


def test_two_tiny_dpo_seeds_end_to_end(tmp_path, tiny_llama_dir, reviews_csv):
    """Two real DPO runs (seeds 0 and 1, a callable reward) -> one point with a range over the seeds."""
    from tests.stages.test_dpo import REWARD_FILE, make_config
    from rlhflab.stages.common import run_stage

    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD_FILE)
    for seed in (0, 1):
        cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward}:e_share", max_steps=2)
        cfg.name, cfg.seed = f"dpo-{seed}", seed
        run_stage("dpo", cfg, progress=False)
    result = frontier([tmp_path / "runs" / "dpo-0", tmp_path / "runs" / "dpo-1"], tmp_path / "out")
    (dpo,) = [p for p in result.data["points"] if p["method"] == "dpo"]
    assert dpo["seeds"] == [0, 1] and dpo["kl"]["min"] <= dpo["kl"]["mean"] <= dpo["kl"]["max"]
    assert result.data["reward"] == "score"  # a callable reward has no P(positive)
    assert result.png.is_file()


def test_dpo_rounds_are_the_points_of_one_line_per_reference(tmp_path):
    def dpo_run(name: str, seed: int, reference: str, rounds: list[tuple[float, float]], loss: str = "sigmoid") -> Path:
        folder = tuned(tmp_path / name / "dpo", seed=seed, kl=rounds[-1][0], p=rounds[-1][1], method="dpo", section="dpo",
                       beta=0.1, rounds=len(rounds), reference=reference, loss=loss)
        summary = json.loads((folder / "summary.json").read_text())
        summary["reference"], summary["loss"] = reference, loss
        summary["by_round"] = [{"round": i + 1, "step": 10 * (i + 1), "end": {"kl": kl, "positive_probability": p}}
                               for i, (kl, p) in enumerate(rounds)]
        write_json(folder / "summary.json", summary)
        return folder

    folders = [dpo_run("start-0", 0, "start", [(1.0, 0.6), (2.0, 0.8)]),
               dpo_run("start-1", 1, "start", [(1.5, 0.7), (2.5, 0.9)]),
               dpo_run("longer-0", 0, "start", [(1.0, 0.6), (2.0, 0.8), (2.8, 0.85)]),  # rounds 1-2 as run start-0
               dpo_run("moving-0", 0, "previous_round", [(1.0, 0.6), (4.0, 0.9)]),
               dpo_run("distill-0", 0, "start", [(0.5, 0.7)], loss="distill"),
               dpo_run("distill-moving-0", 0, "previous_round", [(0.6, 0.7)], loss="distill")]
    points = {(p["method"], p["setting"]["round"]): p for p in frontier(folders, tmp_path / "out").data["points"]
              if p["method"] != "start"}
    assert set(points) == {("dpo", 1), ("dpo", 2), ("dpo", 3), ("dpo (reference: previous round)", 1),
                           ("dpo (reference: previous round)", 2), ("dpo (distill)", 1),
                           ("dpo (distill, reference: previous round)", 1)}
    assert points["dpo", 2]["seeds"] == [0, 1] and points["dpo", 2]["kl"]["mean"] == pytest.approx(13 / 6)
    assert points["dpo", 2]["reward"]["max"] == pytest.approx(0.9) and points["dpo", 3]["runs"] == 1
    assert points["dpo", 1]["label"] == "round=1"  # what differs between the line's points
