"""A sweep point links the stages its points share (`<point>/sft -> ../../sft`): nothing a point's
RunDir does may delete, clean or rename anything through that link in the base run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.fingerprint import fingerprint
from rlhflab.io import RunDir


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    """runs/base/sft (finished, with a leftover temp file a killed write could leave) and a point linking to it."""
    base = tmp_path / "runs" / "base" / "sft"
    (base / "model").mkdir(parents=True)
    (base / "model" / "weights.bin").write_bytes(b"weights")
    (base / "summary.json").write_text("{}")
    (base / "stage.json").write_text(json.dumps({"key": "k", "run_id": "abc"}))
    (base / ".summary.json.123.tmp").write_text("half")
    point = tmp_path / "runs" / "base" / "sweep" / "p1"
    point.mkdir(parents=True)
    os.symlink(Path("..") / ".." / "sft", point / "sft", target_is_directory=True)
    return base, point / "sft"


def test_the_fingerprint_of_a_linked_stage_is_the_shared_run(linked):
    base, link = linked
    assert fingerprint(str(link)) == fingerprint(str(base)) == "run:abc"
    assert RunDir(link).is_finished()


def test_recovering_a_linked_stage_leaves_the_base_run_alone(linked):
    base, link = linked
    before = contents(base)
    RunDir(link).recover()
    assert contents(base) == before  # the leftover is the base run's to clean, not the point's


def test_a_new_run_in_the_point_replaces_the_link_and_keeps_the_shared_stage(linked):
    base, link = linked
    before = contents(base)
    run_dir = RunDir(link)
    with pytest.raises(RlhfLabError, match="links to .* shares"):
        run_dir.prepare(resume=False, overwrite=False)
    run_dir.prepare(resume=False, overwrite=True)
    (run_dir.path / "model").mkdir()
    (run_dir.path / "model" / "weights.bin").write_bytes(b"the point's own")
    assert link.is_symlink() and contents(base) == before  # until the new run finishes, the link stays
    run_dir.finish({"steps": 1})
    assert not link.is_symlink() and (link / "model" / "weights.bin").read_bytes() == b"the point's own"
    assert contents(base) == before
    assert sorted(p.name for p in link.parent.iterdir()) == ["sft"]  # no .sft.old link left behind


def test_a_failed_start_in_the_point_keeps_the_link_and_the_shared_stage(linked):
    base, link = linked
    before = contents(base)
    run_dir = RunDir(link)
    run_dir.prepare(resume=False, overwrite=True)
    run_dir.discard_failed_start()
    assert link.is_symlink() and contents(base) == before


def test_a_kill_between_the_renames_of_finish_is_recovered_without_touching_the_base(linked):
    """`finish` moved the link to .sft.old and was killed before the partial run took its place."""
    base, link = linked
    before = contents(base)
    partial = link.with_name("sft.partial")
    partial.mkdir()
    (partial / "summary.json").write_text("{}")
    os.replace(link, link.with_name(".sft.old"))
    RunDir(link).recover()
    assert not link.is_symlink() and (link / "summary.json").exists()
    assert not link.with_name(".sft.old").is_symlink() and contents(base) == before
