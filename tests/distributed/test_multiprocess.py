"""Real multi-process runs through `accelerate launch` on the CPU (gloo): the configured batch
is the global batch, ranks stay in lockstep, only the main rank writes, and resume works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
DDP = ROOT / "configs" / "accelerate" / "ddp.yaml"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict[str, str]:
    """The launched processes' environment: this tree first on the path, then the caller's PYTHONPATH
    (where an optional engine such as deepspeed may be installed), offline, one thread each."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run_ranks(out: Path, stage: str, *args: str, processes: int, launch: tuple[str, ...] = ("--config_file", str(DDP))) -> list[dict]:
    """Run tests/distributed/worker.py on `processes` ranks (`launch`: the accelerate config and
    options); returns each rank's report."""
    env = child_env()
    worker = ["-m", "tests.distributed.worker", str(out), stage, *args]
    if processes == 1:
        command = [sys.executable, *worker]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes",
                   str(processes), "--main_process_port", str(_free_port()), *worker]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def sft_args(runs: Path, model: Path, csv: Path) -> list[str]:
    return [f"data.source={csv}", "data.per_class=30", f"sft.model={model}", f"runs_dir={runs}", "name=mp",
            "sft.epochs=1", "sft.max_steps=2", "sft.batch_size=8", "sft.max_length=24", "sft.learning_rate=1e-2",
            "sft.warmup_ratio=0.0", "runtime.mixed_precision=no"]


def test_two_processes_take_the_same_sft_steps_as_one_on_the_same_global_batch(tmp_path, tiny_llama_dir, reviews_csv):
    run_ranks(tmp_path / "one", "sft", *sft_args(tmp_path / "runs1", tiny_llama_dir, reviews_csv), processes=1)
    two = run_ranks(tmp_path / "two", "sft", *sft_args(tmp_path / "runs2", tiny_llama_dir, reviews_csv), processes=2)
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"]  # the ranks agree exactly
    # (the 1-process run's weights are compared below through the saved models)
    a = load_file(tmp_path / "runs1" / "mp" / "sft" / "model" / "model.safetensors")
    b = load_file(tmp_path / "runs2" / "mp" / "sft" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    changed = 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-5, rtol=1e-4)
        changed += not torch.equal(a[name], load_file(tiny_llama_dir / "model.safetensors").get(name, a[name]))
    assert changed > 0  # the steps trained something
    losses = [[r["loss"] for r in map(json.loads, (runs / "mp" / "sft" / "metrics.jsonl").read_text().splitlines())
               if r["split"] == "train"] for runs in (tmp_path / "runs1", tmp_path / "runs2")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    summary = json.loads((tmp_path / "runs2" / "mp" / "sft" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["frozen_cache"]["used"]


def ppo_args(runs: Path, model: Path, csv: Path, reward: str) -> list[str]:
    return [f"data.source={csv}", "data.per_class=30", f"ppo.policy={model}", f"reward_fn.source={reward}",
            f"runs_dir={runs}", "name=mp", "ppo.steps=4", "ppo.batch_size=8", "ppo.minibatch_size=4", "ppo.max_new_tokens=6",
            "ppo.eval_prompts=6", "ppo.eval_every=2", "ppo.kl_horizon=8", "ppo.learning_rate=1e-3",
            "ppo.checkpoint_every=1", "runtime.mixed_precision=no"]


def pipeline_args(runs: Path, llama: Path, bert: Path, csv: Path) -> list[str]:
    """A whole pipeline on tiny models: every stage of the default one, each a couple of steps."""
    return [f"data.source={csv}", "data.per_class=30", f"runs_dir={runs}", "name=mp", "runtime.mixed_precision=no",
            f"sft.model={llama}", "sft.max_length=24", "sft.epochs=1", "sft.max_steps=2", "sft.batch_size=8",
            f"reward.model={bert}", "reward.max_length=24", "reward.max_steps=2",
            "reward.batch_size=8", "reward.learning_rate=1e-3", "rl.steps=2", "rl.batch_size=8", "rl.minibatch_size=4",
            "generation.max_new_tokens=6", "rl.eval_prompts=6", "rl.eval_every=2", "evaluate.prompts=6",
            "evaluate.batch_size=6"]


@pytest.fixture
def toy_reward(tmp_path) -> str:
    path = tmp_path / "toy_reward.py"
    path.write_text("def e_share(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n")
    return f"{path}:e_share"


def test_two_process_ppo_keeps_the_ranks_in_lockstep_writes_once_and_resumes(tmp_path, tiny_llama_dir, reviews_csv, toy_reward):
    args = ppo_args(tmp_path / "runs", tiny_llama_dir, reviews_csv, toy_reward)
    straight = run_ranks(tmp_path / "straight", "rl", *args, processes=2)
    assert straight[0]["weights"] == straight[1]["weights"]
    assert straight[0]["beta"] == straight[1]["beta"] != 0.05  # the adaptive beta moved, identically on both ranks
    run = tmp_path / "runs" / "mp" / "rl"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]  # one writer: no duplicates
    assert [r["step"] for r in records if r["split"] == "eval"] == [0, 2, 4]
    assert len(json.loads((run / "eval_after.json").read_text())) == 6  # both ranks' prompts, gathered
    assert json.loads((run / "summary.json").read_text())["processes"] == 2
    assert len(json.loads((run / "stage.json").read_text())["key"]) == 16  # the pipeline can tell it is up to date
    assert not (tmp_path / "runs" / "mp" / "rl.partial").exists()

    resumed_args = [a.replace(str(tmp_path / "runs"), str(tmp_path / "runs-r")) for a in args]
    stopped = run_ranks(tmp_path / "stopped", "rl", *resumed_args, "--stop-after", "2", processes=2)
    assert all(r["interrupted"] for r in stopped)
    resumed = run_ranks(tmp_path / "resumed", "rl", *resumed_args, "--resume", processes=2)
    assert resumed[0]["weights"] == resumed[1]["weights"] == straight[0]["weights"]  # resume equals uninterrupted
    assert resumed[0]["beta"] == straight[0]["beta"]


def launch_two(tmp_path: Path, *target: str, launch: tuple[str, ...] = ("--config_file", str(DDP))) -> subprocess.CompletedProcess:
    """`accelerate launch` of `target` (-m module args, or a script and its args) on two CPU processes,
    stdin closed as in CI."""
    env = child_env()
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2",
               "--main_process_port", str(_free_port()), *target]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_a_user_error_under_two_processes_is_said_once(tmp_path):
    result = launch_two(tmp_path, "-m", "rlhflab", "pipeline", "--config", str(ROOT / "configs" / "quick.yaml"),
                        "rl.minibatch_size=5", f"runs_dir={tmp_path / 'runs'}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    # One line, from the main process (the minibatch rule's wording is config.py's to choose).
    assert len(errors) == 1 and errors[0].startswith("error: rl.minibatch_size (5) "), result.stderr[-3000:]
    assert result.returncode != 0 and not (tmp_path / "runs").exists()


SLOW_MAIN = """
import os, sys, time
from rlhflab import cli
from rlhflab.errors import RlhfLabError


def fails_everywhere(args):
    if os.environ["RANK"] == "0":
        time.sleep(3)  # the main process lags behind the other, as on a busy machine
    raise RlhfLabError("the same mistake on every process")


cli.COMMANDS["config"] = fails_everywhere
sys.exit(cli.main(["config"]))
"""


def test_the_main_process_says_a_user_error_even_when_it_hits_it_last(tmp_path):
    """The race behind a flaky CI run: the other process exited first and the launcher killed the
    main one before it printed. Now the other process waits for the main one to say it."""
    import time

    script = tmp_path / "slow_main.py"
    script.write_text(SLOW_MAIN)
    started = time.monotonic()
    result = launch_two(tmp_path, str(script))
    said = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert said == ["error: the same mistake on every process"], result.stderr[-3000:]
    assert result.returncode != 0
    assert time.monotonic() - started < 45  # the launcher ended the waiting process once the main one exited


@pytest.mark.parametrize("stage", ["dpo", "ilql"])
def test_two_processes_train_dpo_and_ilql_as_one_does_on_the_same_global_batch(tmp_path, tiny_llama_dir, reviews_csv,
                                                                               pairs_jsonl, stage):
    settings = {"dpo": [f"dpo.pairs.source={pairs_jsonl}", "dpo.pairs.fractions=[0.8,0.2,0.0]", "dpo.beta=0.5"],
                "ilql": ["ilql.max_length=24", "ilql.eval_betas=[0.0]"]}[stage]
    reward = tmp_path / "toy_reward.py"
    reward.write_text("def e_share(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n")

    def args(runs: Path) -> list[str]:
        return [f"data.source={reviews_csv}", "data.per_class=30", f"runs_dir={runs}", "name=mp", f"{stage}.policy={tiny_llama_dir}",
                f"reward_fn.source={reward}:e_share", "ppo.max_new_tokens=4", f"{stage}.max_steps=2", f"{stage}.batch_size=8",
                f"{stage}.learning_rate=5e-3", f"{stage}.warmup_ratio=0.0", f"{stage}.eval_prompts=4", "runtime.mixed_precision=no",
                *settings]

    run_ranks(tmp_path / "one", stage, *args(tmp_path / "runs1"), processes=1)
    two = run_ranks(tmp_path / "two", stage, *args(tmp_path / "runs2"), processes=2)
    assert two[0]["weights"] == two[1]["weights"]  # the ranks agree exactly
    files = ["model.safetensors", *(["ilql_heads.safetensors"] if stage == "ilql" else [])]
    for name in files:
        a = load_file(tmp_path / "runs1" / "mp" / stage / "model" / name)
        b = load_file(tmp_path / "runs2" / "mp" / stage / "model" / name)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4)
    trained, base = load_file(tmp_path / "runs1" / "mp" / stage / "model" / "model.safetensors"), load_file(tiny_llama_dir / "model.safetensors")
    assert any(not torch.equal(value, base[key]) for key, value in trained.items() if key in base)  # it trained


API_SCRIPT = """
import os, sys
import rlhflab
pairs = [{"prompt": "the film was", "chosen": " great and moving.", "rejected": " dull."}] * 8
result = rlhflab.train(sys.argv[1], pairs=pairs, progress=False, config={
    "runs_dir": sys.argv[2], "runtime": {"mixed_precision": "no"}, "data": {"source": sys.argv[3], "per_class": 30},
    "ppo": {"max_new_tokens": 4}, "dpo": {"max_steps": 2, "batch_size": 4, "eval_prompts": 4,
                                          "pairs": {"fractions": [0.5, 0.5, 0.0]}}})
rank = os.environ.get("RANK", "0")
# A file per rank, not stdout: the launcher may redirect or prefix the workers' output.
with open(os.path.join(sys.argv[2], f"rank{rank}.txt"), "w") as handle:
    handle.write(f"steps {result.summary['steps']} trained {result.run_dir}")
"""


@pytest.mark.parametrize("launch", [pytest.param(("--config_file", str(DDP)), id="ddp"),
                                    pytest.param(("--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"),
                                                  "--mixed_precision", "no"), id="fsdp", marks=pytest.mark.fsdp)])
def test_the_python_api_runs_under_accelerate_launch(tmp_path, tiny_llama_dir, reviews_csv, launch):
    script = tmp_path / "train.py"
    script.write_text(API_SCRIPT)
    env = child_env()
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2",
               "--main_process_port", str(_free_port()), str(script), str(tiny_llama_dir), str(tmp_path / "runs"), str(reviews_csv)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [path.read_text() if path.exists() else None for path in (tmp_path / "runs" / f"rank{r}.txt" for r in (0, 1))]
    assert said == [f"steps 2 trained {tmp_path / 'runs' / 'api' / 'dpo'}"] * 2, (result.stdout + result.stderr)[-3000:]
    assert (tmp_path / "runs" / "api" / "dpo" / "model" / "model.safetensors").exists()
