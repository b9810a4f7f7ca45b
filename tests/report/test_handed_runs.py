"""A run folder from someone else (issue 19 §0): `report` and `compare` read only regular files
inside it, never through a symbolic link or a path that leaves it, and a file with odd content
is a note naming it, not a traceback. Runs are written by hand as in test_report / test_compare."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.eval.compare import compare
from rlhflab.eval.report import build_report
from rlhflab.eval.run_files import HandedFileError, run_file
from tests.helpers import assert_user_error, cli_run
from tests.report.test_compare import rl_run
from tests.report.test_report import write_evaluate, write_json, write_rl, write_sft

SECRET = b"\x89PNG\r\n\x1a\n" + b"the reader's private key: 7f3a9c1e" * 8  # what must never reach a report


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "private" / "secret.png"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def section(html: str, anchor: str) -> str:
    """The HTML of one section of report.html, up to the next."""
    return html.split(f'<h2 id="{anchor}">', 1)[1].split("<h2", 1)[0]


def leaked(html: str) -> bool:
    return base64.b64encode(SECRET).decode("ascii") in html or "private key" in html


def evaluate_listing(root: Path, figure: str) -> None:
    """An evaluate stage without samples.jsonl, so the report embeds the PNGs its summary lists."""
    write_evaluate(root)
    (root / "evaluate" / "samples.jsonl").unlink()
    summary = json.loads((root / "evaluate" / "summary.json").read_text())
    write_json(root / "evaluate" / "summary.json", {**summary, "figures": {"reward_histograms": figure}})


# -- run_file: the one check ---------------------------------------------------------------


def test_run_file_takes_regular_files_inside_the_run_only(tmp_path, secret):
    root = tmp_path / "run"
    (root / "rl").mkdir(parents=True)
    (root / "rl" / "summary.json").write_text("{}")
    assert run_file(root, "rl/summary.json") == root / "rl" / "summary.json"
    assert run_file(root, "rl", folder=True) == root / "rl"
    assert run_file(root, "rl/missing.json") is None and run_file(root, "nope/x.json") is None
    (root / "link.png").symlink_to(secret)
    (root / "linked").symlink_to(secret.parent, target_is_directory=True)
    os.mkfifo(root / "fifo")
    refused = {"link.png": "is a symbolic link", "linked/secret.png": "is a symbolic link",
               str(secret): "outside the run folder", "../private/secret.png": "outside the run folder",
               "rl/../../private/secret.png": "outside the run folder", "fifo": "is not a regular file",
               "rl": "is not a regular file", "bad\0name": "not a usable path"}
    for relative, fragment in refused.items():
        with pytest.raises(HandedFileError, match=fragment):
            run_file(root, relative)
    with pytest.raises(HandedFileError, match="is not a path"):
        run_file(root, ["a", "list"])  # type: ignore[arg-type]


# -- report: figures --------------------------------------------------------------------------


def test_a_figure_that_is_a_link_to_a_file_elsewhere_is_skipped_with_a_note(tmp_path, secret):
    root = tmp_path / "runs" / "shared"
    evaluate_listing(root, "figures/reward_histograms.png")
    link = root / "evaluate" / "figures" / "reward_histograms.png"
    link.parent.mkdir()
    link.symlink_to(secret)
    html_path, md_path = build_report(root)
    html, md = html_path.read_text(), md_path.read_text()
    assert not leaked(html)
    assert f"Figure reward histograms skipped: {link} is a symbolic link (to {secret})" in section(html, "evaluate")
    assert "reward histograms skipped" in md and "reward_histograms.png)" not in md  # no Markdown image of it either


@pytest.mark.parametrize("figure", ["ABSOLUTE", "../../private/secret.png", "figures/../../../private/secret.png"])
def test_a_figure_path_that_is_absolute_or_climbs_out_is_skipped_with_a_note(tmp_path, secret, figure):
    root = tmp_path / "runs" / "shared"
    # runs/private (beside the run) leads to the secret, so each path below names a file that exists
    figure = str(secret) if figure == "ABSOLUTE" else figure
    evaluate_listing(root, figure)
    (tmp_path / "runs" / "private").symlink_to(secret.parent, target_is_directory=True)
    (root / "evaluate" / "figures").mkdir()
    assert (root / "evaluate" / figure).read_bytes() == SECRET
    html = build_report(root)[0].read_text()
    assert not leaked(html)
    note = section(html, "evaluate")
    assert "Figure reward histograms skipped" in note and "is outside the run folder" in note


def test_a_listed_figure_inside_the_run_is_still_embedded(tmp_path):
    root = tmp_path / "runs" / "shared"
    evaluate_listing(root, "figures/reward_histograms.png")
    png = root / "evaluate" / "figures" / "reward_histograms.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\nown figure")
    html = build_report(root)[0].read_text()
    assert base64.b64encode(png.read_bytes()).decode("ascii") in html and "skipped" not in html


def test_sweep_figures_that_leave_the_run_are_skipped(tmp_path, secret):
    root = tmp_path / "runs" / "base"
    write_json(root / "sweep" / "sweep.json", {"points": []})
    folder = root / "sweep" / "compare"
    (folder / "figures").mkdir(parents=True)
    (folder / "figures" / "compare_kl.png").symlink_to(secret)
    write_json(folder / "compare.json", {"header": ["point", "final reward"], "rows": [["p1", "0.5"]], "columns": [],
                                         "figures": [{"path": "figures/compare_kl.png", "caption": "KL"},
                                                     {"path": str(secret), "caption": "absolute"},
                                                     {"path": "../../../../private/secret.png", "caption": "up"}]})
    html = build_report(root)[0].read_text()
    assert not leaked(html) and "data:image/png" not in html
    assert "Figure KL skipped" in html and "Figure absolute skipped" in html and "Figure up skipped" in html
    assert "<td>p1</td>" in html  # the table itself is still shown


def test_a_stage_folder_that_is_a_link_is_not_read(tmp_path):
    elsewhere = tmp_path / "other" / "rl"
    write_rl(elsewhere.parent)  # someone else's numbers: 1.056 at the end
    root = tmp_path / "runs" / "shared"
    write_sft(root)
    (root / "rl").symlink_to(elsewhere, target_is_directory=True)
    html = build_report(root)[0].read_text()
    assert f"{root / 'rl'} is a symbolic link" in section(html, "rl") and "1.056" not in html
    assert "54.375" in html  # the SFT section still reports


def test_a_report_folder_that_is_a_link_is_refused_and_nothing_there_is_deleted(tmp_path, capsys):
    root = tmp_path / "runs" / "shared"
    write_rl(root)
    target = tmp_path / "mine"
    (target / "figures").mkdir(parents=True)
    (target / "figures" / "eval_mine.png").write_bytes(b"mine")  # a name the report would clean as stale
    (root / "report").symlink_to(target, target_is_directory=True)
    with pytest.raises(RlhfLabError, match="is a symbolic link or not a folder"):
        build_report(root)
    assert_user_error(cli_run(capsys, "report", root), str(root / "report"), "--out DIR")
    assert (target / "figures" / "eval_mine.png").read_bytes() == b"mine" and not (target / "report.html").exists()
    html, _ = build_report(root, tmp_path / "out")  # --out elsewhere still works
    assert html.exists()


# -- report: files with odd content ------------------------------------------------------------


ODD_SUMMARIES = {
    "a list where an object goes": ("[1, 2]", "holds a JSON list, not the object it should"),
    "not JSON": ("{'single': quotes}", "is not valid JSON"),
    "strings where numbers go": (json.dumps({"start": "abc", "end": {"score": "high", "kl": []}, "steps": "x",
                                             "evaluations": "many", "seconds": "long"}), "does not have the shape"),
    "a list where a dict goes inside": (json.dumps({"start": [1], "end": [2], "seconds": [3]}), "does not have the shape"),
}


@pytest.mark.parametrize("case", list(ODD_SUMMARIES))
def test_an_odd_summary_leaves_its_section_out_with_a_note_naming_the_file(tmp_path, capsys, case):
    text, fragment = ODD_SUMMARIES[case]
    root = tmp_path / "runs" / "shared"
    write_sft(root)
    write_rl(root)
    (root / "rl" / "summary.json").write_text(text)
    result = cli_run(capsys, "report", root)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    html = (root / "report" / "report.html").read_text()
    note = section(html, "rl")
    assert f'<p class="note">Left out: {root / "rl" / "summary.json"}' in note and fragment in note
    assert "1.056" not in html and "54.375" in html  # the odd stage is missing, the SFT section is not
    assert "<td>RL training</td><td>left out (see its section)</td>" in html


def test_a_config_with_a_python_tag_is_not_constructed_and_is_named(tmp_path, capsys):
    root = tmp_path / "runs" / "shared"
    write_sft(root)
    marker = tmp_path / "ran"
    (root / "sft" / "config.yaml").write_text(f"stages: !!python/object/apply:os.system ['touch {marker}']\n")
    write_rl(root)
    (root / "rl" / "config.yaml").write_text("- a\n- list\n")
    (root / "rl" / "stage.json").write_text("!!python/object/apply:os.system ['true']")  # the report never needs it
    result = cli_run(capsys, "report", root)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert not marker.exists()
    html = (root / "report" / "report.html").read_text()
    configs = section(html, "configs")
    assert f"{root / 'sft' / 'config.yaml'} is not plain YAML" in configs and "python/object" in configs
    assert f"{root / 'rl' / 'config.yaml'} holds a YAML list, not the mapping it should" in configs
    assert "<summary>sft/config.yaml</summary>" not in configs and "<summary>rl/config.yaml</summary>" not in configs
    assert "54.375" in html and "1.056" in html  # the summaries are fine: both sections report


def test_a_stages_list_of_another_type_in_the_config_is_ignored(tmp_path):
    root = tmp_path / "runs" / "shared"
    write_sft(root)
    (root / "sft" / "config.yaml").write_text("stages: 5\nsft:\n  marker: x\n")
    md = build_report(root)[1].read_text()
    assert "## Supervised fine-tuning" in md and "## Reward model" in md  # the default pipeline's stages


# -- compare ---------------------------------------------------------------------------------------


def test_compare_notes_odd_files_and_still_compares_the_rest(tmp_path, capsys):
    runs = tmp_path / "runs"
    rl_run(runs / "good" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    rl_run(runs / "odd" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    write_json(runs / "odd" / "rl" / "summary.json", {"start": [1], "end": {"kl": "far", "score": []},
                                                       "evaluations": "many", "steps": "x", "seconds": "long"})
    (runs / "odd" / "rl" / "metrics.jsonl").write_text('{"step": 1e400, "kl": 1}\n{"step": "x", "kl": 2}\n[1]\n')
    rl_run(runs / "listed" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    (runs / "listed" / "rl" / "summary.json").write_text("[1, 2]")
    (runs / "listed" / "rl" / "config.yaml").write_text("x: !!python/object/apply:os.system ['true']\n")
    result = cli_run(capsys, "compare", runs / "good", runs / "odd", runs / "listed", "--out", tmp_path / "out")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["rows"][0][:5] == ["good", "ppo", "0.0001", "0.05", "0.600"]
    assert data["rows"][1][4:] == ["-"] * 7  # finished, but not one usable number
    assert data["rows"][2][4] == "not finished"
    assert f"Left out of listed: {runs / 'listed' / 'rl' / 'summary.json'} holds a JSON list" in result.stdout
    assert f"Left out of listed: {runs / 'listed' / 'rl' / 'config.yaml'} is not plain YAML" in result.stdout


def test_compare_does_not_follow_a_linked_stage_folder(tmp_path):
    rl_run(tmp_path / "other" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    run = tmp_path / "runs" / "shared"
    run.mkdir(parents=True)
    (run / "rl").symlink_to(tmp_path / "other" / "rl", target_is_directory=True)
    result = compare([str(run)], tmp_path / "out")
    assert result.data["rows"][0][4] == "not finished" and "0.600" not in result.text
    assert f"{run / 'rl'} is a symbolic link" in result.text


@pytest.mark.parametrize("name", ["../../elsewhere", "/tmp", "a/b", 7])
def test_a_sweep_point_outside_the_sweep_is_refused_naming_the_manifest(tmp_path, capsys, name):
    folder = tmp_path / "sweep"
    write_json(folder / "sweep.json", {"points": [{"name": name, "overrides": []}]})
    line = assert_user_error(cli_run(capsys, "compare", folder), str(folder / "sweep.json"), "rerun the sweep")
    assert "not a folder inside" in line


def test_a_compare_folder_that_is_a_link_is_refused(tmp_path, capsys):
    rl_run(tmp_path / "runs" / "a" / "rl", steps=3, evals=[(0, 0.0, 0.5), (3, 1.5, 0.6)], seconds=5.0)
    target = tmp_path / "mine"
    (target / "figures").mkdir(parents=True)
    (target / "figures" / "compare_mine.png").write_bytes(b"mine")
    (tmp_path / "runs" / "a" / "compare").symlink_to(target, target_is_directory=True)
    assert_user_error(cli_run(capsys, "compare", tmp_path / "runs" / "a"), "is a symbolic link or not a folder")
    assert (target / "figures" / "compare_mine.png").read_bytes() == b"mine" and not (target / "compare.json").exists()
