"""`rlhflab rate` never writes through a symbolic link in a handed run (issue 19 follow-up): a run's
`human/` or `human/<task>/` that is a link refuses `rate summary`, and a database file that is a
link refuses every open, each with one line (exit 2) and nothing written where the link points."""

from __future__ import annotations

import sqlite3

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.human import rating_summary, store
from rlhflab.human.summary import summary_folder
from tests.helpers import assert_user_error, cli_ok, cli_run
from tests.human.conftest import write_samples
from tests.human.test_rating_ownership import rate_all


@pytest.fixture
def rated(tmp_path):
    (tmp_path / "runs" / "alpha" / "evaluate").mkdir(parents=True)
    samples = write_samples(tmp_path / "runs" / "alpha" / "evaluate" / "samples.jsonl")
    return tmp_path / "runs" / "alpha", samples, tmp_path / "db" / "r.sqlite"


def _create_and_rate(capsys, samples, db):
    cli_ok(capsys, "rate", "create", "--from-samples", samples, "--prompts", "3", "--db", db)
    rate_all(db, "blind-rating")


@pytest.mark.parametrize("linked", ["human", "human/blind-rating"])
def test_summary_refuses_a_human_folder_that_is_a_link(capsys, tmp_path, rated, linked):
    run, samples, db = rated
    _create_and_rate(capsys, samples, db)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run / linked).parent.mkdir(parents=True, exist_ok=True)
    (run / linked).symlink_to(outside, target_is_directory=True)
    assert_user_error(cli_run(capsys, "rate", "summary", "--db", db),
                      str(run.resolve() / linked), "is a symbolic link", "--out")
    assert list(outside.rglob("*")) == []  # nothing written where the link points
    with pytest.raises(RlhfLabError, match="is a symbolic link"):
        summary_folder(rating_summary(db, "blind-rating"), db)
    # --out, a folder the user names, is written as asked
    out = tmp_path / "mine"
    assert "wrote" in cli_ok(capsys, "rate", "summary", "--db", db, "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["rating_summary.json", "rating_summary.md"]


def test_summary_still_writes_into_a_plain_human_folder(capsys, rated):
    run, samples, db = rated
    _create_and_rate(capsys, samples, db)
    cli_ok(capsys, "rate", "summary", "--db", db)
    assert (run / "human" / "blind-rating" / "rating_summary.json").is_file()


@pytest.mark.parametrize("dangling", [False, True])
def test_a_database_that_is_a_link_is_refused_and_its_target_untouched(capsys, tmp_path, rated, dangling):
    _, samples, _ = rated
    victim = tmp_path / "victim.sqlite"
    if not dangling:
        conn = sqlite3.connect(victim)
        conn.execute("create table mine(x)")
        conn.commit()
        conn.close()
    before = victim.read_bytes() if not dangling else None
    link = tmp_path / "runs" / "human" / "rlhflab.sqlite"
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    assert_user_error(cli_run(capsys, "rate", "create", "--from-samples", samples, "--prompts", "3", "--db", link),
                      f"The labelling database {link} is a symbolic link", "--db")
    with pytest.raises(RlhfLabError, match="is a symbolic link"):
        store.connect(link, create=False)
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("victim")) == ([] if dangling else ["victim.sqlite"])
