"""Atomic writes, atomic folder replacement and the run directory contract."""

import json
from pathlib import Path

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, atomic_dir, atomic_write_text, read_json, write_json


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- atomic_write_text / json ------------------------------------------------------------


def test_atomic_write_creates_parents_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "hello\n")
    assert path.read_text(encoding="utf-8") == "hello\n"
    assert names(path.parent) == ["out.txt"]


def test_atomic_write_replaces_content_whole(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "a much longer first version\n" * 100)
    atomic_write_text(path, "short")
    assert path.read_text(encoding="utf-8") == "short"
    assert names(tmp_path) == ["out.txt"]


def test_atomic_write_unicode(tmp_path):
    path = tmp_path / "u.txt"
    atomic_write_text(path, "naïve café — ☃")
    assert path.read_bytes().decode("utf-8") == "naïve café — ☃"


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # type: ignore[arg-type]  # write() refuses a non-str
    assert path.read_text(encoding="utf-8") == "old"
    assert names(tmp_path) == ["out.txt"]


def test_write_json_round_trip(tmp_path):
    data = {"step": 3, "loss": 1.25, "nested": {"a": [1, 2, None]}, "text": "é"}
    path = tmp_path / "s" / "summary.json"
    write_json(path, data)
    assert read_json(path) == data
    assert path.read_text(encoding="utf-8").endswith("\n")
    assert names(path.parent) == ["summary.json"]


def test_read_json_missing_and_invalid(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        read_json(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(RlhfLabError) as info:
        read_json(bad)
    assert "bad.json" in str(info.value) and "not valid JSON" in str(info.value)


# --- atomic_dir ----------------------------------------------------------------------------


def test_atomic_dir_creates_new_folder(tmp_path):
    target = tmp_path / "deep" / "model"
    with atomic_dir(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        assert not target.exists()  # nothing visible until the body finishes
        (tmp / "weights.bin").write_text("w")
    assert names(target) == ["weights.bin"]
    assert names(target.parent) == ["model"]


def test_atomic_dir_replaces_existing_folder_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old-only.txt").write_text("old")
    (target / "shared.txt").write_text("old")
    with atomic_dir(target) as tmp:
        assert (target / "old-only.txt").exists()  # old contents still there during the body
        (tmp / "shared.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "x").write_text("x")
    assert names(target) == ["shared.txt", "sub"]  # old-only.txt is gone: replaced, not merged
    assert (target / "shared.txt").read_text() == "new"
    assert names(tmp_path) == ["model"]  # no temp or .old folders left


def test_atomic_dir_failure_keeps_old_folder_and_removes_temp(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(target) as tmp:
            (tmp / "partial.bin").write_text("half")
            raise RuntimeError("boom")
    assert names(target) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "old"
    assert names(tmp_path) == ["model"]


def test_atomic_dir_failure_without_old_folder_leaves_nothing(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "partial.bin").write_text("half")
            raise KeyboardInterrupt
    assert not target.exists()
    assert names(tmp_path) == []


def test_atomic_dir_survives_stale_old_folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "v1").write_text("1")
    stale = tmp_path / ".model.old"  # left by a crash between the two renames
    stale.mkdir()
    (stale / "junk").write_text("j")
    with atomic_dir(target) as tmp:
        (tmp / "v2").write_text("2")
    assert names(target) == ["v2"]
    assert names(tmp_path) == ["model"]


# --- RunDir --------------------------------------------------------------------------------


def make_checkpoint(run: RunDir) -> None:
    latest = run.checkpoint_dir / "latest"
    latest.mkdir(parents=True)
    (latest / "state.json").write_text('{"step": 5}')


def test_run_dir_paths(tmp_path):
    run = RunDir(tmp_path / "runs" / "x" / "sft")
    assert run.model_dir == run.path / "model"
    assert run.checkpoint_dir == run.path / "checkpoints"
    assert run.summary_path == run.path / "summary.json"
    assert run.metrics_path == run.path / "metrics.jsonl"


def finished_run(folder: Path) -> RunDir:
    """A finished stage folder holding a model file and a summary."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "w.bin").write_text("old weights")
    (folder / "summary.json").write_text('{"old": true}')
    return RunDir(folder)


def test_prepare_opens_the_partial_folder_beside_the_run(tmp_path):
    run = RunDir(tmp_path / "runs" / "x" / "sft")
    run.prepare(resume=False, overwrite=False)
    assert run.path == tmp_path / "runs" / "x" / "sft.partial"
    assert run.path.is_dir() and names(run.path) == []
    assert not run.final.exists()


def test_prepare_accepts_an_existing_empty_folder(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.final.mkdir()
    run.prepare(resume=False, overwrite=False)
    assert run.path.is_dir()


def test_prepare_refuses_existing_run(tmp_path):
    run = finished_run(tmp_path / "sft")
    with pytest.raises(RlhfLabError) as info:
        run.prepare(resume=False, overwrite=False)
    message = str(info.value)
    assert "finished run" in message and "--overwrite" in message and "--resume" not in message
    assert str(run.final) in message
    assert (run.final / "summary.json").exists()  # nothing deleted


def test_overwrite_keeps_the_finished_run_until_the_new_one_finishes(tmp_path):
    run = finished_run(tmp_path / "sft")
    run.prepare(resume=False, overwrite=True)
    (run.model_dir).mkdir()
    (run.model_dir / "w.bin").write_text("new weights")
    assert (run.final / "model" / "w.bin").read_text() == "old weights"  # still there mid-run
    run.stage_facts = {"key": "k"}
    run.finish({"new": True})
    assert run.path == run.final
    assert (run.final / "model" / "w.bin").read_text() == "new weights"
    assert read_json(run.final / "summary.json") == {"new": True}
    assert read_json(run.final / "stage.json")["key"] == "k" and len(read_json(run.final / "stage.json")["run_id"]) == 32
    assert names(tmp_path) == ["sft"]  # no partial or old folder left


def test_a_failed_rerun_loses_nothing_and_blocks_nothing(tmp_path):
    run = finished_run(tmp_path / "sft")
    run.prepare(resume=False, overwrite=True)
    (run.path / "config.yaml").write_text("bad: config")
    run.discard_failed_start()  # what run_stage does when the stage raises before a checkpoint
    assert names(tmp_path) == ["sft"]
    assert (run.final / "model" / "w.bin").read_text() == "old weights"
    fresh = RunDir(tmp_path / "new")
    fresh.prepare(resume=False, overwrite=False)
    (fresh.path / "config.yaml").write_text("x")  # a failed start killed before cleanup
    again = RunDir(tmp_path / "new")
    again.prepare(resume=False, overwrite=False)  # not "already holds a run"
    assert names(again.path) == []


def test_a_failure_after_a_checkpoint_keeps_it_for_resume(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.prepare(resume=False, overwrite=False)
    make_checkpoint(run)
    run.discard_failed_start()
    assert RunDir(tmp_path / "sft").has_checkpoint(RunDir(tmp_path / "sft").partial)
    with pytest.raises(RlhfLabError, match="interrupted run"):
        RunDir(tmp_path / "sft").prepare(resume=False, overwrite=False)
    resumed = RunDir(tmp_path / "sft")
    resumed.prepare(resume=True, overwrite=False)
    assert resumed.has_checkpoint()


def test_prepare_resume_without_checkpoint_errors(tmp_path):
    run = finished_run(tmp_path / "sft")
    with pytest.raises(RlhfLabError) as info:
        run.prepare(resume=True, overwrite=False)
    assert "Nothing to resume" in str(info.value) and "finished" in str(info.value)
    assert (run.final / "summary.json").exists()


def test_prepare_resume_of_missing_run_errors(tmp_path):
    run = RunDir(tmp_path / "never")
    with pytest.raises(RlhfLabError):
        run.prepare(resume=True, overwrite=False)


def test_leftovers_of_a_killed_checkpoint_save_are_cleaned_when_the_run_opens(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.prepare(resume=False, overwrite=False)
    make_checkpoint(run)
    partial_save = run.checkpoint_dir / ".latest.k2j4x.tmp"  # kill -9 inside atomic_dir
    partial_save.mkdir()
    (partial_save / "state.pt").write_bytes(b"\0" * 1000)
    (run.path / ".metrics.jsonl.abc.tmp").write_text("half")
    RunDir(tmp_path / "sft").prepare(resume=True, overwrite=False)
    assert names(run.checkpoint_dir) == ["latest"]
    assert not (run.path / ".metrics.jsonl.abc.tmp").exists()


def test_a_kill_between_the_renames_of_a_checkpoint_save_restores_the_previous_one(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.prepare(resume=False, overwrite=False)
    make_checkpoint(run)
    (run.checkpoint_dir / "latest").rename(run.checkpoint_dir / ".latest.old")
    RunDir(tmp_path / "sft").prepare(resume=True, overwrite=False)
    assert names(run.checkpoint_dir) == ["latest"]


def test_a_kill_between_the_renames_of_finish_completes_the_swap(tmp_path):
    run = finished_run(tmp_path / "sft")
    run.prepare(resume=False, overwrite=True)
    (run.path / "summary.json").write_text('{"new": true}')
    run.final.rename(tmp_path / ".sft.old")  # finish() was killed here
    RunDir(tmp_path / "sft").recover()
    assert names(tmp_path) == ["sft"] and read_json(tmp_path / "sft" / "summary.json") == {"new": True}
    # killed before the new run finished: the old one comes back
    other = finished_run(tmp_path / "rm")
    other.prepare(resume=False, overwrite=True)
    other.final.rename(tmp_path / ".rm.old")
    RunDir(tmp_path / "rm").recover()
    assert read_json(tmp_path / "rm" / "summary.json") == {"old": True}


def test_runs_dir_that_is_a_file_or_unwritable_is_one_clear_error(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("a file")
    with pytest.raises(RlhfLabError, match="not a folder|in the way"):
        RunDir(blocker / "x" / "sft").prepare(resume=False, overwrite=False)
    with pytest.raises(RlhfLabError, match="Cannot write /proc"):
        RunDir(Path("/proc/rlhflab-test/x/sft")).prepare(resume=False, overwrite=False)


def test_a_full_disk_says_so_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno
    import os

    target = tmp_path / "report.md"
    target.write_text("previous")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RlhfLabError) as info:
        atomic_write_text(target, "new")
    assert "disk is full" in str(info.value) and "was not changed" in str(info.value)
    assert target.read_text() == "previous" and names(tmp_path) == ["report.md"]
    monkeypatch.undo()
    with pytest.raises(RlhfLabError, match="disk is full"):
        with atomic_dir(tmp_path / "ckpt"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert names(tmp_path) == ["report.md"]


def test_a_rust_librarys_full_disk_inside_a_folder_write_is_one_line(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(RlhfLabError) as info:
        with atomic_dir(tmp_path / "model"):  # what safetensors raised when a small tmpfs filled up under it
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(info.value) == (f"Cannot write {tmp_path / 'model'}: the disk is full (No space left on device); "
                               f"nothing was written. Fix that (free space, choose another folder) and run again.")
    assert names(tmp_path) == []
    with pytest.raises(ValueError, match="os error"):  # a library's other errors pass through as they are
        with atomic_dir(tmp_path / "model"):
            raise ValueError("no such thing (os error 999999)")


def test_a_full_disk_while_a_step_log_grows_is_one_line_keeping_its_lines(tmp_path, monkeypatch):
    import builtins
    import errno

    from rlhflab.io import append_line

    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}', '{"step": 2}')
    real_open = builtins.open

    def full(file, mode="r", *args, **kwargs):
        if Path(file) == path and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full)
    with pytest.raises(RlhfLabError, match=r"^Cannot write .*metrics\.jsonl: the disk is full \(No space left on device\); "
                                           r"the lines already in it are kept \(a cut-short last one is dropped on --resume\)\. Fix that"):
        RunDir(tmp_path).log_metrics({"step": 3})
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_has_checkpoint_needs_state_json(tmp_path):
    run = RunDir(tmp_path / "sft")
    (run.checkpoint_dir / "latest").mkdir(parents=True)
    assert not run.has_checkpoint()
    (run.checkpoint_dir / "latest" / "state.json").write_text("{}")
    assert run.has_checkpoint()


def test_metrics_log_read_and_truncate(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.prepare(resume=False, overwrite=False)
    assert run.read_metrics() == []
    records = [
        {"step": 0, "split": "validation", "loss": 3.0},
        {"step": 1, "split": "train", "loss": 2.5},
        {"step": 2, "split": "train", "loss": 2.0},
        {"step": 2, "split": "validation", "loss": 2.2},
        {"step": 3, "split": "train", "loss": 1.5},
        {"step": 4, "split": "train", "loss": 1.0},
    ]
    for record in records:
        run.log_metrics(record)
    assert run.read_metrics() == records
    lines = run.metrics_path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records  # one JSON object per line

    run.truncate_metrics(after_step=2)
    assert run.read_metrics() == records[:4]
    assert names(run.path) == ["metrics.jsonl"]  # no temp file left by the rewrite

    run.log_metrics({"step": 3, "split": "train", "loss": 1.4})  # resumed run appends after the cut
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2, 2, 3]


def test_truncate_metrics_before_first_step_and_without_file(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.prepare(resume=False, overwrite=False)
    run.truncate_metrics(after_step=10)  # no file yet: writes an empty one
    assert run.read_metrics() == []
    run.log_metrics({"step": 5})
    run.truncate_metrics(after_step=4)
    assert run.read_metrics() == []
    assert run.metrics_path.read_text(encoding="utf-8") == ""


def test_read_metrics_ignores_blank_lines(tmp_path):
    run = RunDir(tmp_path / "sft")
    run.prepare(resume=False, overwrite=False)
    run.metrics_path.write_text('{"step": 1}\n\n{"step": 2}\n', encoding="utf-8")
    assert run.read_metrics() == [{"step": 1}, {"step": 2}]


def test_atomic_writes_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    import os
    import stat

    from rlhflab.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644
