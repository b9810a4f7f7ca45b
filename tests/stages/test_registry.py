"""The registry is the only list of stages: a stage registered there (here a toy one, for this
test only) is a command of the CLI, a stage of the config and the pipeline, and a section of the
report, with nothing else edited."""

from __future__ import annotations

import importlib

import pytest

from rlhflab import pipeline
from rlhflab.config import Config, load_config
from rlhflab.errors import RlhfLabError
from rlhflab.eval.document import Heading, para
from rlhflab.stages import registry
from rlhflab.stages.common import finish_run, open_run_dir
from tests.helpers import FP32, cli_ok, cli_run

TITLE = "Counting (a toy stage)"


# -- the toy stage's module: this test module is its runner ---------------------------------------


def run(cfg, *, runtime, resume, overwrite, progress):
    """Counts the words of cfg.name: a stage that opens and finishes its run folder like the real ones."""
    run_dir = open_run_dir(cfg, "toy", resume=resume, overwrite=overwrite, runtime=runtime)
    return finish_run(run_dir, {"words": len(cfg.name.split("-")), "seconds": 0.5}, runtime)


def format_summary(summary: dict) -> str:
    return f"toy table: {summary['words']} words"


def line(summary: dict) -> str:
    return f"{summary['words']} words counted"


def section(stage, run_root, figures) -> list:
    return [Heading(TITLE, anchor="toy"), para(f"The toy stage counted {stage.summary['words']} words.")]


def rows(summary: dict, name: str) -> list[list[str]]:
    return [["toy", "words counted", "-", str(summary["words"])]]


TOY = registry.Stage("toy", "data", ("seed", "name"), lambda cfg: [], "count the words of the run's name (a test's stage)",
                     TITLE, line, section, rows, runner=__name__)


@pytest.fixture
def toy(monkeypatch):
    """The toy stage, registered for one test (monkeypatch removes it after)."""
    monkeypatch.setitem(registry.STAGES, "toy", TOY)
    return TOY


def test_every_function_a_stage_names_exists():
    """The registry names its stages' functions as "module:function" (imported when first called):
    a typo there would otherwise show only when that stage's line or section is first needed."""
    named = [(stage.name, fn.target) for stage in registry.STAGES.values()
             for fn in (stage.line, stage.report_section, stage.report_rows) if hasattr(fn, "target")]
    assert len(named) == 3 * len(registry.STAGES) - 1  # pretrain has no overview rows
    for name, target in named:
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function, None)), (name, target)


def test_without_the_entry_the_toy_stage_is_no_stage():
    assert "toy" not in registry.STAGES
    with pytest.raises(RlhfLabError, match=r"^stages\[1\]: must be one of 'pretrain', .*; got 'toy' \(str\)\.$"):
        load_config(None, ["stages=[sft,toy]"])


def test_a_registered_stage_is_a_command_of_the_cli(toy, tmp_path, capsys):
    assert load_config(None, ["stages=[toy]"]).stages == ["toy"]
    with pytest.raises(SystemExit):
        cli_run(capsys, "toy", "--help")
    assert "Count the words of the run's name (a test's stage). Its settings are the data.* section" in \
        " ".join(capsys.readouterr().out.split())  # argparse wraps the description
    with pytest.raises(SystemExit):
        cli_run(capsys, "pipeline", "--help")
    assert "overopt, toy, report)" in " ".join(capsys.readouterr().out.split())  # --force takes it
    out = cli_ok(capsys, "toy", "name=a-b-c", f"runs_dir={tmp_path}", "runtime.device=cpu", "stages=[toy]")
    assert "toy table: 3 words" in out
    assert (tmp_path / "a-b-c" / "toy" / "summary.json").is_file()


def test_the_pipeline_runs_a_registered_stage_keeps_it_up_to_date_and_reports_it(toy, tmp_path):
    cfg = Config(runtime=FP32, name="one-two", runs_dir=str(tmp_path), stages=["toy"])
    lines: list[str] = []
    html = pipeline.run(cfg, progress=False, echo=lines.append)
    assert lines[0] == "toy       running ..."
    assert lines[1].startswith("toy       done in ") and lines[1].endswith("2 words counted")
    again: list[str] = []
    pipeline.run(cfg, progress=False, echo=again.append)
    assert again[0] == "toy       up to date   2 words counted"
    markdown = html.with_name("report.md").read_text(encoding="utf-8")
    assert f"## {TITLE}" in markdown and "The toy stage counted 2 words." in markdown
    assert f"| {TITLE} | done |" in markdown  # the overview's row
    assert "| toy | words counted | - | 2 |" in markdown  # and its headline table
    assert TITLE in html.read_text(encoding="utf-8")


def test_a_registered_stage_is_stale_when_an_input_it_declares_changes(toy, tmp_path):
    cfg = Config(runtime=FP32, name="one-two", runs_dir=str(tmp_path), stages=["toy"])
    pipeline.run(cfg, progress=False, echo=lambda _: None, report=False)
    assert pipeline.stage_state(cfg, "toy") == "done"
    assert pipeline.stage_state(Config(runtime=FP32, name="one-two", runs_dir=str(tmp_path), stages=["toy"],
                                       seed=1), "toy") == "stale"
