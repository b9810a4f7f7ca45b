"""Under two processes (`accelerate launch`, CPU), a NaN loss and a full disk while the main process
writes a checkpoint stop every rank together with the one line a single process gives (issue 19 §2):
no rank is left waiting for the others."""

from __future__ import annotations

import time

import pytest

from tests.distributed.test_multiprocess import launch_two, sft_args

pytestmark = pytest.mark.slow

FULL_DISK_ON_MAIN = """
import os, sys, types
import torch
from rlhflab import cli

if os.environ["RANK"] == "0":  # only the main process writes checkpoints: its disk fills up
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # a file; in-memory saves (pickling tensors to send them) still work
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4352 vs 4246")
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    os.statvfs = lambda path: types.SimpleNamespace(f_bavail=0, f_frsize=4096)
sys.exit(cli.main(sys.argv[1:]))
"""


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error")]


def test_a_nan_loss_stops_both_ranks_at_the_same_step_with_one_line(tmp_path, tiny_llama_dir, reviews_csv):
    started = time.monotonic()
    result = launch_two(tmp_path, "-m", "rlhflab", "sft", "--no-progress",
                        *sft_args(tmp_path / "runs", tiny_llama_dir, reviews_csv), "sft.max_steps=4",
                        "sft.learning_rate=1e30", "sft.log_every=100")
    said = _errors(result)
    assert len(said) == 1 and said[0].startswith("error: sft stopped at step 2: the training loss became nan. "), \
        result.stderr[-3000:]
    assert "No checkpoint had been saved, so nothing of this run is kept" in said[0]
    assert result.returncode != 0 and not (tmp_path / "runs" / "mp" / "sft.partial").exists()
    assert time.monotonic() - started < 120  # neither rank waited for the other to the launcher's timeout


def test_a_full_disk_on_the_main_process_stops_both_ranks_with_one_line(tmp_path, tiny_llama_dir, reviews_csv):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_ON_MAIN)
    started = time.monotonic()
    result = launch_two(tmp_path, str(script), "sft", "--no-progress",
                        *sft_args(tmp_path / "runs", tiny_llama_dir, reviews_csv), "sft.checkpoint_every=1")
    said = _errors(result)
    checkpoint = tmp_path / "runs" / "mp" / "sft.partial" / "checkpoints" / "latest"
    assert len(said) == 1, result.stderr[-3000:]
    assert said[0].startswith(f"error: Cannot save the checkpoint {checkpoint}: the disk is full (0 KB free, the "
                              f"checkpoint needs about ")
    assert said[0].endswith("); no checkpoint of this run had been saved yet, so a rerun starts it again.")
    assert result.returncode != 0 and not (tmp_path / "runs" / "mp").exists()
    assert time.monotonic() - started < 120
