"""A stop (Ctrl-C, SIGTERM) that arrives during the loop's last step or its final evaluation stops the run,
saved, rather than being forgotten while the stage goes on. Found by a SIGTERM during the last validation of a
DPO round: the process ran the next two rounds (many minutes) before it could be stopped again."""

from __future__ import annotations

import json
import os
import signal

import pytest

from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime
from rlhflab.errors import RunInterrupted
from tests.unit.test_non_finite import Toy, _loop, _run_dir


class StopsWhileEvaluating(Toy):
    """Receives SIGTERM (what `timeout`, SLURM and Kubernetes send) while its final evaluation runs."""

    def evaluate(self, step: int) -> dict:
        os.kill(os.getpid(), signal.SIGTERM)
        return super().evaluate(step)


def test_a_stop_during_the_final_evaluation_stops_the_run_with_its_checkpoint(tmp_path):
    run_dir = _run_dir(tmp_path)
    with pytest.raises(RunInterrupted, match=r"^Stopped at step 6; checkpoint saved in .* Continue with --resume\.$"):
        _loop(StopsWhileEvaluating({}), run_dir)
    assert json.loads((run_dir.checkpoint_dir / "latest" / "state.json").read_text())["step"] == 6
    # resumed, nothing is left to train or evaluate: the loop hands back its last step and the stage goes on
    again = Toy({})
    assert run_loop(again, runtime=Runtime.create("cpu", "no"), run_dir=run_dir, total_steps=6, checkpoint_every=2,
                    resume=True, progress=False, desc="rl") == 6
    assert again.evaluated == []


def test_without_a_stop_the_loop_ends_normally(tmp_path):
    algorithm = Toy({})
    assert _loop(algorithm, _run_dir(tmp_path)) == 6 and algorithm.evaluated == [6]
