"""Two "machines" on one host: `accelerate launch --num_machines 2 --machine_rank 0|1
--main_process_ip 127.0.0.1` started twice (one process each), as a SLURM job starts one launcher
per node (examples/slurm/rlhflab.sbatch). Both share the runs folder, and only the main process
(machine 0) writes there."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.test_multiprocess import DDP, ROOT, _free_port, run_ranks, sft_args

pytestmark = pytest.mark.slow


def test_two_machines_of_one_process_each_train_as_one_process(tmp_path, tiny_llama_dir, reviews_csv):
    run_ranks(tmp_path / "one", "sft", *sft_args(tmp_path / "runs1", tiny_llama_dir, reviews_csv), processes=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    port = str(_free_port())
    worker = ["-m", "tests.distributed.worker", str(tmp_path / "two"), "sft", *sft_args(tmp_path / "runs2", tiny_llama_dir, reviews_csv)]
    launchers = [
        subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_machines", "2",
                          "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                          "--main_process_port", port, *worker],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=300))
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    for launcher, (_, stderr) in zip(launchers, outputs):
        assert launcher.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["weights"] == ranks[1]["weights"]
    a = load_file(tmp_path / "runs1" / "mp" / "sft" / "model" / "model.safetensors")
    b = load_file(tmp_path / "runs2" / "mp" / "sft" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4)
    records = [[json.loads(line) for line in (tmp_path / runs / "mp" / "sft" / "metrics.jsonl").read_text().splitlines()]
               for runs in ("runs1", "runs2")]
    assert [r["step"] for r in records[1]] == [r["step"] for r in records[0]]  # one writer: no duplicates
    assert json.loads((tmp_path / "runs2" / "mp" / "sft" / "summary.json").read_text())["processes"] == 2
