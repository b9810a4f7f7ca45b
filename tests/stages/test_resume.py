"""`--resume` reads a checkpoint safely (issue 10): garbage or a code-running pickle in place of
state.pt is a one-line RlhfLabError, and the pickle never runs."""

from __future__ import annotations

import os
import pickle

import pytest

from rlhflab.config import Config, DataConfig, SftConfig
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.stages.common import run_stage
from rlhflab.engine import loop as engine_loop
from tests.helpers import StopAt
from tests.helpers import FP32


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def interrupted_sft(tmp_path, tiny_llama_dir, reviews_csv, monkeypatch):
    """(config, state.pt) of an SFT run stopped after 2 steps with a checkpoint."""
    cfg = Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(reviews_csv), per_class=30),
                 sft=SftConfig(model=str(tiny_llama_dir), max_length=24, epochs=1, batch_size=6))
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_stage("sft", cfg, progress=False)
    monkeypatch.undo()
    [state] = (tmp_path / "runs").rglob("checkpoints/latest/state.pt")  # under sft/ or sft.partial/
    return cfg, state


def test_resume_from_garbage_is_a_one_line_error(interrupted_sft):
    cfg, state = interrupted_sft
    state.write_bytes(b"\x80\x04garbage" * 50)
    with pytest.raises(RlhfLabError) as exc:
        run_stage("sft", cfg, resume=True, progress=False)
    assert str(exc.value) == f"The checkpoint {state} is corrupt or not an rlhflab checkpoint. Start again with --overwrite."


def test_resume_never_runs_a_pickle_put_in_place_of_the_checkpoint(interrupted_sft, tmp_path):
    cfg, state = interrupted_sft
    marker = tmp_path / "pwned"
    state.write_bytes(pickle.dumps(_WritesMarker(marker), protocol=2))
    with pytest.raises(RlhfLabError, match="could run code.*--overwrite"):
        run_stage("sft", cfg, resume=True, progress=False)
    assert not marker.exists()


def test_resume_of_a_config_with_a_python_tag_is_one_line_and_never_constructed(interrupted_sft, tmp_path):
    cfg, state = interrupted_sft
    marker = tmp_path / "pwned"
    (state.parent.parent.parent / "config.yaml").write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(RlhfLabError, match=r"config.yaml is not plain YAML .*; this run cannot be resumed. Start again with --overwrite."):
        run_stage("sft", cfg, resume=True, progress=False)
    assert not marker.exists()
    assert state.exists()  # the checkpoint is kept


def test_resume_of_a_stage_json_that_is_not_an_object_is_one_line(interrupted_sft):
    cfg, state = interrupted_sft
    (state.parent.parent.parent / "stage.json").write_text("[1, 2]\n")
    with pytest.raises(RlhfLabError, match=r"stage.json is not a JSON object; this run cannot be resumed"):
        run_stage("sft", cfg, resume=True, progress=False)


def test_a_pipeline_on_a_handed_partial_with_a_python_tag_starts_the_stage_again(interrupted_sft, tmp_path):
    """The pipeline never constructs the tag: a partial whose config is not plain YAML is stale."""
    from rlhflab.pipeline import stage_state

    cfg, state = interrupted_sft
    marker = tmp_path / "pwned"
    (state.parent.parent.parent / "config.yaml").write_text(f'!!python/object/apply:os.system ["touch {marker}"]\n')
    assert stage_state(cfg, "sft") == "stale"
    assert not marker.exists()


def test_a_finished_stage_with_an_odd_summary_gets_a_headline_that_says_so():
    from rlhflab.pipeline import headline

    assert "not one rlhflab wrote" in headline("sft", {"after": "a string"})
    assert "not one rlhflab wrote" in headline("reward", {"metrics": []})
