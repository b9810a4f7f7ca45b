"""Small command-line faults (issue 19, §6): a closed output pipe ends quietly, a stage folder
given to `report` names the run folder, `--key=value` suggests `key=value`; and a user error on
a non-main process of a launch waits for the main process to say it (§5)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import assert_user_error, start_cli


def rlhflab(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    process = start_cli(cwd, *args)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def into_closed_pipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`rlhflab ARGS | head -0`, deterministic: the pipe's reading end is closed before rlhflab writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "rlhflab.cli", *args], cwd=cwd, stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    finally:
        os.close(write)


def test_a_closed_output_pipe_ends_quietly_with_status_141(tmp_path):
    result = into_closed_pipe(tmp_path, "config")
    assert result.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored" at exit
    assert result.returncode == 141  # 128 + SIGPIPE, as for `yes | head -1`


def test_help_into_a_closed_pipe_ends_quietly(tmp_path):
    result = into_closed_pipe(tmp_path, "--help")
    assert result.stderr == ""
    # argparse swallows the failed write of a help text longer than the buffer and exits 0;
    # a shorter one fails at rlhflab's flush (141).
    assert result.returncode in (0, 141)


@pytest.mark.parametrize("inner", ["rl", "sft/model", "rl.partial", "report", "human/blind-rating"])
def test_report_on_a_folder_inside_a_run_names_the_run_folder(tmp_path, inner):
    rl = tmp_path / "runs" / "default" / "rl"
    rl.mkdir(parents=True)
    (rl / "summary.json").write_text("{}")
    (tmp_path / "runs" / "default" / inner).mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / "default" / "sft").mkdir(exist_ok=True)
    result = rlhflab(tmp_path, "report", f"runs/default/{inner}")
    line = assert_user_error(result, f"runs/default/{inner} is inside the run runs/default: pass the run folder, "
                                     f"runs/default", "`rlhflab report runs/default`")
    assert "Run a stage first" not in line
    assert not (rl / "report").exists() and not (tmp_path / "runs" / "default" / inner / "report").exists()


def test_a_run_named_like_a_stage_is_still_a_run_folder(tmp_path):
    """runs/ppo (a run called ppo, the RL stage's old name, with stage folders inside) is not mistaken for a
    stage folder."""
    (tmp_path / "runs" / "ppo" / "sft").mkdir(parents=True)
    result = rlhflab(tmp_path, "report", "runs/ppo")
    assert "pass the run folder" not in result.stderr


@pytest.mark.parametrize("args, suggestion", [
    (["config", "--sft.epochs=3"], "sft.epochs=3"),
    (["config", "name=x", "--sft.epochs", "3"], "sft.epochs=3"),
    (["sft", "--name=demo"], "name=demo"),
    (["pipeline", "-ppo.steps=4"], "ppo.steps=4"),
])
def test_a_dashed_override_suggests_the_key_value_spelling(tmp_path, args, suggestion):
    result = rlhflab(tmp_path, *args)
    line = assert_user_error(result, f"unrecognized argument {args[-1] if '=' in args[-1] else args[-2]}",
                             f"write {suggestion}")
    assert line.endswith(f"write {suggestion}") and result.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_an_unknown_flag_that_is_no_setting_stays_argparse_usage(tmp_path):
    result = rlhflab(tmp_path, "config", "--frobnicate")
    assert result.returncode == 2 and "unrecognized arguments: --frobnicate" in result.stderr
    assert "write" not in result.stderr


def test_a_non_main_process_waits_for_the_main_one_then_says_an_error_it_alone_hit(capsys, monkeypatch):
    """Under a launcher only the main process prints a user error; another one exiting first could get
    the main one killed before it prints. It waits (the launcher ends it once the main one has exited),
    and says the error itself only when no launcher ended it."""
    from rlhflab import cli

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "NON_MAIN_ERROR_WAIT_S", 0.5)
    started = time.monotonic()
    code = cli.main(["config", "sft.epochz=3"])
    waited = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and waited >= 0.5
    assert err.startswith("error (process 1): ") and "sft.epochz" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("RANK", "0")  # the main process says it at once, as before
    started = time.monotonic()
    assert cli.main(["config", "sft.epochz=3"]) == 2 and time.monotonic() - started < 0.5
    assert capsys.readouterr().err.startswith("error: ")
