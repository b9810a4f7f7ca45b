"""The evaluate stage on tiny in-test models: schema, KL against itself, padding invariance."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhflab.config import Config, DataConfig, EvaluateConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.eval.generate import generate, response_logprobs
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.stages import evaluate
from rlhflab.stages.common import run_stage
from tests.helpers import FP32, typed_summary

REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(len(r), 1) for r in responses]
'''


@pytest.fixture
def perturbed_llama_dir(tmp_path, tiny_llama_dir):
    """A second model from the same base: the tiny Llama with noise on its weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    folder = tmp_path / "perturbed"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(folder)
    return folder


def make_config(tmp_path, reviews_csv, models, **fields) -> Config:
    reward = tmp_path / "toy_reward.py"
    reward.write_text(REWARD_FILE)
    settings = dict(models=models, prompts=12, max_new_tokens=6, batch_size=5)
    settings.update(fields)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"), data=DataConfig(source=str(reviews_csv), per_class=30),
                  reward_fn=RewardFnConfig(source=f"{reward}:e_share"), evaluate=EvaluateConfig(**settings))


def test_evaluate_writes_the_agreed_summary_and_samples(tmp_path, reviews_csv, tiny_llama_dir, perturbed_llama_dir,
                                                        monkeypatch):
    cfg = make_config(tmp_path, reviews_csv, {"sft": str(tiny_llama_dir), "ppo": str(perturbed_llama_dir)})
    monkeypatch.chdir(tmp_path)
    cfg.runs_dir = "runs"  # relative, as in the presets
    run_dir = run_stage("evaluate", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["prompts"] == 12 and summary["reference"] == "sft"
    assert list(summary["models"]) == ["sft", "ppo"]
    sft, ppo = summary["models"]["sft"], summary["models"]["ppo"]
    assert sft["kl_to_reference"] == 0.0  # the reference against itself
    assert ppo["kl_to_reference"] != 0.0
    for model in (sft, ppo):
        assert set(model) >= {"source", "parameters", "size_mb", "score", "positive_probability", "kl_to_reference",
                              "perplexity_under_reference", "distinct_1", "distinct_2", "mean_length", "by_sentiment"}
        assert model["positive_probability"] is None  # a callable reward has no probability
        assert model["parameters"] > 0 and model["size_mb"] > 0
        assert 0 < model["perplexity_under_reference"] < float("inf")
        assert 0 < model["mean_length"] <= 6
        # Without a probability, prompts are grouped by their review's label.
        assert sum(group["n"] for group in model["by_sentiment"].values()) == 12
    shares = summary["comparison"]["ppo"]
    assert shares["vs"] == "sft" and shares["better"] + shares["worse"] + shares["same"] == pytest.approx(1.0)
    rows = [json.loads(line) for line in (run_dir.path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {r["model"] for r in rows} == {"sft", "ppo"}
    assert set(rows[0]) == {"prompt_id", "prompt", "sentiment", "model", "source", "response", "score", "positive_probability"}
    by_model = {m: [r for r in rows if r["model"] == m] for m in ("sft", "ppo")}
    assert [r["prompt"] for r in by_model["sft"]] == [r["prompt"] for r in by_model["ppo"]]
    for name, figure in summary["figures"].items():
        assert (run_dir.path / figure).stat().st_size > 1000, name
    assert "sft" in evaluate.format_summary(typed_summary("evaluate", run_dir.path))


def test_missing_default_models_name_the_command_to_run(tmp_path, reviews_csv):
    cfg = make_config(tmp_path, reviews_csv, None)
    with pytest.raises(RlhfLabError, match="rlhflab sft"):
        run_stage("evaluate", cfg, progress=False)


def test_response_logprobs_do_not_depend_on_padding_or_batch_size(tiny_llama_dir):
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    prompts = ["the film was", "a dull plot and the acting", "it", "great"]
    generations = generate(model, tokenizer, prompts, max_new_tokens=6, seed=3, batch_size=4)
    together = response_logprobs(model, generations, pad_token_id=tokenizer.pad_token_id, batch_size=4)
    alone = response_logprobs(model, generations, pad_token_id=tokenizer.pad_token_id, batch_size=1)
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert all(len(lp) == len(g.response_ids) for lp, g in zip(together, generations))


def test_generation_is_seeded(tiny_llama_dir):
    model, tokenizer = load_causal_lm(str(tiny_llama_dir))
    first = generate(model, tokenizer, ["the film was"] * 3, max_new_tokens=6, seed=5)
    again = generate(model, tokenizer, ["the film was"] * 3, max_new_tokens=6, seed=5)
    assert [g.response_ids for g in first] == [g.response_ids for g in again]


def test_best_of_n_keeps_the_best_of_the_first_n_samples(tmp_path, reviews_csv, tiny_llama_dir):
    cfg = make_config(tmp_path, reviews_csv, {"sft": str(tiny_llama_dir)}, best_of=[4, 2], best_of_prompts=3)
    prompts = tmp_path / "eval.txt"
    prompts.write_text("the film\n\nthe plot\nthe cast\n  \nan ending\n", encoding="utf-8")
    cfg.data.eval_prompts = str(prompts)
    run_dir = run_stage("evaluate", cfg, progress=False)
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["prompts"] == 4 and summary["left_out"] == {"prompts left blank in data.eval_prompts": 2}
    best = summary["best_of"]
    assert best["model"] == "sft" and best["prompts"] == 3 and best["drawn"] == 4
    assert [r["n"] for r in best["rows"]] == [1, 2, 4]  # n = 1 always: the baseline on the same prompts
    assert [r["kl_bound"] for r in best["rows"]] == pytest.approx([0.0, torch.log(torch.tensor(2.0)).item() - 0.5,
                                                                   torch.log(torch.tensor(4.0)).item() - 0.75])
    # more samples to choose from never lowers the mean of the kept (the first n are a prefix of the first 2n)
    scores = [r["score"] for r in best["rows"]]
    assert scores == sorted(scores) and scores[-1] > scores[0]
    # the optimum at each KL budget the 4 samples can measure (below log 4): never below the samples' mean
    budgets = [o["kl"] for o in best["optimum"]]
    assert budgets and budgets == list(evaluate.OPTIMUM_BUDGETS[: len(budgets)]) and budgets[-1] < math.log(4)
    values = [o["score"] for o in best["optimum"]]
    assert values == sorted(values) and values[-1] <= scores[-1] + 1e-9  # at most the best of 4 on average
    with pytest.raises(RlhfLabError, match="best_of"):
        from rlhflab.config import check_evaluate

        check_evaluate(EvaluateConfig(best_of=[0]))
    printed = evaluate.format_summary(typed_summary("evaluate", run_dir.path))
    assert "best-of-n from sft on the first 3 prompts" in printed and "any policy reaches within a KL budget" in printed


def test_evaluate_scores_at_the_reward_models_training_length_and_counts_crowding_prompts(tmp_path, reviews_csv,
                                                                                          tiny_llama_dir, tiny_tokenizer_dir):
    """Issue 19: the reward model reads the 6 tokens it was trained on (not reward_fn.max_length's 512),
    and summary.json counts the texts whose prompt took more than half of them (one-token answers to
    prompts of 3 to 5 tokens)."""
    from dataclasses import replace

    from transformers import BertConfig, BertForSequenceClassification

    from rlhflab.data import join_prompt_response
    from rlhflab.models.encoding import fit_prompt_response
    from rlhflab.models.reward_model import RewardMeta, save_reward_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1, id2label={0: "POSITIVE"}, label2id={"POSITIVE": 0},
                        pad_token_id=tokenizer.pad_token_id or 0)
    torch.manual_seed(0)
    meta = RewardMeta(objective="labels", gain=1.0, bias=0.0, reference="test", base_model="x", max_length=6)
    save_reward_model(BertForSequenceClassification(config).eval(), tokenizer, meta, tmp_path / "reward" / "model")
    cfg = make_config(tmp_path, reviews_csv, {"sft": str(tiny_llama_dir)}, max_new_tokens=1)
    cfg.reward_fn = replace(cfg.reward_fn, source=str(tmp_path / "reward"))
    summary = json.loads(run_stage("evaluate", cfg, progress=False).summary_path.read_text())
    reads = summary["reward_reads"]
    assert summary["reward"].endswith("reads 6 tokens)")
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "evaluate" / "samples.jsonl").read_text().splitlines()]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    fitted = fit_prompt_response([r["prompt"] for r in rows], [r["response"] for r in rows], tokenizer, 6, long_response="truncate")
    assert reads == {"max_length": 6, "limited_by": "the length it was trained on, reward.max_length", "texts": 12,
                     "prompt_most": sum(2 * n > 6 for n in fitted.prompt_tokens), "prompts_cut": fitted.prompts_cut,
                     "responses_cut": fitted.responses_cut}
    assert 0 < reads["prompt_most"] < 12  # prompts of 4 or 5 tokens, not those of 3
    assert max(len(tokenizer(join_prompt_response(r["prompt"], r["response"]))["input_ids"]) for r in rows) > 6  # 512 would differ


def test_evaluate_holds_one_language_model_at_a_time_with_the_same_figures(tmp_path, reviews_csv, tiny_llama_dir,
                                                                           perturbed_llama_dir, monkeypatch):
    """Each model is dropped before the next loads (the reference is loaded again for the others'
    log-probs), and KL and perplexity are those of both models side by side (model_metrics)."""
    import gc
    import weakref

    cfg = make_config(tmp_path, reviews_csv, {"sft": str(tiny_llama_dir), "ppo": str(perturbed_llama_dir)})
    alive: list[weakref.ref] = []
    most = [0]
    loads: list[str] = []

    def counting_load(source, **kwargs):
        gc.collect()
        most[0] = max(most[0], 1 + sum(ref() is not None for ref in alive))
        loads.append(str(source))
        model, tokenizer = load_causal_lm(source, **kwargs)
        alive.append(weakref.ref(model))
        return model, tokenizer

    monkeypatch.setattr(evaluate, "load_causal_lm", counting_load)
    summary = json.loads(run_stage("evaluate", cfg, progress=False).summary_path.read_text())
    assert most[0] == 1
    assert loads == [str(tiny_llama_dir), str(perturbed_llama_dir), str(tiny_llama_dir)]
    prompts = evaluate.eval_prompts(cfg)[0]
    sft, tokenizer = load_causal_lm(str(tiny_llama_dir))
    ppo, _ = load_causal_lm(str(perturbed_llama_dir))
    generations = generate(ppo, tokenizer, prompts, max_new_tokens=6, seed=0, batch_size=5)
    together = evaluate.model_metrics(ppo, sft, generations, tokenizer, tokenizer, cfg.evaluate, evaluate.Runtime.create("cpu", "no"))
    for key in ("kl_to_reference", "perplexity_under_reference", "mean_length", "parameters", "size_mb"):
        assert summary["models"]["ppo"][key] == pytest.approx(together[key], rel=1e-5), key
