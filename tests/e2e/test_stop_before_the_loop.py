"""SIGTERM before a stage's training loop starts (DPO sampling its on-policy pairs) ends like any
stop request: exit 130 with one line, and nothing half-made left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

REWARD = "def e_share(prompts, responses):\n    return [r.count('e') / max(len(r), 1) for r in responses]\n"


def test_sigterm_while_dpo_samples_its_pairs_exits_130_and_leaves_nothing(tmp_path, tiny_llama_dir, reviews_csv):
    runs = tmp_path / "runs"
    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD)
    args = [
        sys.executable, "-m", "rlhflab.cli", "dpo", "--no-progress", f"runs_dir={runs}", "name=t",
        f"data.source={reviews_csv}", "data.per_class=30", f"dpo.policy={tiny_llama_dir}", f"reward_fn.source={reward}:e_share",
        # many long samples: minutes of pair sampling before the first training step
        "dpo.on_policy.prompts=48", "dpo.on_policy.samples_per_prompt=64", "dpo.on_policy.max_new_tokens=64",
        "dpo.on_policy.batch_size=64", "dpo.eval_prompts=4", "generation.max_new_tokens=4", "dpo.max_steps=2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    partial = runs / "t" / "dpo.partial"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not (partial / "stage.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # into the model loading and sampling
    assert process.poll() is None and not (partial / "metrics.jsonl").exists()  # still before the loop
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)

    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted: dpo stopped before its first checkpoint; nothing of this run "
                                           "was kept (run the same command to start it again)."]
    assert not (runs / "t").exists() and not (runs / ".t.lock").exists()


def test_a_stop_while_the_command_starts_exits_130_with_one_line(monkeypatch, capsys):
    """Before any stage installs its handlers (parsing the command line): SIGTERM, and Ctrl-C
    sent to a background job (which starts with SIGINT ignored), both end with 130 and a word."""
    from rlhflab import cli

    def stopped_while_parsing(argv):
        os.kill(os.getpid(), sent)
        time.sleep(5)  # the handler interrupts this
        raise AssertionError("the stop request was not handled")

    monkeypatch.setattr(cli, "parse_args", stopped_while_parsing)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job
    try:
        for sent in (signal.SIGTERM, signal.SIGINT):
            assert cli.main(["sft"]) == 130
            assert capsys.readouterr().err == "interrupted\n"
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # put back as it was
    finally:
        signal.signal(signal.SIGINT, previous)
