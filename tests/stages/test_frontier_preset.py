"""A frontier preset (config `frontier:`): one `rlhflab pipeline` call trains the run's own stages once,
runs every listed point at every seed as a run of its own (real `python -m rlhflab` processes), and
draws the reward-KL figure of them all; bad presets fail in one line before anything runs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from rlhflab import sweep as sweep_module
from rlhflab.config import dump_yaml, load_config, parse_yaml, to_dict
from rlhflab.errors import RlhfLabError
from tests.helpers import assert_user_error, cli_run, synthetic_reviews
from tests.stages.test_pipeline import make_config

RUNS = ["ppo-seed0", "dpo-seed0", "ppo-seed1", "dpo-seed1"]  # seed by seed
POINTS = {
    "ppo": {"stages": ["rl"], "rl.kl_coef": 0.1},
    "dpo": {"stages": ["dpo"], "dpo": {"max_steps": 2, "batch_size": 4, "eval_prompts": 8, "eval_batch_size": 8,
                                        "on_policy": {"prompts": 8, "samples_per_prompt": 2, "batch_size": 16}}},
}


def write_preset(root: Path, llama: Path, bert: Path, **frontier) -> Path:
    reviews = root / "reviews.csv"
    with open(reviews, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *synthetic_reviews(30)])
    tree = parse_yaml(dump_yaml(make_config(root, llama, bert, reviews)))
    tree["stages"] = ["sft", "reward"]
    tree["frontier"] = {"points": POINTS, "seeds": [0, 1], **frontier}
    config = root / "frontier.yaml"
    config.write_text(json.dumps(tree), encoding="utf-8")  # JSON is YAML
    return config


@pytest.fixture(scope="module")
def preset(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """`rlhflab pipeline --config frontier.yaml` on the tiny models: PPO and DPO at seeds 0 and 1."""
    root = tmp_path_factory.mktemp("frontier")
    config = write_preset(root, tiny_llama_dir, tiny_bert_dir)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")  # the runs' processes: tiny models run faster on one thread
        figure = sweep_module.run(str(config), [], progress=False, echo=lines.append, frontier=True)
    return config, root / "runs" / "tiny", figure, lines


def test_the_runs_own_stages_train_once_and_every_point_runs_at_every_seed(preset):
    config, base, figure, lines = preset
    assert lines[0] == f"frontier  4 runs (listed in frontier.points) in {base / 'sweep'}"
    assert sorted(p.name for p in base.iterdir()) == ["reward", "sft", "sweep"]
    for name in RUNS:
        point = base / "sweep" / name
        for stage in ("sft", "reward"):
            assert (point / stage).is_symlink() and os.readlink(point / stage) == str(Path("..") / ".." / stage)
        own = "rl" if name.startswith("ppo") else "dpo"
        assert sorted(p.name for p in point.iterdir() if p.is_dir() and not p.is_symlink()) == sorted([own, "report"])
        cfg = load_config(point / "point.yaml")
        assert cfg.seed == int(name[-1]) and cfg.stages == [own] and cfg.frontier.points is None
    assert load_config(base / "sweep" / "ppo-seed1" / "point.yaml").rl.kl_coef == 0.1
    assert load_config(base / "sweep" / "dpo-seed0" / "point.yaml").dpo.on_policy.prompts == 8  # a nested section


def test_the_figure_has_each_method_as_one_point_with_a_range_over_the_seeds(preset):
    _, base, figure, lines = preset
    assert figure == base / "sweep" / "frontier" / "frontier.png" and figure.is_file()
    data = json.loads((figure.parent / "frontier.json").read_text())
    by_method = {}
    for point in data["points"]:
        by_method.setdefault(point["method"], []).append(point)
    assert sorted(by_method) == ["dpo", "ppo", "start"]
    (ppo,) = by_method["ppo"]
    (dpo,) = by_method["dpo"]  # one round: one point
    for point in (ppo, dpo):
        assert point["seeds"] == [0, 1] and point["runs"] == 2
        assert point["reward"]["min"] <= point["reward"]["mean"] <= point["reward"]["max"]
    assert lines[-1].splitlines()[-1].startswith("wrote ") and "frontier.png" in lines[-1]
    manifest = json.loads((base / "sweep" / "sweep.json").read_text())
    assert [p["name"] for p in manifest["points"]] == RUNS and {p["status"] for p in manifest["points"]} == {"done"}
    assert manifest["command"].startswith("rlhflab pipeline --config ")


def test_running_it_again_runs_nothing(preset, monkeypatch):
    config, base, _, _ = preset
    monkeypatch.setattr(sweep_module, "_launch", lambda *a: pytest.fail("a finished run was started again"))
    lines: list[str] = []
    sweep_module.run(str(config), [], progress=False, echo=lines.append, frontier=True)
    assert sum("up to date" in line for line in lines) == 2 + len(RUNS)  # sft, reward, then every run


def test_the_cli_runs_it_through_pipeline_and_refuses_force(preset, capsys):
    config, base, figure, _ = preset
    done = cli_run(capsys, "pipeline", "--config", str(config), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(figure)
    assert_user_error(cli_run(capsys, "pipeline", "--config", str(config), "--force", "rl"), "--force reruns stages of one run")


@pytest.mark.parametrize("change, message", [
    ({"points": {"ppo": {"rl.kl_coef": 0.1}}}, "frontier.points.ppo names no stages"),
    ({"points": {"ppo": {"stages": ["sft", "rl"]}}}, "frontier.points.ppo runs sft, which the run trains once"),
    ({"points": {"ppo": {"stages": ["rl"], "seed": 3}}}, "frontier.points.ppo sets seed"),
    ({"points": {"ppo": {"stages": ["rl"], "rl.kl_cof": 0.1}}}, "frontier.points.ppo: Unknown config key 'rl.kl_cof'"),
    ({"points": {"compare": {"stages": ["rl"]}}, "seeds": [0]}, "where the frontier's figure goes"),
    ({"points": {"ppo": {"stages": ["evaluate"], "evaluate.models": {"a": "run:rl"}}}}, "reads this run's rl"),
    ({"seeds": [1, 1]}, "frontier.seeds lists a seed twice"),
    ({"points": {}}, "frontier.points is empty"),
])
def test_bad_presets_fail_in_one_line_before_anything_runs(tmp_path, tiny_llama_dir, tiny_bert_dir, capsys, change, message):
    config = write_preset(tmp_path, tiny_llama_dir, tiny_bert_dir, **change)
    capsys.readouterr()  # the notes of make_config's old section names
    assert_user_error(cli_run(capsys, "pipeline", "--config", str(config)), message)
    assert not (tmp_path / "runs").exists()


def test_a_plain_pipeline_call_and_a_sweep_refuse_a_frontier_config(tmp_path, tiny_llama_dir, tiny_bert_dir):
    from rlhflab import pipeline

    config = write_preset(tmp_path, tiny_llama_dir, tiny_bert_dir)
    with pytest.raises(RlhfLabError, match="lists frontier points"):
        pipeline.run(load_config(config))
    with pytest.raises(RlhfLabError, match="lists frontier points"):
        sweep_module.make_plan(str(config), ["rl.kl_coef=0.1,0.2"])


def test_a_run_folder_from_before_the_frontier_section_still_resumes(tmp_path):
    """stage_state compares a checkpoint's config.yaml without the frontier section, which no stage reads."""
    from rlhflab.pipeline import _stage_view

    tree = to_dict(load_config(None, []))
    old = {key: value for key, value in tree.items() if key != "frontier"}
    assert _stage_view(old) == _stage_view(tree)
