"""Faults users found (issue 10): run names, argument order, unwritable places, YAML positions,
RLHFLAB_DEBUG, checks before any stage runs (SIGTERM: test_cli_interrupt.py). Each case asserts what the user now gets."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from rlhflab.cli import parse_args
from tests.helpers import assert_user_error, finish, start_cli


def rlhflab(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return finish(start_cli(cwd, *args, env=env))


@pytest.mark.parametrize("argv", [
    ["rl", "--config", "configs/quick.yaml", "--overwrite", "name=a"],
    ["rl", "name=a", "--config", "configs/quick.yaml", "--overwrite"],
    ["ppo", "--overwrite", "name=a", "--no-progress", "ppo.steps=3", "--config", "configs/quick.yaml"],  # old names
])
def test_flags_and_overrides_in_any_order(argv):
    args = parse_args(argv)
    assert args.config == "configs/quick.yaml" and args.overwrite and "name=a" in args.overrides


def test_pipeline_and_config_take_overrides_after_flags_too():
    assert parse_args(["pipeline", "--config", "c.yaml", "--force", "rl", "name=b"]).overrides == ["name=b"]
    assert parse_args(["config", "--config", "c.yaml", "seed=3", "name=b"]).overrides == ["seed=3", "name=b"]


def test_an_unknown_flag_is_still_refused():
    with pytest.raises(SystemExit) as info:
        parse_args(["sft", "--frobnicate", "name=a"])
    assert info.value.code == 2


@pytest.mark.parametrize("name", ["../../x", "/tmp/somewhere", "a/b", "..", ".hidden", "x\\y"])
def test_a_run_name_is_a_name_not_a_path(tmp_path, name):
    result = rlhflab(tmp_path, "config", f"name={name}")
    assert_user_error(result, "name must be a plain folder name", repr(name))


def test_a_yaml_syntax_error_names_the_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text("seed: 1\nsft:\n  epochs: 2\n  batch_size: [8, 16\nppo: {}\n")
    line = assert_user_error(rlhflab(tmp_path, "config", "--config", "bad.yaml"), "bad.yaml", "line ")
    assert "column" in line


def test_runs_dir_that_is_a_file_or_unwritable_is_one_line(tmp_path, reviews_csv, tiny_llama_dir):
    (tmp_path / "afile").write_text("x")
    common = ["sft", f"data.source={reviews_csv}", "data.per_class=30", f"sft.model={tiny_llama_dir}"]
    assert_user_error(rlhflab(tmp_path, *common, "runs_dir=afile"), "Cannot write", "afile")
    assert_user_error(rlhflab(tmp_path, *common, "runs_dir=/proc/rlhflab"), "Cannot write /proc/rlhflab")
    from tests.report.test_report import write_sft

    write_sft(tmp_path / "runs" / "r")
    (tmp_path / "out-file").write_text("x")
    result = rlhflab(tmp_path, "report", "runs/r", "--out", "out-file")
    assert_user_error(result, "Cannot write out-file", "in the way")


def test_rlhflab_debug_shows_the_traceback_of_a_user_error(tmp_path):
    quiet = rlhflab(tmp_path, "config", "seed=x")
    assert_user_error(quiet, "seed")
    loud = rlhflab(tmp_path, "config", "seed=x", env={"RLHFLAB_DEBUG": "1"})
    assert loud.returncode == 2 and "Traceback" in loud.stderr and loud.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_a_bad_late_setting_fails_before_any_stage_runs(tmp_path):
    """Resolve before running: a bad rl setting fails in a second, not after SFT and the reward model."""
    started = time.time()
    result = rlhflab(tmp_path, "pipeline", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "quick.yaml"),
                     "rl.minibatch_size=16", "runs_dir=runs")
    assert_user_error(result, "rl.minibatch_size must not exceed batch_size")
    assert time.time() - started < 30 and not (tmp_path / "runs").exists()
