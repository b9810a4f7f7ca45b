"""A run has one writer (a lock beside runs/<name>, taken over from a dead process), and a link in a
handed run folder is refused before anything is cleaned or renamed through it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, lock_path, run_lock
from tests.helpers import hold_lock



def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- one writer -------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_process_that_holds_the_run(tmp_path):
    run = tmp_path / "runs" / "x"
    holder = hold_lock(run)
    try:
        with pytest.raises(RlhfLabError) as refused:
            with run_lock(run):
                pytest.fail("two writers held the same run")
        assert str(refused.value).startswith(f"{run} is in use: process {holder.pid} (rlhflab ")
        assert "one writer at a time" in str(refused.value)
        with run_lock(tmp_path / "runs" / "y"):  # another run of the same runs folder is free
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_taken_over_and_leaves_nothing_behind(tmp_path):
    run = tmp_path / "runs" / "x"
    holder = hold_lock(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(run).read_text().startswith(f"{holder.pid} ")  # kill -9 left its file: a stale lock
    with run_lock(run):
        assert lock_path(run).read_text().startswith(f"{os.getpid()} ")
        with run_lock(run):  # the same process re-enters (pipeline -> stage)
            pass
        assert lock_path(run).exists()
    assert not lock_path(run).exists()
    stale = tmp_path / "other" / ".x.lock"
    stale.parent.mkdir()
    stale.write_text("999999999 rlhflab pipeline\n")  # a dead pid's file, no flock: free
    with run_lock(stale.parent / "x"):
        pass


def test_a_waiting_writer_gets_the_run_when_the_holder_stops(tmp_path):
    run = tmp_path / "runs" / "x"
    holder = hold_lock(run, seconds=1.0)
    told = []
    started = time.monotonic()
    with run_lock(run, wait=60, waiting=told.append):
        assert time.monotonic() - started < 30
    assert told == [f"process {holder.pid} (rlhflab {run} 1.0)"]
    holder.wait()


def test_a_lock_on_a_new_runs_folder_leaves_no_folder_when_the_command_fails_early(tmp_path):
    with pytest.raises(ValueError):
        with run_lock(tmp_path / "runs" / "x"):
            raise ValueError
    assert not (tmp_path / "runs").exists()


def test_a_second_cli_writer_is_one_line_and_leaves_the_first_writers_work_alone(tmp_path, capsys):
    from tests.helpers import assert_user_error, cli_run

    runs = tmp_path / "runs"
    working = runs / "x" / "sft.partial"
    working.mkdir(parents=True)
    (working / "metrics.jsonl").write_text('{"step": 1, "split": "train"}\n')  # the holder's run, no checkpoint yet
    holder = hold_lock(runs / "x")
    try:
        for command in ("pipeline", "sft"):
            result = cli_run(capsys, command, f"runs_dir={runs}", "name=x", "sft.model=/nowhere/model")
            assert_user_error(result, f"{runs / 'x'} is in use: process {holder.pid}")
        assert files(working) == {"metrics.jsonl": b'{"step": 1, "split": "train"}\n'}
    finally:
        holder.kill()
        holder.wait()


# -- links in a handed run folder ---------------------------------------------------------------


@pytest.fixture
def linked_checkpoints(tmp_path) -> tuple[Path, Path]:
    """runs/x/sft (finished) whose checkpoints/ links to a folder outside the run, holding files
    that leftover cleaning would delete (.tmp) or rename (.old)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".notes.txt.123.tmp").write_text("someone's file")
    (elsewhere / ".thesis.old").write_text("someone's draft")
    (elsewhere / ".data.old").mkdir()
    (elsewhere / ".data.old" / "table.csv").write_text("a,b\n")
    sft = tmp_path / "runs" / "x" / "sft"
    sft.mkdir(parents=True)
    (sft / "summary.json").write_text("{}")
    (sft / "stage.json").write_text(json.dumps({"key": "k", "run_id": "r"}))
    os.symlink(elsewhere, sft / "checkpoints", target_is_directory=True)
    return sft, elsewhere


def test_a_link_inside_a_stage_is_refused_before_anything_is_cleaned_through_it(linked_checkpoints):
    sft, elsewhere = linked_checkpoints
    before = files(elsewhere)
    for act in (lambda run: run.recover(), lambda run: run.prepare(resume=False, overwrite=True),
                lambda run: run.prepare(resume=True, overwrite=False)):
        with pytest.raises(RlhfLabError) as refused:
            act(RunDir(sft))
        assert str(refused.value).startswith(f"{sft / 'checkpoints'} is a symbolic link (to {elsewhere})")
        assert "Remove the link" in str(refused.value)
    assert files(elsewhere) == before and sorted(p.name for p in elsewhere.iterdir()) == [
        ".data.old", ".notes.txt.123.tmp", ".thesis.old"]
    assert not (sft.parent / "sft.partial").exists()


def test_links_in_the_partial_folder_and_stage_links_a_sweep_did_not_make_are_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "latest").mkdir(parents=True)
    (elsewhere / "latest" / "state.json").write_text("{}")
    partial = tmp_path / "runs" / "x" / "rl.partial"
    (partial / "checkpoints").mkdir(parents=True)
    os.symlink(elsewhere / "latest", partial / "checkpoints" / "latest", target_is_directory=True)
    with pytest.raises(RlhfLabError, match=r"rl.partial/checkpoints/latest is a symbolic link"):
        RunDir(partial.with_name("rl")).prepare(resume=True, overwrite=False)
    run = RunDir(partial.with_name("rl"))
    run.discard_failed_start()  # what a failed command does: the refused folder is not removed either
    assert (partial / "checkpoints" / "latest").is_symlink()
    # a stage that is itself a link: only `<base>/sweep/<point>/<stage> -> ../../<stage>` is a sweep's
    os.symlink(elsewhere, tmp_path / "runs" / "x" / "sft", target_is_directory=True)
    os.symlink(Path("..") / ".." / "reward", tmp_path / "runs" / "x" / "reward", target_is_directory=True)
    for stage in ("sft", "reward"):
        with pytest.raises(RlhfLabError, match=f"runs/x/{stage} is a symbolic link"):
            RunDir(tmp_path / "runs" / "x" / stage).recover()
    assert files(elsewhere) == {"latest/state.json": b"{}"}


def test_a_pipeline_on_a_run_whose_checkpoints_link_elsewhere_exits_2_and_touches_nothing(linked_checkpoints, capsys):
    from tests.helpers import assert_user_error, cli_run

    sft, elsewhere = linked_checkpoints
    before = files(elsewhere)
    runs = sft.parents[1]
    result = cli_run(capsys, "pipeline", f"runs_dir={runs}", "name=x", "sft.model=/nowhere/model")
    assert_user_error(result, f"{sft / 'checkpoints'} is a symbolic link (to {elsewhere})")
    assert files(elsewhere) == before
    assert sorted(p.name for p in elsewhere.iterdir()) == [".data.old", ".notes.txt.123.tmp", ".thesis.old"]


def test_a_lock_file_that_links_elsewhere_is_refused_and_its_target_untouched(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    os.symlink(victim, lock_path(runs / "colleague"))
    with pytest.raises(RlhfLabError, match=r"\.colleague\.lock is a symbolic link \(to .*victim.txt\)"):
        with run_lock(runs / "colleague"):
            pass
    assert victim.read_text() == "keep me\n"
    assert lock_path(runs / "colleague").is_symlink()


def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    os.mkfifo(lock_path(runs / "x"))
    with pytest.raises(RlhfLabError, match=r"\.x\.lock is not a regular file"):
        with run_lock(runs / "x"):
            pass


def test_a_run_folder_that_is_a_link_is_refused_and_nothing_is_cleaned_through_it(tmp_path, capsys):
    from tests.helpers import assert_user_error, cli_run

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "sft").mkdir(parents=True)
    (elsewhere / "sft" / ".notes.tmp").write_text("notes")
    (elsewhere / "sft" / ".model.old").mkdir()
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(elsewhere, runs / "shared", target_is_directory=True)
    before = files(elsewhere)
    with pytest.raises(RlhfLabError, match=r"runs/shared is a symbolic link"):
        RunDir(runs / "shared" / "sft").recover()
    result = cli_run(capsys, "sft", f"runs_dir={runs}", "name=shared", "sft.model=/nowhere/model")
    assert_user_error(result, f"{runs / 'shared'} is a symbolic link (to {elsewhere})")
    assert files(elsewhere) == before
    assert sorted(p.name for p in (elsewhere / "sft").iterdir()) == [".model.old", ".notes.tmp"]
