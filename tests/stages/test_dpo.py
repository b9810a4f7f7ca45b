"""The DPO stage on a tiny in-test Llama: on-policy and file pairs, the cached reference, the outputs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhflab.algorithms.dpo import TokenPair, encode_pairs, ranked_pairs
from rlhflab.config import Config, DataConfig, DpoConfig, OnPolicyPairsConfig, PairsConfig, PpoConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.ops.preference import sequence_logprobs
from rlhflab.stages.common import run_stage
from tests.helpers import FP32, load_example, typed_summary

REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]

def constant(prompts, responses):
    return [1.0 for r in responses]
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    return path


def make_config(tmp_path, model_dir, csv_path, reward, **fields) -> Config:
    settings = dict(policy=str(model_dir), max_steps=4, batch_size=4, learning_rate=5e-3, eval_batch_size=8,
                    eval_prompts=6, log_every=1, warmup_ratio=0.0, beta=0.5,
                    on_policy=OnPolicyPairsConfig(prompts=16, samples_per_prompt=3, batch_size=16))
    settings.update(fields)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(csv_path), per_class=30), reward_fn=RewardFnConfig(source=reward),
                  ppo=PpoConfig(max_new_tokens=6), dpo=DpoConfig(**settings))


def test_ranked_pairs_best_against_worst_or_all_and_no_pair_from_ties():
    scores = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.3], [2.0, -1.0, 2.0]])
    assert ranked_pairs(scores) == [[(1, 0)], [], [(0, 1)]]
    assert ranked_pairs(scores, "all") == [[(1, 0), (2, 0), (1, 2)], [], [(0, 1), (2, 1)]]
    with pytest.raises(RlhfLabError, match="Unknown pairing"):
        ranked_pairs(scores, "random")


def test_encoded_pair_logprobs_do_not_depend_on_padding(tiny_llama_dir):
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    short = TokenPair("p", "a", "b", (5, 6), (7, 8), (9,))
    long = TokenPair("q", "c", "d", (5, 6, 7, 8, 9, 10), (11, 12, 13, 14, 15), (16, 17, 18))

    def logprobs(pairs):
        split, mask, _ = encode_pairs(pairs, tokenizer, max_length=32)
        with torch.no_grad():
            logits = model(input_ids=split.input_ids, attention_mask=split.attention_mask).logits
        return sequence_logprobs(logits[:, :-1], split.input_ids[:, 1:], mask[:, 1:])

    alone, together = logprobs([short]), logprobs([short, long])
    assert torch.allclose(alone, together[[0, 2]], atol=1e-5)  # the short pair's chosen and rejected rows


def test_encode_pairs_cuts_the_prompt_from_its_front():
    class Tok:
        bos_token_id, eos_token_id, pad_token_id = None, 0, 0

    split, mask, cut = encode_pairs([TokenPair("", "", "", (1, 2, 3, 4), (5, 6), (7, 8, 9, 10, 11, 12))], Tok(), max_length=5)
    # The long response keeps its beginning and one prompt token to be predicted from.
    assert split.input_ids.tolist() == [[2, 3, 4, 5, 6], [4, 7, 8, 9, 10]]
    assert mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]] and cut == 1
    empty, mask, _ = encode_pairs([TokenPair("", "", "", (), (5,), (6,))], Tok(), max_length=5)
    assert empty.input_ids[:, 0].tolist() == [0, 0] and mask.tolist() == [[0, 1], [0, 1]]  # starts from EOS


def test_on_policy_dpo_runs_and_starts_at_the_reference(tmp_path, tiny_llama_dir, reviews_csv, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share")
    run_dir = run_stage("dpo", cfg, progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    assert typed_summary("dpo", run_dir.path).start == summary["start"]
    # Step 0: the policy is its own reference, so every pair's h is 0 and the loss is log 2.
    for metrics in summary["before"].values():
        assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert metrics["margin"] == pytest.approx(0.0, abs=1e-5)
    assert summary["start"]["kl"] == 0.0 and "score" in summary["end"]
    assert summary["after"]["train"]["loss"] < math.log(2)  # it learned the training pairs
    pairs = [json.loads(line) for line in (run_dir.path / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == summary["pairs"]["train"] + summary["pairs"]["validation"] + summary["pairs"]["test"]
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert summary["pairs"]["source"] == "on-policy"
    AutoModelForCausalLM.from_pretrained(run_dir.model_dir)  # a plain causal LM


def test_distill_on_all_pairs_starts_at_the_squared_reward_gaps(tmp_path, tiny_llama_dir, reviews_csv, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", loss="distill",
                      beta=0.02, learning_rate=1e-3,  # gaps of hundredths of a reward are h of about a nat at this β
                      on_policy=OnPolicyPairsConfig(prompts=16, samples_per_prompt=3, batch_size=16, pairing="all"))
    run_dir = run_stage("dpo", cfg, progress=False)
    summary = json.loads((run_dir.path / "summary.json").read_text())
    pairs = [json.loads(line) for line in (run_dir.path / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"]["pairing"] == "all" and len(pairs) > 16  # up to 3 pairs from each prompt's 3 samples
    assert max(sum(p["prompt"] == q["prompt"] for q in pairs) for p in pairs) <= 3
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    # Step 0: h is 0 on every pair, so the loss over all splits is the mean squared reward gap
    before = sum(m["loss"] * m["pairs"] for m in summary["before"].values()) / len(pairs)
    assert before == pytest.approx(sum((p["chosen_score"] - p["rejected_score"]) ** 2 for p in pairs) / len(pairs),
                                   rel=1e-4)
    assert summary["after"]["train"]["loss"] < summary["before"]["train"]["loss"]


def test_distill_needs_scored_pairs(tmp_path, tiny_llama_dir, reviews_csv, pairs_jsonl, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", loss="distill",
                      pairs=PairsConfig(source=str(pairs_jsonl)))
    with pytest.raises(RlhfLabError, match="loss is distill"):
        run_stage("dpo", cfg, progress=False)


def test_dpo_from_a_pairs_file_with_ipo(tmp_path, tiny_llama_dir, reviews_csv, pairs_jsonl, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", loss="ipo", learning_rate=2e-4,
                      pairs=PairsConfig(source=str(pairs_jsonl), fractions=[0.8, 0.2, 0.0]))
    summary = json.loads((run_stage("dpo", cfg, progress=False).path / "summary.json").read_text())
    assert summary["loss"] == "ipo" and summary["pairs"]["source"] == str(pairs_jsonl)
    assert summary["pairs"]["train"] == 32 and summary["pairs"]["validation"] == 8  # 40 pairs, 80% / 20%
    assert summary["after"]["train"]["loss"] < summary["before"]["train"]["loss"]


def test_the_nll_term_keeps_the_chosen_responses_likely(tmp_path, tiny_llama_dir, reviews_csv, pairs_jsonl, reward_file):
    """RPO (dpo.nll_coef): the same pairs and steps, with the chosen responses' NLL in the loss, end
    with the chosen responses more likely under the policy than DPO alone leaves them."""
    chosen = {}
    for coef in (0.0, 1.0):
        cfg = make_config(tmp_path / str(coef), tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", nll_coef=coef,
                          pairs=PairsConfig(source=str(pairs_jsonl), fractions=[0.8, 0.2, 0.0]))
        summary = json.loads((run_stage("dpo", cfg, progress=False).path / "summary.json").read_text())
        assert summary["nll_coef"] == coef
        chosen[coef] = summary["after"]["train"]["chosen_reward"]  # β (log π(y_w) - log π_ref(y_w)), mean
    assert chosen[1.0] > chosen[0.0]


def test_all_tied_samples_are_a_clear_error(tmp_path, tiny_llama_dir, reviews_csv, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:constant")
    with pytest.raises(RlhfLabError, match="scored the same"):
        run_stage("dpo", cfg, progress=False)


def test_dpo_resumed_after_an_interrupt_equals_an_uninterrupted_run(tmp_path, tiny_llama_dir, reviews_csv, reward_file,
                                                                   monkeypatch):
    from safetensors.torch import load_file

    from rlhflab.engine import loop as engine_loop
    from rlhflab.errors import RunInterrupted
    from tests.helpers import StopAt

    def config(folder):
        return make_config(folder, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", checkpoint_every=100)

    straight = run_stage("dpo", config(tmp_path / "a"), progress=False)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_stage("dpo", config(tmp_path / "b"), progress=False)
    monkeypatch.undo()
    resumed = run_stage("dpo", config(tmp_path / "b"), resume=True, progress=False)  # the pairs are sampled again, alike
    a, b = load_file(straight.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)


def test_at_step_zero_the_policy_scores_every_pair_as_the_cached_reference_does(tiny_llama_dir):
    from rlhflab.algorithms.dpo import DpoObjective
    from rlhflab.engine.runtime import Runtime
    from rlhflab.models.blocks import freeze_all_but_blocks
    from rlhflab.models.encoding import SplitForward, encode_and_cache, make_forward

    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    freeze_all_but_blocks(model, [2, 3])
    pairs = [TokenPair("", "", "", (5, 6, 7)[: 1 + i % 3], tuple(range(8, 9 + i % 4)), tuple(range(20, 22 + i % 2)))
             for i in range(6)]
    split, mask, _ = encode_pairs(pairs, tokenizer, max_length=16)
    runtime = Runtime.create("cpu", "no")
    data, first, _ = encode_and_cache(model, {"train": split}, tokenizer, max_length=16, append_eos=False, device="cpu",
                                      cache_frozen=True, batch_size=4, autocast=runtime.autocast, progress=False)
    assert first == 2  # the frozen lower blocks are cached, as in a real run
    objective = DpoObjective(make_forward(SplitForward(model, first), runtime.autocast), data, {"train": mask}, beta=0.5,
                             loss="sigmoid", batch_size=4, model=model, runtime=runtime)
    # training batches of 3 pairs (6 rows) against the reference scored in batches of 4 rows
    policy = torch.cat([objective.logprobs("train", torch.tensor([i, i + 1, i + 2, i + 6, i + 7, i + 8]))
                        for i in (0, 3)]).detach()
    reference = objective.reference["train"][[0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]]
    assert torch.allclose(policy, reference, atol=1e-5)
    assert objective.metrics("train")["loss"] == pytest.approx(objective.metrics("train", start=True)["loss"], abs=1e-6)


def _eval_records(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir.path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "eval"]


@pytest.mark.parametrize("reference", ["start", "previous_round"])
def test_two_rounds_sample_again_from_the_trained_policy(tmp_path, tiny_llama_dir, reviews_csv, reward_file, reference):
    one = run_stage("dpo", make_config(tmp_path / "one", tiny_llama_dir, reviews_csv, f"{reward_file}:e_share"),
                    progress=False)
    cfg = make_config(tmp_path / "two", tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", rounds=2,
                      reference=reference)
    two = run_stage("dpo", cfg, progress=False)
    first = json.loads((one.path / "summary.json").read_text())
    summary = json.loads((two.path / "summary.json").read_text())
    rounds = summary["by_round"]
    assert [r["round"] for r in rounds] == [1, 2] and [r["step"] for r in rounds] == [4, 8]  # steps continue
    assert rounds[0]["end"] == first["end"]  # round 1 is a one-round run
    assert summary["end"] == rounds[1]["end"] and rounds[1]["end"]["kl"] != rounds[0]["end"]["kl"]
    # Each round its own prompts (16 of the train split, the next 16 in round 2), sampled by the policy of the time.
    pairs = [json.loads(line) for line in (two.path / "pairs.jsonl").read_text().splitlines()]
    by_round = {n: [p for p in pairs if p["round"] == n] for n in (1, 2)}
    assert by_round[1] and by_round[2] and not {p["prompt"] for p in by_round[1]} & {p["prompt"] for p in by_round[2]}
    # Round 2 starts at its reference (loss log 2) only when the reference is the policy as the round began.
    loss = summary["before"]["train"]["loss"]
    assert (loss == pytest.approx(math.log(2), abs=1e-5)) == (reference == "previous_round")
    assert [(r["round"], r["step"], r["kl"]) for r in _eval_records(two)] == [(r["round"], r["step"], r["end"]["kl"])
                                                                            for r in rounds]
    from rlhflab.eval.frontier import frontier  # the real run folder: its rounds are the points of one line

    points = frontier([two.path], tmp_path / "frontier").data["points"]
    line = sorted((p["setting"]["round"], p["kl"]["mean"]) for p in points if p["method"] != "start")
    assert line == [(1, rounds[0]["end"]["kl"]), (2, rounds[1]["end"]["kl"])]
    assert {p["method"] for p in points} == {"start", "dpo" if reference == "start" else "dpo (reference: previous round)"}


@pytest.mark.parametrize("stop", ["in round 2", "at the end of round 1's loop", "between rounds"])
def test_two_rounds_resumed_equal_an_uninterrupted_run(tmp_path, tiny_llama_dir, reviews_csv, reward_file, monkeypatch,
                                                       stop):
    from safetensors.torch import load_file

    from rlhflab.engine import loop as engine_loop
    from rlhflab.errors import RunInterrupted
    from rlhflab.stages import dpo as dpo_stage
    from tests.helpers import StopAt

    def config(folder):
        return make_config(folder, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", rounds=2, checkpoint_every=100)

    straight = run_stage("dpo", config(tmp_path / "a"), progress=False)
    if stop == "between rounds":  # a Ctrl-C after round 1 was saved, before its evaluation was logged
        def interrupt(*args):
            raise KeyboardInterrupt

        monkeypatch.setattr(dpo_stage, "_log_round", interrupt)
    else:
        stop_request = StopAt(6 if stop == "in round 2" else 4)  # one for both rounds: its count goes on (4 steps each)
        monkeypatch.setattr(engine_loop, "StopRequest", lambda: stop_request)
    with pytest.raises((RunInterrupted, KeyboardInterrupt)):
        run_stage("dpo", config(tmp_path / "b"), progress=False)
    monkeypatch.undo()
    resumed = run_stage("dpo", config(tmp_path / "b"), resume=True, progress=False)
    a, b = load_file(straight.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    ends = [[r["end"] for r in json.loads((run.path / "summary.json").read_text())["by_round"]] for run in (straight, resumed)]
    assert len(ends[0]) == len(ends[1]) == 2 and all(a == pytest.approx(b) for a, b in zip(*ends))
    assert [(r["round"], r["step"]) for r in _eval_records(resumed)] == [(1, 4), (2, 8)]  # each logged once, in order
    steps = [json.loads(line)["step"] for line in (resumed.path / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_rounds_need_on_policy_pairs(tmp_path, tiny_llama_dir, reviews_csv, pairs_jsonl, reward_file):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", rounds=2,
                      pairs=PairsConfig(source=str(pairs_jsonl)))
    with pytest.raises(RlhfLabError, match="dpo.rounds is 2, but the pairs come from a file"):
        run_stage("dpo", cfg, progress=False)


def test_round_prompts_move_on_and_wrap_around():
    from rlhflab.stages.dpo import round_prompts

    prompts = [f"p{i}" for i in range(5)]
    assert [round_prompts(prompts, 2, n) for n in (1, 2, 3, 4)] == [["p0", "p1"], ["p2", "p3"], ["p4", "p0"], ["p1", "p2"]]
    assert round_prompts(prompts, 9, 2) == prompts  # more than there are: all of them, every round


def test_dpo_starts_from_the_same_held_out_samples_as_rl(tmp_path, tiny_llama_dir, reviews_csv, reward_file,
                                                         monkeypatch):
    """Common random numbers: one SFT model answers the held-out prompts alike in the RL and DPO
    stages, so their frontiers start at one point (before, the two drew differently: 0.525 against
    0.479 from one model on the offline default). Chunks of 3 prompts: each seeded apart."""
    from rlhflab.eval import held_out
    from rlhflab.stages import rl as rl_stage

    for module in (held_out, rl_stage):
        monkeypatch.setattr(module, "HELD_OUT_BATCH", 3)
    rl = PpoConfig(policy=str(tiny_llama_dir), steps=1, batch_size=4, minibatch_size=4, max_new_tokens=6, eval_prompts=8,
                   checkpoint_every=100)
    dpo = make_config(tmp_path, tiny_llama_dir, reviews_csv, str(reward_file) + ":e_share", max_steps=1, eval_prompts=8,
                      on_policy=OnPolicyPairsConfig(prompts=16, samples_per_prompt=3, batch_size=16, max_new_tokens=6))
    run_stage("rl", dataclasses.replace(dpo, rl=rl), progress=False)
    before = json.loads((tmp_path / "runs" / "tiny" / "rl" / "eval_before.json").read_text())
    start = json.loads((run_stage("dpo", dpo, progress=False).path / "summary.json").read_text())["start"]
    assert len(before) == 8 and len({r["response"] for r in before}) > 4  # sampled, not one answer
    assert start["score"] == pytest.approx(sum(r["score"] for r in before) / 8, abs=1e-12)


def test_the_optimum_gap_example_reads_a_dpo_stage_round_by_round(tmp_path, tiny_llama_dir, reviews_csv, reward_file,
                                                                   capsys):
    """examples/optimum_gap.py on a DPO stage: its β is dpo.beta, its points the rounds, its last answers eval_after.jsonl."""
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, f"{reward_file}:e_share", rounds=2, loss="distill",
                      beta=0.05)
    run_dir = run_stage("dpo", cfg, progress=False)
    example = load_example("optimum_gap")
    table = tmp_path / "prompts.csv"
    assert example.main([str(run_dir.path), "--samples", "4", "--per-prompt", str(table)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "optimum at β 0.05:" in lines[0]
    summary = json.loads((run_dir.path / "summary.json").read_text())
    points = [summary["start"]] + [r["end"] for r in summary["by_round"]]
    assert [line.split(":")[0] for line in lines[1:4]] == ["step    0", "step    1", "step    2"]  # the start, rounds 1-2
    assert [float(line.split("KL ")[1].split(",")[0].rstrip(")")) for line in lines[1:4]] == pytest.approx([p["kl"] for p in points], abs=5e-3)
    rows = list(csv.DictReader(table.read_text().splitlines()))
    answers = [json.loads(line) for line in (run_dir.path / "eval_after.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [a["prompt"] for a in answers]
    assert [float(r[f"{run_dir.path}:kl"]) for r in rows] == pytest.approx([a["kl"] for a in answers])
