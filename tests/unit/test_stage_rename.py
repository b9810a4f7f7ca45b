"""The RL stage is `rl`; its old name, ppo, still works (rlhflab/stages/registry.py RENAMED): in `stages:`,
as the command `rlhflab ppo`, in run:ppo references, and as the folder of a run made before the rename
(runs/<name>/ppo), which everything that reads the RL stage finds where it is. Each says so in one note.
No model runs here (tests/stages/test_pipeline.py runs a pipeline on such a folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhflab import config as config_module
from rlhflab.cli import build_parser, parse_args
from rlhflab.config import Config, dump_yaml, load_config
from rlhflab.errors import RlhfLabError
from rlhflab.stages.registry import STAGES, stage_dir, stage_key
from tests.helpers import cli_run

QUICK = Path(__file__).resolve().parents[2] / "configs" / "quick.yaml"


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees the notes its own calls print (they are printed once per process)."""
    monkeypatch.setattr(config_module, "_NOTED", set())


def notes(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]


def finished(folder: Path, run_id: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}")
    (folder / "stage.json").write_text(json.dumps({"key": "k", "run_id": run_id}))
    return folder


def test_ppo_in_stages_is_rl_in_yaml_overrides_and_python_with_one_note(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("stages: [sft, reward, ppo, evaluate]\n")
    assert load_config(path).stages == ["sft", "reward", "rl", "evaluate"]
    assert load_config(None, ["stages=[ppo,evaluate]"]).stages == ["rl", "evaluate"]
    assert Config(stages=["ppo"]).stages == ["rl"]
    assert notes(capsys) == ["note: 'stages: [ppo]' is now 'stages: [rl]'; the old name still works."]
    assert Config().stages == ["sft", "reward", "rl", "evaluate"] and "ppo" not in STAGES
    assert "- ppo" not in dump_yaml(load_config(path))  # the resolved config speaks the new name


def test_the_ppo_command_runs_the_rl_stage_with_one_note(tmp_path, capsys, monkeypatch):
    from rlhflab.stages import common

    assert parse_args(["ppo", "name=a", "--resume"]).command == "ppo"
    assert "rl (ppo)" in build_parser().format_help()  # listed as the rl command's alias
    ran = []

    def run_stage(name, cfg, **kwargs):
        ran.append(name)
        raise RlhfLabError("stopped before training")

    monkeypatch.setattr(common, "run_stage", run_stage)
    result = cli_run(capsys, "ppo", f"runs_dir={tmp_path}", "runtime.device=cpu")
    assert ran == ["rl"] and result.returncode == 2
    assert result.stderr.splitlines() == ["note: 'rlhflab ppo' is now 'rlhflab rl'; the old name still works.",
                                          "error: stopped before training"]


def test_run_ppo_references_name_the_rl_stage_with_one_note(tmp_path, capsys):
    from rlhflab.api import _config
    from rlhflab.sweep import make_plan

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=x", "evaluate.models={sft: run:sft, ppo: run:ppo}",
                             "overopt.run=run:ppo"])
    assert cfg.evaluate.models["ppo"] == cfg.overopt.run == str(tmp_path / "x" / "rl")
    assert notes(capsys) == ["note: 'run:ppo' is now 'run:rl'; the old name still works."]
    api, _ = _config({"runs_dir": str(tmp_path), "name": "x", "rl": {"policy": "run:ppo"}}, None,
                     lambda prompts, responses: [0.0] * len(prompts), None, None, None, ["a prompt"])
    assert api.rl.policy == str(tmp_path / "x" / "rl")
    plan = make_plan(None, [f"runs_dir={tmp_path}", "name=base", "stages=[sft,reward,ppo,evaluate]",
                            "evaluate.models={sft: run:sft, ppo: run:ppo}", "rl.kl_coef=0.1,0.2"])
    assert plan.configs["kl_coef-0.1"].evaluate.models == {
        "sft": str(tmp_path / "base" / "sft"), "ppo": str(tmp_path / "base" / "sweep" / "kl_coef-0.1" / "rl")}
    finished(tmp_path / "x" / "ppo", "old")  # a run made before the rename: run:rl and run:ppo are its folder
    assert load_config(None, [f"runs_dir={tmp_path}", "name=x", "overopt.run=run:rl"]).overopt.run == \
        str(tmp_path / "x" / "ppo")


@pytest.mark.parametrize("present, found", [
    ((), "rl"), (("ppo",), "ppo"), (("ppo.partial",), "ppo"), ((".ppo.old",), "ppo"),
    (("rl", "ppo"), "rl"), (("rl.partial", "ppo"), "rl"),
])
def test_the_rl_folder_is_rl_unless_only_a_run_from_before_the_rename_is_there(tmp_path, capsys, present, found):
    for name in present:
        (tmp_path / name).mkdir()
    assert stage_dir(tmp_path, "rl") == stage_dir(tmp_path, "rl") == tmp_path / found
    assert stage_dir(tmp_path, "sft") == tmp_path / "sft"
    expected = [f"note: {tmp_path / 'ppo'} is this run's rl stage from before it was renamed 'rl'; it is used where "
                f"it is (new runs write {tmp_path / 'rl'})."]
    assert notes(capsys) == (expected if found == "ppo" else [])


def test_the_stages_that_read_rl_keep_their_keys_whatever_its_folder_is_called(tmp_path):
    cfg = load_config(QUICK, [f"runs_dir={tmp_path}", "stages=[sft,reward,rl,evaluate,overopt]", "evaluate.gold.v=x.py:f"])
    root = tmp_path / cfg.name
    for stage in ("sft", "reward", "ppo"):
        finished(root / stage, f"{stage}-id")
    old = {name: stage_key(cfg, name) for name in ("evaluate", "overopt")}
    assert old["evaluate"]["references"]["<this run>/ppo"] == "run:ppo-id"  # the label keys were first written with
    (root / "ppo").rename(root / "rl")
    assert {name: stage_key(cfg, name) for name in ("evaluate", "overopt")} == old


def test_resume_continues_a_paused_run_in_its_old_folder(tmp_path):
    from rlhflab.stages.common import open_run_dir

    cfg = load_config(QUICK, [f"runs_dir={tmp_path}"])
    paused = tmp_path / cfg.name / "ppo.partial"
    (paused / "checkpoints" / "latest").mkdir(parents=True)
    (paused / "checkpoints" / "latest" / "state.json").write_text("{}")
    (paused / "config.yaml").write_text(dump_yaml(cfg).replace("- rl\n", "- ppo\n"))  # written under the old name
    (paused / "stage.json").write_text(json.dumps(stage_key(cfg, "rl")))
    run_dir = open_run_dir(cfg, "rl", resume=True, overwrite=False)
    assert (run_dir.final, run_dir.path) == (tmp_path / cfg.name / "ppo", paused)
    assert sorted(p.name for p in paused.parent.iterdir()) == ["ppo.partial"]


def test_evaluate_and_overopt_read_the_old_folder(tmp_path, capsys):
    from rlhflab.stages import evaluate, overopt

    cfg = load_config(None, [f"runs_dir={tmp_path}", "name=x"])
    for stage in ("sft", "ppo"):
        (tmp_path / "x" / stage / "model").mkdir(parents=True)
    assert evaluate.model_sources(cfg) == {"sft": str(tmp_path / "x" / "sft"), "rl": str(tmp_path / "x" / "ppo")}
    assert overopt.rl_run(cfg) == tmp_path / "x" / "ppo"
    assert len(notes(capsys)) == 1


def test_report_compare_and_frontier_read_a_run_made_before_the_rename(tmp_path):
    from rlhflab.eval.compare import compare
    from rlhflab.eval.frontier import frontier
    from rlhflab.eval.report import build_report
    from tests.report.test_compare import rl_run
    from tests.report.test_frontier import tuned
    from tests.report.test_report import write_rl

    root = tmp_path / "runs" / "demo"
    write_rl(root)
    (root / "rl").rename(root / "ppo")
    (root / "ppo" / "config.yaml").write_text("name: demo\nstages: [sft, reward, ppo]\n")
    html, md = build_report(root)
    text = md.read_text()
    assert "1.056" in text and f"Not run: {root / 'rl'}" not in text and "Not run: " in text  # sft and reward
    assert "<summary>ppo/config.yaml</summary>" in html.read_text()
    rl_run(tmp_path / "runs" / "a" / "ppo", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    rl_run(tmp_path / "runs" / "b" / "ppo", steps=3, evals=[(0, 0.0, 0.5), (3, 3.0, 0.7)], seconds=6.0)
    result = compare([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b" / "ppo")], tmp_path / "compare")
    assert [row[:2] for row in result.data["rows"]] == [["a", "ppo"], ["b", "ppo"]]
    tuned(tmp_path / "runs" / "t" / "ppo", seed=0, kl=1.0, p=0.6)
    points = frontier([str(tmp_path / "runs" / "t")], tmp_path / "frontier").data["points"]
    assert {p["method"] for p in points} == {"ppo", "start"}


def test_a_sweep_links_and_reads_a_base_runs_old_rl_folder(tmp_path):
    from rlhflab.sweep import _headline, _link
    from tests.report.test_report import write_rl

    root = tmp_path / "base"
    write_rl(root)
    (root / "rl").rename(root / "ppo")
    point = root / "sweep" / "p"
    point.mkdir(parents=True)
    assert _link(point, "rl", root) and _link(point, "rl", root)  # the second time: the same link
    assert os.readlink(point / "ppo") == str(Path("..") / ".." / "ppo") and not (point / "rl").exists()
    assert stage_dir(point, "rl") == point / "ppo" and "0.549 -> 0.900" in _headline(point)
