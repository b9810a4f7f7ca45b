"""`rlhflab pipeline` on tiny in-test models: every stage, skipping, --force, resuming."""

from __future__ import annotations

import copy as copy_module
import csv
import dataclasses
import shutil
from pathlib import Path

import pytest

from rlhflab import pipeline
from rlhflab.config import Config, DataConfig, EvaluateConfig, PpoConfig, RewardConfig, SftConfig
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.engine import loop as engine_loop
from tests.helpers import StopAt
from tests.helpers import FP32


def make_config(root, llama, bert, reviews_csv, **ppo_fields) -> Config:
    ppo = dict(steps=2, batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=6, eval_prompts=8, eval_every=2,
               checkpoint_every=1)
    ppo.update(ppo_fields)
    return Config(runtime=FP32,
        name="tiny", seed=0, runs_dir=str(root / "runs"),
        data=DataConfig(source=str(reviews_csv), per_class=30),
        sft=SftConfig(model=str(llama), max_length=24, epochs=1, batch_size=8),
        reward=RewardConfig(model=str(bert), trainable="all", max_length=24, epochs=1, batch_size=8, learning_rate=1e-3),
        ppo=PpoConfig(**ppo),
        evaluate=EvaluateConfig(prompts=6, batch_size=6),
    )


def run_pipeline(cfg, **kwargs) -> tuple:
    lines: list[str] = []
    report = pipeline.run(cfg, progress=False, echo=lines.append, **kwargs)
    return report, lines


def ran(lines: list[str]) -> list[str]:
    return [line.split()[0] for line in lines if " done in " in line and not line.startswith("report")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """One full pipeline run; each test works on its own copy of the run directories."""
    from tests.helpers import synthetic_reviews

    root = tmp_path_factory.mktemp("pipeline")
    reviews = root / "reviews.csv"
    with open(reviews, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *synthetic_reviews(30)])
    cfg = make_config(root, tiny_llama_dir, tiny_bert_dir, reviews)
    report, lines = run_pipeline(cfg)
    return cfg, report, lines


@pytest.fixture
def finished(first_run, tmp_path):
    cfg, report, lines = first_run
    shutil.copytree(cfg.runs_dir, tmp_path / "runs")
    copy = dataclasses.replace(copy_module.deepcopy(cfg), runs_dir=str(tmp_path / "runs"))
    return copy, tmp_path / "runs" / report.relative_to(cfg.runs_dir), lines


def test_the_pipeline_runs_every_stage_and_writes_the_report(finished):
    cfg, report, lines = finished
    assert ran(lines) == ["sft", "reward", "rl", "evaluate"]
    root = report.parents[1]
    for stage in ("sft", "reward", "rl", "evaluate"):
        assert (root / stage / "summary.json").exists(), stage
    assert report.name == "report.html" and report.exists() and (report.parent / "report.md").exists()
    html = report.read_text()
    for heading in ("SFT", "Reward model", "PPO", "Evaluation"):
        assert heading in html
    done = [line for line in lines if " done in " in line]
    assert "validation perplexity" in done[0] and "accuracy" in done[1] and "KL" in done[2] and "sft" in done[3]


def test_a_second_run_skips_what_is_up_to_date_and_force_reruns_from_a_stage(finished, monkeypatch):
    cfg, _, _ = finished
    _, lines = run_pipeline(cfg)
    assert ran(lines) == [] and all("up to date" in line for line in lines[:4])
    _, lines = run_pipeline(cfg, force="rl")
    assert ran(lines) == ["rl", "evaluate"]
    with pytest.raises(RlhfLabError, match="--force takes one of"):
        run_pipeline(cfg, force="nonsense")


def test_a_changed_setting_reruns_its_stage_and_the_ones_after_only(finished):
    cfg, _, _ = finished
    cfg.ppo.learning_rate = 5e-5
    _, lines = run_pipeline(cfg)
    assert ran(lines) == ["rl", "evaluate"]
    cfg.reward.learning_rate = 5e-4
    _, lines = run_pipeline(cfg)
    assert ran(lines) == ["reward", "rl", "evaluate"]


def test_an_interrupted_pipeline_resumes_inside_the_stage_it_stopped_in(finished, monkeypatch):
    cfg, _, _ = finished
    cfg.ppo.steps = 3
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_pipeline(cfg)
    monkeypatch.undo()
    assert pipeline.stage_state(cfg, "rl") == "partial"
    _, lines = run_pipeline(cfg)
    assert "rl        resuming ..." in lines
    assert ran(lines) == ["rl", "evaluate"]


def test_a_stage_rerun_on_its_own_makes_the_stages_that_read_it_stale(finished):
    """`rlhflab sft --overwrite` then `rlhflab pipeline`: PPO and evaluate were trained from the old SFT model."""
    from rlhflab.stages.common import run_stage

    cfg, _, _ = finished
    run_stage("sft", cfg, overwrite=True, progress=False)
    _, lines = run_pipeline(cfg)
    assert ran(lines) == ["rl", "evaluate"]  # reward does not read SFT: still up to date
    assert "reward    up to date" in lines[1]


def test_changed_data_bytes_make_every_stage_that_read_them_stale(finished):
    """Flipping every label keeps the file's name and size; the content decides."""
    cfg, _, _ = finished
    path = Path(cfg.data.source)
    rows = list(csv.reader(path.open(encoding="utf-8")))
    flipped = [rows[0], *([text, str(1 - int(label))] for text, label in rows[1:])]
    copy = path.with_name("flipped.csv")
    with open(copy, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(flipped)
    cfg.data.source = str(copy)  # the test's own copy: the shared file stays as it was
    _, lines = run_pipeline(cfg)
    assert ran(lines) == ["sft", "reward", "rl", "evaluate"]
    size = copy.stat().st_size
    with open(copy, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)  # the same size, other labels
    assert copy.stat().st_size == size
    _, lines = run_pipeline(cfg)
    assert ran(lines) == ["sft", "reward", "rl", "evaluate"]


def test_a_typo_in_a_rerun_keeps_the_finished_stage(finished, tmp_path):
    """A rerun with a model folder that is not a model fails and leaves runs/<name>/sft as it was."""
    cfg, _, _ = finished
    sft_dir = Path(cfg.runs_dir) / cfg.name / "sft"
    before = sorted(p.relative_to(sft_dir) for p in sft_dir.rglob("*"))
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    good_model = cfg.sft.model
    cfg.sft.model = str(not_a_model)
    with pytest.raises(RlhfLabError):
        run_pipeline(cfg)
    assert sorted(p.relative_to(sft_dir) for p in sft_dir.rglob("*")) == before
    assert not sft_dir.with_name("sft.partial").exists()
    cfg.sft.model = good_model
    _, lines = run_pipeline(cfg)
    assert ran(lines) == []  # nothing retrained


def test_a_run_made_before_the_rl_stage_was_renamed_stays_up_to_date_in_its_ppo_folder(finished, capsys):
    """runs/<name>/ppo (the RL stage's folder before it was `rl`) is this run's RL stage: nothing reruns,
    it is not moved, one note says so; `--force ppo` and `stages: [..., ppo]` still name the stage."""
    cfg, _, _ = finished
    root = Path(cfg.runs_dir) / cfg.name
    (root / "rl").rename(root / "ppo")  # what a finished run made before the rename holds
    _, lines = run_pipeline(cfg)
    assert ran(lines) == [] and "rl        up to date" in lines[2]
    assert not (root / "rl").exists()
    assert [line for line in capsys.readouterr().err.splitlines() if "ppo" in line] == [
        f"note: {root / 'ppo'} is this run's rl stage from before it was renamed 'rl'; it is used where it is "
        f"(new runs write {root / 'rl'})."]
    old = dataclasses.replace(cfg, stages=["sft", "reward", "ppo", "evaluate"])
    assert old.stages == cfg.stages
    _, lines = run_pipeline(old, force="ppo")
    assert ran(lines) == ["rl", "evaluate"]  # rewritten in place: the old folder, a new run id
    assert (root / "ppo" / "summary.json").exists() and not (root / "rl").exists()
