"""FSDP 2 for real on the CPU (gloo, 2 processes) through `accelerate launch --config_file
configs/accelerate/fsdp.yaml`: Accelerate alone would fall back to DDP there (rlhflab's runtime turns
its FSDP plugin on, rlhflab/engine/runtime.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.test_multiprocess import ROOT, launch_two, pipeline_args, ppo_args, run_ranks, sft_args, toy_reward  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.fsdp]

FSDP = ("--config_file", str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--mixed_precision", "no")


def assert_same_weights(a: dict, b: dict, atol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=atol, rtol=1e-4)


def train_losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_llama_dir):
    """One SFT run on one process and one under FSDP on two, same global batch (2 steps, as the DDP
    test: over more steps Adam turns float-rounding differences in near-zero gradients into
    lr-sized ones), a checkpoint after each, shared by the asserts below."""
    from tests.helpers import synthetic_reviews
    import csv

    root = tmp_path_factory.mktemp("fsdp-sft")
    reviews = root / "reviews.csv"
    with open(reviews, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *synthetic_reviews(30)])
    # the frozen-block cache on for both (the default): the lower blocks run once, before `prepare`
    # 15 validation rows in batches of 7: shares of 8 and 7 rows take 2 and 1 forward passes, which
    # under FSDP are collectives unless gathered (before that fix: a silently wrong validation loss)
    args = lambda runs: [*sft_args(runs, tiny_llama_dir, reviews), "sft.checkpoint_every=1",  # noqa: E731
                         "data.fractions=[0.6,0.25,0.15]", "sft.eval_batch_size=7"]
    one = run_ranks(root / "one", "sft", *args(root / "runs1"), processes=1)
    two = run_ranks(root / "two", "sft", *args(root / "runs2"), processes=2, launch=FSDP)
    return root, args, one, two


def test_fsdp_sft_takes_the_steps_one_process_takes_on_the_same_global_batch(sft_runs, tiny_llama_dir):
    root, _, one, two = sft_runs
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"]  # the gathered weights agree exactly
    run1, run2 = root / "runs1" / "mp" / "sft", root / "runs2" / "mp" / "sft"
    a, b = load_file(run1 / "model" / "model.safetensors"), load_file(run2 / "model" / "model.safetensors")
    # FSDP reduce-scatters the gradients (DDP all-reduces them): the sums are rounded in another
    # order, and Adam's first steps, lr * g / (|g| + eps), turn the rounding of gradients that nearly
    # cancel into visible steps. Measured: 4.3e-5 after one step at lr 1e-2, 1.7e-4 after two, with
    # the same training loss to 1e-6; a missing or doubled half of the gradient would move weights by
    # about the learning rate (1e-2).
    assert_same_weights(a, b, atol=5e-4)
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert any(not torch.equal(value, base[name]) for name, value in a.items() if name in base)  # it trained
    assert train_losses(run2) == pytest.approx(train_losses(run1), abs=1e-5)
    validation = [[r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "validation"]
                  for run in (run1, run2)]
    assert validation[1] == pytest.approx(validation[0], abs=1e-5)  # measured 4e-8 (unevenly shared: 4.4e-4 off)
    steps = [[r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] for run in (run1, run2)]
    assert steps[1] == steps[0]  # one writer: no duplicates
    summary = json.loads((run2 / "summary.json").read_text())
    # the frozen lower blocks' outputs are reused under FSDP as on one process
    assert summary["processes"] == 2 and summary["frozen_cache"]["used"]


def test_fsdp_model_folder_is_a_plain_hugging_face_model(sft_runs):
    from transformers import AutoModelForCausalLM

    root = sft_runs[0]
    folder = root / "runs2" / "mp" / "sft" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)  # no FSDP, no accelerate: one process
    saved = load_file(folder / "model.safetensors")
    for name, param in model.named_parameters():
        if name in saved:
            assert type(param.data) is torch.Tensor and torch.equal(param.data, saved[name])


def test_an_interrupted_fsdp_run_resumes_to_the_uninterrupted_result(sft_runs):
    root, args, _, two = sft_runs
    runs = root / "runs-r"
    stopped = run_ranks(root / "stopped", "sft", *args(runs), "--stop-after", "1", processes=2, launch=FSDP)
    assert all(r["interrupted"] for r in stopped)
    state = torch.load(runs / "mp" / "sft.partial" / "checkpoints" / "latest" / "state.pt", weights_only=True)
    # the checkpoint holds whole tensors (no DTensor shards): it does not depend on the process count
    assert all(type(v) is torch.Tensor for v in state["model"].values())
    resumed = run_ranks(root / "resumed", "sft", *args(runs), "--resume", processes=2, launch=FSDP)
    assert resumed[0]["weights"] == resumed[1]["weights"] == two[0]["weights"]  # resume equals uninterrupted


def test_fsdp_reward_trains_a_fresh_head_to_what_one_process_trains(tmp_path, tiny_bert_dir, reviews_csv):
    """The reward model's fresh scalar head is on the meta device on the non-main processes until
    `prepare` broadcasts the main one's values (fsdp_cpu_ram_efficient_loading): the two runs must
    start, and so end, at the same weights."""
    args = lambda runs: [f"data.source={reviews_csv}", "data.per_class=30", f"reward.model={tiny_bert_dir}",  # noqa: E731
                         "reward.trainable=all", "reward.max_steps=2", "reward.batch_size=8", "reward.max_length=24",
                         "reward.learning_rate=1e-3", "reward.warmup_ratio=0.0", "reward.cache_frozen=false",
                         f"runs_dir={runs}", "name=mp", "runtime.mixed_precision=no"]
    run_ranks(tmp_path / "one", "reward", *args(tmp_path / "runs1"), processes=1)
    two = run_ranks(tmp_path / "two", "reward", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"]
    run1, run2 = tmp_path / "runs1" / "mp" / "reward", tmp_path / "runs2" / "mp" / "reward"
    weights = [load_file(run / "model" / "model.safetensors") for run in (run1, run2)]
    assert_same_weights(*weights, atol=5e-4)  # as SFT above: reduce-scatter, then two Adam steps
    summaries = [json.loads((run / "summary.json").read_text()) for run in (run1, run2)]
    assert summaries[1]["processes"] == 2
    assert summaries[1]["metrics"]["test"]["accuracy"] == summaries[0]["metrics"]["test"]["accuracy"]


def test_fsdp_pretrain_takes_the_steps_one_process_takes_and_samples_between_them(tmp_path):
    """Pretraining samples from fixed prompts at every evaluation: under FSDP every process gathers
    the weights and the main one samples (rlhflab/engine/sharding.py `gathered`), here after step 1
    of 2, so training goes on from the resharded model."""
    from tests.stages.test_pretrain import write_corpus

    corpus = write_corpus(tmp_path / "verse.txt", lines=200)
    args = lambda runs: [f"pretrain.corpus={corpus}", "pretrain.vocab_size=64", "pretrain.min_frequency=1",  # noqa: E731
                         "pretrain.layers=2", "pretrain.width=32", "pretrain.heads=2", "pretrain.context=16",
                         "pretrain.max_steps=2", "pretrain.batch_size=8", "pretrain.eval_every=1",
                         "pretrain.schedule=cosine", "pretrain.learning_rate=1e-2", "pretrain.warmup_ratio=0.0",
                         "pretrain.sample_prompts=[ROMEO.]", "pretrain.sample_tokens=6", f"runs_dir={runs}", "name=mp",
                         "runtime.mixed_precision=no"]
    run_ranks(tmp_path / "one", "pretrain", *args(tmp_path / "runs1"), processes=1)
    two = run_ranks(tmp_path / "two", "pretrain", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"]
    run1, run2 = tmp_path / "runs1" / "mp" / "pretrain", tmp_path / "runs2" / "mp" / "pretrain"
    # the same tolerance as SFT above: reduce-scatter against one process's sums, through two Adam steps
    assert_same_weights(load_file(run1 / "model" / "model.safetensors"), load_file(run2 / "model" / "model.safetensors"),
                        atol=5e-4)
    assert train_losses(run2) == pytest.approx(train_losses(run1), abs=1e-5)
    samples = [[json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()] for run in (run1, run2)]
    assert [r["step"] for r in samples[1]] == [r["step"] for r in samples[0]] == [1, 2]  # one writer, both evaluations
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run2 / "model")  # one process, no FSDP, no accelerate
    assert all(type(p.data) is torch.Tensor for p in model.parameters())


def records(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run / name).read_text().splitlines()]


def dpo_args(runs: Path, model: Path, csv: Path, reward: str) -> list[str]:
    # eval_batch_size 2 (one pair a forward pass) and 5 validation pairs and held-out prompts: the two
    # processes' shares take different numbers of forward passes (3 and 2)
    return [f"data.source={csv}", "data.per_class=30", f"runs_dir={runs}", "name=mp", f"dpo.policy={model}",
            f"reward_fn.source={reward}", "generation.max_new_tokens=4", "dpo.max_steps=2", "dpo.batch_size=8",
            "dpo.eval_batch_size=2", "dpo.learning_rate=5e-3", "dpo.warmup_ratio=0.0", "dpo.eval_prompts=5",
            "dpo.beta=0.5", "runtime.mixed_precision=no"]


def assert_resumes_to(straight: dict, tmp_path: Path, stage: str, args) -> None:
    """A run stopped after its first step under FSDP and resumed ends at the uninterrupted run's
    weights (`straight`: its rank report): the checkpoint's whole tensors go back into the shards."""
    stopped = run_ranks(tmp_path / "stopped", stage, *args(tmp_path / "runs-r"), "--stop-after", "1", processes=2, launch=FSDP)
    assert all(r["interrupted"] for r in stopped)
    resumed = run_ranks(tmp_path / "resumed", stage, *args(tmp_path / "runs-r"), "--resume", processes=2, launch=FSDP)
    assert resumed[0]["weights"] == resumed[1]["weights"] == straight["weights"]


def assert_one_writer_and_a_plain_model(one: Path, two: Path) -> None:
    """The same metric lines and held-out rows as one process (not twice), and a model/ folder that
    loads in one process without FSDP or accelerate."""
    from transformers import AutoModelForCausalLM

    assert [(r["step"], r["split"]) for r in records(two)] == [(r["step"], r["split"]) for r in records(one)]
    assert [r["prompt"] for r in records(two, "eval_after.jsonl")] == [r["prompt"] for r in records(one, "eval_after.jsonl")]
    assert json.loads((two / "summary.json").read_text())["processes"] == 2
    model = AutoModelForCausalLM.from_pretrained(two / "model")
    assert all(type(p.data) is torch.Tensor for p in model.parameters())


def test_fsdp_dpo_takes_the_steps_one_process_takes_on_the_same_global_batch(tmp_path, tiny_llama_dir, reviews_csv,
                                                                           pairs_jsonl, toy_reward):
    """DPO's reference log-probs, its validation metrics and its held-out evaluation (sampled inside
    `gathered`) under FSDP, from a file of pairs: the same pairs and batches as one process."""
    args = lambda runs: [*dpo_args(runs, tiny_llama_dir, reviews_csv, toy_reward),  # noqa: E731
                         f"dpo.pairs.source={pairs_jsonl}", "dpo.pairs.fractions=[0.875,0.125,0.0]", "dpo.checkpoint_every=1"]
    run_ranks(tmp_path / "one", "dpo", *args(tmp_path / "runs1"), processes=1)
    two = run_ranks(tmp_path / "two", "dpo", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"]
    run1, run2 = tmp_path / "runs1" / "mp" / "dpo", tmp_path / "runs2" / "mp" / "dpo"
    a, b = load_file(run1 / "model" / "model.safetensors"), load_file(run2 / "model" / "model.safetensors")
    # Measured: 5.1e-7 at most after 2 steps at lr 5e-3 (SFT above moves up to 1.7e-4: its near-zero
    # gradients of a whole review's tokens are where Adam magnifies rounding; DPO's pairs have fewer)
    assert_same_weights(a, b, atol=2e-5)
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert any(not torch.equal(value, base[name]) for name, value in a.items() if name in base)  # it trained
    assert train_losses(run2) == pytest.approx(train_losses(run1), abs=1e-5)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (run1, run2)]
    for when in ("before", "after"):
        assert summaries[1][when]["validation"]["pairs"] == summaries[0][when]["validation"]["pairs"] == 5
        assert summaries[1][when]["validation"]["loss"] == pytest.approx(summaries[0][when]["validation"]["loss"], abs=1e-5)
    assert_one_writer_and_a_plain_model(run1, run2)
    assert_resumes_to(two[0], tmp_path, "dpo", args)


def test_fsdp_on_policy_dpo_rounds_take_the_steps_ddp_takes(tmp_path, tiny_llama_dir, reviews_csv, toy_reward):
    """Two on-policy rounds: round 2 samples its pairs from the policy trained in round 1, scores them
    against the starting weights (the reference) and evaluates again. Compared with DDP on the same 2
    processes: each process samples its share of the prompts with its own seed, so one process would
    sample other pairs; the same seeds give the same pairs here when the sampled weights are whole."""
    args = lambda runs: [*dpo_args(runs, tiny_llama_dir, reviews_csv, toy_reward), "dpo.rounds=2",  # noqa: E731
                         "dpo.on_policy.prompts=8", "dpo.on_policy.samples_per_prompt=4", "dpo.pairs.fractions=[0.7,0.3,0.0]",
                         "dpo.max_steps=1"]
    run_ranks(tmp_path / "ddp", "dpo", *args(tmp_path / "runs1"), processes=2)
    two = run_ranks(tmp_path / "two", "dpo", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["weights"] == two[1]["weights"]
    run1, run2 = tmp_path / "runs1" / "mp" / "dpo", tmp_path / "runs2" / "mp" / "dpo"
    assert records(run2, "pairs.jsonl") == records(run1, "pairs.jsonl")  # round 2's samples: from whole weights
    assert {r["round"] for r in records(run2, "pairs.jsonl")} == {1, 2}
    a, b = load_file(run1 / "model" / "model.safetensors"), load_file(run2 / "model" / "model.safetensors")
    assert_same_weights(a, b, atol=2e-5)  # as PPO above: DDP against FSDP on the same processes
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert any(not torch.equal(value, base[name]) for name, value in a.items() if name in base)  # it trained
    rounds = [json.loads((run / "summary.json").read_text())["by_round"] for run in (run1, run2)]
    assert [r["step"] for r in rounds[1]] == [r["step"] for r in rounds[0]] == [1, 2]
    for a, b in zip(*rounds):
        assert b["end"]["score"] == pytest.approx(a["end"]["score"], abs=1e-6)
        assert b["end"]["kl"] == pytest.approx(a["end"]["kl"], abs=1e-4)
    assert_one_writer_and_a_plain_model(run1, run2)


def test_fsdp_ilql_takes_the_steps_one_process_takes_on_the_same_global_batch(tmp_path, tiny_llama_dir, reviews_csv,
                                                                            toy_reward):
    """ILQL's heads train inside the sharded module beside the LM (their targets move by Polyak
    averaging of shards), and its held-out evaluation samples steered by the heads inside `gathered`."""
    args = lambda runs: [f"data.source={reviews_csv}", "data.per_class=30", f"runs_dir={runs}", "name=mp",  # noqa: E731
                         f"ilql.policy={tiny_llama_dir}", f"reward_fn.source={toy_reward}", "generation.max_new_tokens=4",
                         "ilql.max_steps=2", "ilql.batch_size=8", "ilql.eval_batch_size=2", "ilql.learning_rate=5e-3",
                         "ilql.warmup_ratio=0.0", "ilql.eval_prompts=5", "ilql.max_length=24", "ilql.eval_betas=[0.0]",
                         "ilql.checkpoint_every=1", "runtime.mixed_precision=no"]
    run_ranks(tmp_path / "one", "ilql", *args(tmp_path / "runs1"), processes=1)
    two = run_ranks(tmp_path / "two", "ilql", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"]
    run1, run2 = tmp_path / "runs1" / "mp" / "ilql", tmp_path / "runs2" / "mp" / "ilql"
    # Measured: 1.8e-7 at most on the LM, 2.3e-7 on the heads after 2 steps at lr 5e-3
    for name in ("model.safetensors", "ilql_heads.safetensors"):  # the heads' file holds the target heads too
        assert_same_weights(load_file(run1 / "model" / name), load_file(run2 / "model" / name), atol=2e-5)
    assert train_losses(run2) == pytest.approx(train_losses(run1), abs=1e-5)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (run1, run2)]
    for name, row in summaries[0]["after"].items():
        assert summaries[1]["after"][name] == pytest.approx(row, abs=1e-5)
    assert sorted(summaries[1]["by_beta"]) == sorted(summaries[0]["by_beta"]) == ["0.0", "1.0"]
    assert_one_writer_and_a_plain_model(run1, run2)
    assert_resumes_to(two[0], tmp_path, "ilql", args)  # the target heads too (Polyak averages of shards)


def test_fsdp_ilql_on_the_policys_own_samples_trains_on_every_processs_share(tmp_path, tiny_llama_dir, reviews_csv,
                                                                           toy_reward):
    """ilql.samples=on_policy on 2 processes: each samples its share of the prompts (with its own seed, so
    the responses are not one process's), and both train on all of them, in one process's prompt order,
    written once to samples.jsonl."""
    args = lambda runs: [f"data.source={reviews_csv}", "data.per_class=30", f"runs_dir={runs}", "name=mp",  # noqa: E731
                         f"ilql.policy={tiny_llama_dir}", f"reward_fn.source={toy_reward}", "generation.max_new_tokens=4",
                         "ilql.samples=on_policy", "ilql.on_policy.prompts=7", "ilql.on_policy.samples_per_prompt=2",
                         "ilql.on_policy.batch_size=4", "ilql.max_steps=1", "ilql.batch_size=4", "ilql.eval_batch_size=2",
                         "ilql.eval_prompts=3", "ilql.max_length=24", "ilql.eval_betas=[0.0]", "runtime.mixed_precision=no"]
    run_ranks(tmp_path / "one", "ilql", *args(tmp_path / "runs1"), processes=1)
    two = run_ranks(tmp_path / "two", "ilql", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["weights"] == two[1]["weights"]
    run1, run2 = tmp_path / "runs1" / "mp" / "ilql", tmp_path / "runs2" / "mp" / "ilql"
    one, both = records(run1, "samples.jsonl"), records(run2, "samples.jsonl")
    assert [(r["split"], r["prompt"]) for r in both] == [(r["split"], r["prompt"]) for r in one] and len(one) == 14
    for row in both:
        assert row["reward"] == pytest.approx(row["response"].count("e") / max(len(row["response"]), 1))
    summaries = [json.loads((run / "summary.json").read_text())["samples"] for run in (run1, run2)]
    assert summaries[1]["train"] == summaries[0]["train"] == 12 and summaries[1]["validation"] == 2
    assert_one_writer_and_a_plain_model(run1, run2)


def test_fsdp_ppo_takes_the_steps_ddp_takes(tmp_path, tiny_llama_dir, reviews_csv, toy_reward):
    """PPO samples, scores and evaluates outside the sharded forward (rlhflab/engine/sharding.py
    `gathered`). Compared with DDP on the same 2 processes, not with one process: PPO's minibatches
    are drawn from each process's own rollouts and its samples are seeded per process, so one process
    trains on other minibatches even under DDP (tests/distributed/test_multiprocess.py checks DDP's
    lockstep and resume). Same seeds per process here: the same rollouts, the same minibatches."""
    # 12 training prompts: the second step's 8 start the second pass over them, so each run saves
    # the per-epoch snapshot (checkpoints/epoch-1) that the over-optimisation study reads
    args = lambda runs: [*ppo_args(runs, tiny_llama_dir, reviews_csv, toy_reward), "ppo.steps=2",  # noqa: E731
                         "data.fractions=[0.2,0.4,0.4]"]
    ddp = run_ranks(tmp_path / "ddp", "rl", *args(tmp_path / "runs1"), processes=2)
    two = run_ranks(tmp_path / "two", "rl", *args(tmp_path / "runs2"), processes=2, launch=FSDP)
    assert two[0]["world_size"] == 2 and two[0]["weights"] == two[1]["weights"] and two[0]["beta"] == two[1]["beta"]
    run1, run2 = tmp_path / "runs1" / "mp" / "rl", tmp_path / "runs2" / "mp" / "rl"
    # Measured: 1.6e-6 at most on the LM's weights and 1.1e-8 on the value head after 2 steps (4
    # Adam steps at lr 1e-3), the same scores and KL to 5e-7: FSDP reduce-scatters the gradients
    # where DDP all-reduces them (another rounding order). 2e-5 is 12 times that and 50 times less
    # than one step; sampling from stale or half weights would change the rollouts, hence the scores.
    for name in ("model.safetensors", "value_head.safetensors"):
        assert_same_weights(load_file(run1 / "model" / name), load_file(run2 / "model" / name), atol=2e-5)
    records = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (run1, run2)]
    assert [(r["step"], r["split"]) for r in records[1]] == [(r["step"], r["split"]) for r in records[0]]  # one writer
    for a, b in zip(*records):
        assert b.get("score_mean") == pytest.approx(a.get("score_mean"), abs=1e-6)
        assert b["kl"] == pytest.approx(a["kl"], abs=1e-5)
    # the snapshot holds whole tensors (every process gathers, the main one writes), not one shard
    snapshots = [sorted(path.name for path in (run / "checkpoints").glob("epoch-*")) for run in (run1, run2)]
    assert snapshots[0] == snapshots[1] == ["epoch-1"]
    # bf16 on disk: one rounding step (2^-8 relative) may fall either side of weights 2e-5 apart
    assert_same_weights(*(load_file(run / "checkpoints" / "epoch-1" / "weights.safetensors") for run in (run1, run2)), atol=1e-2)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run2 / "model")  # one process, no FSDP, no accelerate
    assert all(type(p.data) is torch.Tensor for p in model.parameters())


def test_the_pipeline_runs_every_stage_under_fsdp_writes_once_and_stays_up_to_date(tmp_path, tiny_llama_dir,
                                                                                    tiny_bert_dir, reviews_csv):
    """`rlhflab pipeline` under FSDP end to end: each stage trains (or evaluates) on 2 processes,
    the main one says each line and writes the report once, and a second launch finds every stage up
    to date (the stage keys do not depend on the process count)."""
    args = ["-m", "rlhflab", "pipeline", *pipeline_args(tmp_path / "runs", tiny_llama_dir, tiny_bert_dir, reviews_csv)]
    first = launch_two(tmp_path, *args, launch=FSDP)
    assert first.returncode == 0, first.stderr[-3000:]
    stages = ["sft", "reward", "rl", "evaluate"]
    assert [line.split()[0] for line in first.stdout.splitlines() if " done in " in line] == [*stages, "report"], first.stdout
    run = tmp_path / "runs" / "mp"
    summaries = {stage: json.loads((run / stage / "summary.json").read_text()) for stage in stages}
    assert all(summary["processes"] == 2 for summary in summaries.values())
    assert summaries["sft"]["frozen_cache"]["used"] and summaries["reward"]["frozen_cache"]["used"]  # reused under FSDP
    assert (run / "report" / "report.html").is_file()
    again = launch_two(tmp_path, *args, launch=FSDP)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line.split()[0] for line in again.stdout.splitlines() if " up to date " in line] == stages, again.stdout
