"""The typed stage summaries (rlhflab/summaries.py): each writes the summary.json its stage wrote as
a dict before them, key for key and in the same order; older files without later keys still
read; unknown keys are ignored; a missing or mistyped key is one error naming file and key.
(The stage tests read every stage's real summary.json back through tests.helpers.typed_summary.)"""

from __future__ import annotations

import json

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.io import write_json
from rlhflab.pipeline import headline
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import RewardSummary, RlSummary, SftSummary, parse_summary, read_summary, summary_json

FACTS = {"peak_memory_mb": 812.5, "device": "cpu", "processes": 1, "mixed_precision": "no", "seconds": 12.3}
LOOP = {"steps": 6, "epochs_completed": 1, "stopped_early": False}
CACHE = {"used": True, "first_trainable_block": 2, "seconds": 0.41}
PARAMS = {"trainable": 1000, "total": 5000}
SPLITS = {"train": {"loss": 3.2, "perplexity": 24.5, "tokens": 900}, "validation": {"loss": 3.4, "perplexity": 30.0, "tokens": 300}}
HELD = {"step": 4, "kl": 0.5, "score": 0.25, "positive_probability": 0.6}
READS = {"max_length": 64, "limited_by": "reward.max_length", "texts": 8, "prompt_most": 0, "prompts_cut": 0,
         "responses_cut": 1}

# Each stage's summary.json as the stage wrote it before the types: the keys in the order of its
# dict (git show b575a5a:rlhflab/stages/<stage>.py), those written only sometimes included.
WRITTEN = {
    "sft": {"model": "tiny", "trainable": [-2, -1], "parameters": PARAMS, "examples": {"train": 36, "validation": 12},
            "left_out": {}, **LOOP, "train_tokens_per_s": 900.5, "before": SPLITS, "after": SPLITS,
            "frozen_cache": CACHE, **FACTS},
    "reward": {"objective": "labels", "model": "tiny-bert", "trainable": "all", "parameters": PARAMS,
               "examples": {"train": 36}, "left_out": {"rows without a label": 2}, "labels": "dataset labels",
               "metrics": {"test": {"accuracy": 0.9}}, "normalization": {"gain": 0.4, "bias": 0.1}, **LOOP,
               "train_examples_per_s": 40.0, "frozen_cache": CACHE, **FACTS, "confusion_matrix_test": [[5, 1], [0, 6]]},
    "rl": {"algorithm": "grpo", "rollout_engine": "hf", "samples_per_prompt": 4, "kl_penalty": "loss",
           "policy": "runs/x/sft", "reward": "callable", "reward_reads": READS, "trainable": [-1], "parameters": PARAMS,
           "reference": "frozen full copy", "left_out": {}, "steps": 4, "start": {**HELD, "step": 0}, "end": HELD,
           "evaluations": [HELD], "final_beta": 0.05, "rollout_tokens_per_s": 100.0, "train_tokens_per_s": 300.0,
           **FACTS},
    "evaluate": {"prompts": 12, "reward": "callable", "reference": "sft", "max_new_tokens": 6, "temperature": 0.7,
                 "models": {"sft": {"score": {"mean": 0.1}}}, "comparison": {}, "left_out": {}, "reward_reads": READS,
                 "judges": {"vader": {"accuracy": 0.8}}, "gold_agreement": {}, "best_of": {"model": "sft", "rows": []},
                 "figures": {"eval_reward_histograms": "figures/eval_reward_histograms.png"}, **FACTS},
    "dpo": {"algorithm": "dpo", "loss": "sigmoid", "beta": 0.1, "nll_coef": 0.0, "rounds": 1, "reference": "start", "policy": "runs/x/sft",
            "reward": None, "pairs": {"source": "pairs.jsonl", "train": 30}, "trainable": [-1], "parameters": PARAMS,
            "left_out": {}, "before": {"train": {"loss": 0.69}}, "after": {"train": {"loss": 0.5}}, "start": HELD,
            "end": HELD, "by_round": [{"round": 1, "step": 6, "end": HELD, "seconds": 3.0, "train_pairs": 30}], **LOOP,
            "train_pairs_per_s": 7.5, "frozen_cache": CACHE, **FACTS},
    "ilql": {"algorithm": "ilql", "policy": "runs/x/sft", "samples": {"source": "reviews", "train": 30}, "reward": None,
             "beta": 1.0, "top_k": 0, "trainable": [-1], "parameters": PARAMS, "left_out": {}, "after": {"train": {"loss": 2.0}},
             "start": HELD, "end": HELD, "by_beta": {"1.0": HELD}, **LOOP, "train_tokens_per_s": 500.0, "frozen_cache": CACHE,
             **FACTS},
    "pretrain": {"corpus": {"source": "verse.txt", "documents": 3}, "tokens": {"train": 900, "validation": 100},
                 "tokens_left_out": {"train": 4, "validation": 2}, "tokenizer": {"kind": "word", "vocab_size": 64},
                 "model": {"architecture": "gpt2", "parameters": 40000}, **LOOP, "train_tokens_per_s": 2000.0,
                 "epochs": [{"epoch": 1, "train_loss": 3.0}], "after": SPLITS, "baselines": {"unigram": 40.0, "bigram": 20.0},
                 "samples": [{"prompt": "ROMEO.\n", "response": " romeo"}], **FACTS},
    "overopt": {"run": "runs/x/rl", "prompts": 10, "max_new_tokens": 6, "separators": ["\n", ","],
                "judges": {"proxy": {"accuracy": 0.9}}, "points": [{"name": "start", "kl": 0.0}],
                "verdict": {"onset": None, "reason": "no onset", "rule": "onset = ..."}, "gold_peak": {},
                "figures": {}, **FACTS},
}


@pytest.mark.parametrize("stage", list(WRITTEN))
def test_a_summary_writes_the_json_its_stage_wrote_and_reads_back_equal(stage, tmp_path):
    written = WRITTEN[stage]
    kind = STAGES[stage].summary
    summary = kind(**written)  # the stage builds it with these keywords
    assert json.dumps(summary_json(summary), indent=2) == json.dumps(written, indent=2)  # same keys, values, order
    write_json(tmp_path / "summary.json", summary_json(summary))  # as RunDir.finish writes it
    assert (tmp_path / "summary.json").read_text() == json.dumps(written, indent=2) + "\n"
    assert read_summary(tmp_path, kind) == summary == STAGES[stage].read_summary(tmp_path)


def test_keys_written_only_sometimes_are_left_out_when_absent():
    labels = {k: v for k, v in WRITTEN["reward"].items() if k != "confusion_matrix_test"}
    assert list(summary_json(RewardSummary(**labels))) == list(labels)
    rl = {k: v for k, v in WRITTEN["rl"].items() if k != "reward_reads"}
    assert list(summary_json(RlSummary(**rl))) == list(rl)
    # a key always written keeps its null: dpo from a pairs file has no reward
    assert summary_json(STAGES["dpo"].summary(**WRITTEN["dpo"]))["reward"] is None


def test_an_old_summary_without_later_keys_reads_with_them_none():
    old = {k: v for k, v in WRITTEN["sft"].items() if k not in ("left_out", "processes", "mixed_precision")}
    summary = parse_summary(old, SftSummary, "runs/old/sft/summary.json")
    assert summary.left_out is None and summary.processes is None and summary.after == SPLITS
    rl = parse_summary({"start": HELD, "end": HELD, "policy": "runs/old/sft"}, RlSummary, "runs/old/ppo/summary.json")
    assert rl.algorithm is None and rl.steps is None and rl.policy == "runs/old/sft"


def test_unknown_keys_are_ignored():
    newer = {**WRITTEN["sft"], "a_key_from_a_newer_version": {"x": 1}}
    assert parse_summary(newer, SftSummary, "summary.json") == SftSummary(**WRITTEN["sft"])


def test_a_missing_required_key_is_one_error_naming_the_file_and_the_key(tmp_path):
    write_json(tmp_path / "summary.json", {k: v for k, v in WRITTEN["rl"].items() if k not in ("start", "end")})
    with pytest.raises(RlhfLabError) as caught:
        read_summary(tmp_path, RlSummary)
    message = str(caught.value)
    assert str(tmp_path / "summary.json") in message and "no start, end" in message and "--overwrite" in message


def test_a_top_level_value_of_another_type_is_one_error_naming_the_key():
    with pytest.raises(RlhfLabError, match=r"does not have the shape of the sft stage's summary.json "
                                           r"\(steps is str, not int or null; after is list, not dict\)"):
        parse_summary({**WRITTEN["sft"], "steps": "six", "after": []}, SftSummary, "summary.json")
    # an int is a float in JSON, a bool is not an int
    assert parse_summary({**WRITTEN["sft"], "seconds": 12}, SftSummary, "s").seconds == 12
    with pytest.raises(RlhfLabError, match="stopped_early"):
        parse_summary({**WRITTEN["sft"], "stopped_early": 1}, SftSummary, "s")
    with pytest.raises(RlhfLabError, match="steps is bool"):
        parse_summary({**WRITTEN["sft"], "steps": True}, SftSummary, "s")


def test_every_stage_declares_its_summary_type_and_the_line_reads_it():
    assert {name: stage.summary.__name__ for name, stage in STAGES.items()} == {
        "pretrain": "PretrainSummary", "sft": "SftSummary", "reward": "RewardSummary", "rl": "RlSummary",
        "dpo": "DpoSummary", "ilql": "IlqlSummary", "evaluate": "EvaluateSummary", "overopt": "OveroptSummary"}
    assert headline("sft", WRITTEN["sft"]) == "validation perplexity 30.0 -> 30.0"
    assert headline("rl", WRITTEN["rl"]) == "P(positive) 0.600 -> 0.600, KL 0.50"
    assert "not one rlhflab wrote" in headline("rl", {"start": HELD})  # no end
