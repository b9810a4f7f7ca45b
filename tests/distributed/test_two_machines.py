"""Two "machines" on one host: `accelerate launch --num_machines 2 --machine_rank 0|1
--main_process_ip 127.0.0.1` started twice (one process each), as a SLURM job starts one launcher
per node (examples/slurm/rlhflab.sbatch). Both share the runs folder, and only the main process
(machine 0) writes there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.test_multiprocess import DDP, ROOT, _free_port, child_env, pipeline_args

pytestmark = pytest.mark.slow

ENV = child_env()


def launch_machines(*target: str) -> list[tuple[int, str, str]]:
    """One launcher per machine rank (0 and 1), one process each; (exit code, stdout, stderr) of each."""
    port = str(_free_port())
    launchers = [
        subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(DDP), "--num_machines", "2",
                          "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                          "--main_process_port", port, *target],
                         cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for launcher in launchers:
            outputs.append(launcher.communicate(timeout=600))
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    return [(launcher.returncode, out, err) for launcher, (out, err) in zip(launchers, outputs)]


def test_two_machines_of_one_process_each_run_the_pipeline_as_one_process_does(tmp_path, tiny_llama_dir, tiny_bert_dir,
                                                                               reviews_csv):
    """The whole pipeline (sft, reward, rl, evaluate, report) on two machines against one process:
    sft and the reward model take the same steps on the same global batch (the weights agree); rl
    samples with per-process seeds, so its rollouts differ from one process's by design (DDP's
    lockstep is tests/distributed/test_multiprocess.py's), and it is checked for one writer."""
    one = subprocess.run([sys.executable, "-m", "rlhflab", "pipeline",
                          *pipeline_args(tmp_path / "runs1", tiny_llama_dir, tiny_bert_dir, reviews_csv)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert one.returncode == 0, one.stderr[-3000:]
    machines = launch_machines("-m", "rlhflab", "pipeline", *pipeline_args(tmp_path / "runs2", tiny_llama_dir, tiny_bert_dir,
                                                                           reviews_csv))
    for code, _, stderr in machines:
        assert code == 0, stderr[-3000:]
    stages = ["sft", "reward", "rl", "evaluate"]
    said = [[line.split()[0] for line in out.splitlines() if " done in " in line] for _, out, _ in machines]
    assert said == [[*stages, "report"], []]  # machine 0's main process says each line; machine 1 says nothing
    run1, run2 = tmp_path / "runs1" / "mp", tmp_path / "runs2" / "mp"
    for stage in ("sft", "reward"):
        a, b = (load_file(run / stage / "model" / "model.safetensors") for run in (run1, run2))
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4)
        records = [[json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()] for run in (run1, run2)]
        assert [r["step"] for r in records[1]] == [r["step"] for r in records[0]]  # one writer: no duplicates
    for stage in stages:
        assert json.loads((run2 / stage / "summary.json").read_text())["processes"] == 2
    rl = [[(r["step"], r["split"]) for r in map(json.loads, (run / "rl" / "metrics.jsonl").read_text().splitlines())]
          for run in (run1, run2)]
    assert rl[1] == rl[0]  # one writer
    assert (run2 / "report" / "report.html").is_file()
