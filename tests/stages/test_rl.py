"""PPO on a tiny in-test Llama: the properties of issue 4, each a real assertion."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rlhflab.config import Config, DataConfig, PpoConfig, RewardFnConfig
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.policy import build_policy, policy_forward
from rlhflab.rollout import response_mask_from, sample, score_rollout
from rlhflab.stages import rl as rl_stage
from rlhflab.stages.common import run_stage
from rlhflab.engine import loop as engine_loop
from tests.helpers import StopAt, load_example, typed_summary
from tests.helpers import FP32

REWARD_FILE = '''
def e_share(prompts, responses):
    """Toy reward: the share of characters that are the letter e."""
    return [r.count("e") / max(len(r), 1) for r in responses]
'''


@pytest.fixture
def reward_spec(tmp_path):
    path = tmp_path / "toy_reward.py"
    path.write_text(REWARD_FILE)
    return f"{path}:e_share"


def make_config(tmp_path, model_dir, csv_path, reward_spec, **fields) -> Config:
    settings = dict(policy=str(model_dir), steps=4, batch_size=8, minibatch_size=4, ppo_epochs=2, learning_rate=1e-3,
                    max_new_tokens=8, eval_prompts=8, eval_every=2, sample_every=2, checkpoint_every=100, kl_coef=0.05)
    settings.update(fields)
    return Config(runtime=FP32, name="tiny", seed=0, runs_dir=str(tmp_path / "runs"),
                  data=DataConfig(source=str(csv_path), per_class=30),
                  reward_fn=RewardFnConfig(source=reward_spec), ppo=PpoConfig(**settings))


def tiny_policy(model_dir, trainable=(-2, -1)):
    model, tokenizer = load_causal_lm(str(model_dir))
    tokenizer.padding_side = "left"
    probe = tokenizer(["the film was", "a plot"], return_tensors="pt", padding=True)
    policy = build_policy(model, list(trainable) if trainable not in ("all", "lora") else trainable,
                          _Lora(), probe=(probe.input_ids, probe.attention_mask))
    return policy, tokenizer


class _Lora:
    r, alpha, dropout, target_modules = 4, 8, 0.0, None


def rollout(policy, tokenizer, prompts, reward=lambda p, r: torch.ones(len(r))):
    nullctx = torch.autocast("cpu", enabled=False)
    stop_ids = [tokenizer.eos_token_id]
    sampled = sample(policy, tokenizer, prompts, max_new_tokens=8, temperature=1.0, top_k=0,
                     top_p=1.0, stop_ids=stop_ids, autocast=lambda: nullctx)
    return score_rollout(policy, tokenizer, reward, prompts, sampled, temperature=1.0,
                         stop_ids=stop_ids, non_stop_penalty=None, autocast=lambda: nullctx)


PROMPTS = ["the film was", "a dull plot and", "the cast", "it was great and the ending"]


@pytest.mark.parametrize("trainable", [(-2, -1), "lora", "all"])
def test_at_step_zero_kl_is_exactly_zero_and_the_ratio_is_one(tiny_llama_dir, trainable):
    torch.manual_seed(0)
    policy, tokenizer = tiny_policy(tiny_llama_dir, trainable)
    exp = rollout(policy, tokenizer, PROMPTS)
    assert torch.equal(exp.logprobs, exp.ref_logprobs)  # policy == reference, bit for bit
    policy.model.train()
    out = policy_forward(policy, exp.input_ids, exp.attention_mask, exp.response_start, 1.0, exp.lower)
    logprobs = out.logprobs
    ratio = torch.exp(logprobs - exp.logprobs)[exp.response_mask.bool()]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-6, rtol=0)
    assert torch.all(out.values == 0)  # the value head starts at zero


def test_training_forward_log_probs_equal_the_sampling_distribution(tiny_llama_dir):
    policy, tokenizer = tiny_policy(tiny_llama_dir)
    torch.manual_seed(1)
    tokenizer.padding_side = "left"
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    gen = policy.model.generate(**enc, do_sample=True, top_k=0, top_p=1.0, temperature=0.7, max_new_tokens=8,
                                output_scores=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)
    width = enc.input_ids.shape[1]
    response = gen.sequences[:, width:]
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in gen.scores], dim=1)
    sampled = sampled.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    mask, _ = response_mask_from(response, [tokenizer.eos_token_id])
    attention = torch.cat([enc.attention_mask, mask], dim=1)
    out = policy_forward(policy, gen.sequences, attention, width, 0.7)
    recomputed = out.logprobs
    torch.testing.assert_close(recomputed[mask.bool()], sampled[mask.bool()], atol=1e-4, rtol=0)


def test_padding_and_batch_size_do_not_change_log_probs_values_or_scores(tiny_llama_dir, reward_spec):
    from rlhflab.rewards import build_reward

    policy, tokenizer = tiny_policy(tiny_llama_dir)
    reward = build_reward(RewardFnConfig(source=reward_spec))
    torch.manual_seed(2)
    batch = rollout(policy, tokenizer, PROMPTS, reward)
    for i, prompt in enumerate(PROMPTS):
        seq = batch.input_ids[i : i + 1]
        keep = batch.attention_mask[i].bool()
        keep[batch.response_start:] = True  # the response slots stay (masked ones too)
        alone_ids = seq[:, keep]
        prompt_len = int(batch.attention_mask[i, : batch.response_start].sum())
        alone_mask = torch.cat([torch.ones(1, prompt_len, dtype=torch.long), batch.response_mask[i : i + 1]], dim=1)
        out = policy_forward(policy, alone_ids, alone_mask, prompt_len, 1.0)
        logprobs = out.logprobs
        valid = batch.response_mask[i].bool()
        torch.testing.assert_close(logprobs[0, valid], batch.logprobs[i, valid], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.values[0, valid], batch.values[i, valid], atol=1e-5, rtol=0)
    alone_scores = torch.cat([reward([p], [r]) for p, r in zip(batch.prompts, batch.responses)])
    torch.testing.assert_close(alone_scores, batch.scores)


def test_ppo_run_writes_everything_keeps_the_reference_and_trains_every_trainable_weight(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec)
    run_dir = run_stage("rl", cfg, progress=False)
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "summary.json", "model/config.json",
                 "model/value_head.safetensors", "checkpoints/latest/state.json", "eval_before.json", "eval_after.json"):
        assert (run_dir.path / name).exists(), name
    records = run_dir.read_metrics()
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for key in ("score_mean", "score_std", "kl", "beta", "non_score_reward", "policy_loss", "value_loss", "clip_fraction",
                "approx_kl", "entropy", "explained_variance", "response_length", "rollout_tokens_per_s", "train_tokens_per_s"):
        assert key in train[0], key
    assert train[0]["kl"] == 0.0 and train[0]["clip_fraction"] >= 0.0
    summary = json.loads(run_dir.summary_path.read_text())
    assert summary["start"]["step"] == 0 and summary["end"]["step"] == 4
    assert typed_summary("rl", run_dir.path).end == summary["end"]
    # 4 steps x 8 prompts over 36 training prompts: the first pass ends at step 5, so none yet.
    assert not list((run_dir.checkpoint_dir).glob("epoch-*"))
    assert summary["reference"].startswith("shared frozen blocks")

    before = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    after = AutoModelForCausalLM.from_pretrained(run_dir.model_dir).state_dict()
    for name, value in before.items():
        trained = name.startswith("model.layers.2.") or name.startswith("model.layers.3.")
        assert (not torch.equal(value, after[name])) == trained, name


def test_reference_is_bit_identical_after_updates(tiny_llama_dir, reward_spec):
    from rlhflab.algorithms.online import OnlineRL, gae_targets
    from rlhflab.config import resolve_rl
    from rlhflab.engine.runtime import Runtime
    from rlhflab.models.policy import PolicyWithValue
    from rlhflab.ops.kl import kl_per_token
    from rlhflab.rewards import build_reward

    policy, tokenizer = tiny_policy(tiny_llama_dir)
    before = {k: v.clone() for k, v in policy.reference.top.state_dict().items()}
    exp = rollout(policy, tokenizer, PROMPTS, build_reward(RewardFnConfig(source=reward_spec)))
    cfg = resolve_rl(PpoConfig(batch_size=len(PROMPTS), minibatch_size=2, ppo_epochs=2, kl_horizon=1000))
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    module = PolicyWithValue(policy)
    algorithm = OnlineRL(runtime=Runtime.create("cpu", "no"), module=module, prepared=module,
                         optimizer=optimizer, cfg=cfg, seed=0, prompts=PROMPTS, rollout=None,
                         evaluate=None, on_step=None)
    kl = kl_per_token(exp.logprobs, exp.ref_logprobs) * exp.response_mask
    algorithm.update(exp, gae_targets(exp, kl, 0.1, None, cfg, algorithm.runtime), 0.1, step=0)
    for key, value in policy.reference.top.state_dict().items():
        assert torch.equal(value, before[key]), key
    changed = [not torch.equal(a, b) for a, b in zip(policy.reference.top.parameters(),
                                                   list(policy.model.model.layers[2:].parameters()))]
    assert all(changed)


def test_a_snapshot_is_saved_after_each_pass_over_the_prompts(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    run_dir = run_stage("rl", make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, steps=10), progress=False)
    snapshots = sorted(p.name for p in run_dir.checkpoint_dir.glob("epoch-*"))
    assert snapshots == ["epoch-1", "epoch-2"]  # 80 prompts drawn from 36
    model, _ = load_causal_lm(str(run_dir.checkpoint_dir / "epoch-1"))  # the trainable blocks over the starting model
    assert model.config.model_type == "llama"
    assert not (run_dir.checkpoint_dir / "epoch-1" / "config.json").exists()  # not a full copy


def test_blank_prompts_of_the_prompt_files_are_counted_in_left_out(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    from rlhflab.data import describe_dropped

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the film was\n\n   \na plot that\nI liked the\n", encoding="utf-8")
    eval_prompts = tmp_path / "eval.jsonl"  # the Python API writes its prompts as such a file
    eval_prompts.write_text('{"prompt": "the acting"}\n{"prompt": "  "}\n', encoding="utf-8")
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, steps=1, eval_every=100)
    cfg.data.prompts, cfg.data.eval_prompts = str(prompts), str(eval_prompts)
    summary = json.loads(run_stage("rl", cfg, progress=False).summary_path.read_text())
    assert summary["left_out"] == {"prompts left blank in data.prompts": 2, "prompts left blank in data.eval_prompts": 1}
    assert describe_dropped(summary["left_out"]) == (
        "left out 3: 2 prompts left blank in data.prompts, 1 prompt left blank in data.eval_prompts")


def test_saved_policy_round_trip_gives_identical_outputs(tmp_path, tiny_llama_dir):
    policy, tokenizer = tiny_policy(tiny_llama_dir)
    with torch.no_grad():
        for p in policy.model.model.layers[3].parameters():
            p.add_(0.01)
    rl_stage.save_policy(policy, tokenizer, tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    policy.model.set_attn_implementation("sdpa")  # as a plain Hugging Face load has it (rlhflab's CPU matmuls differ in the last bit)
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, policy.model(ids).logits, atol=0, rtol=0)


def test_reward_rises_on_a_toy_task(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    """A learning test: the share of 'e' in responses goes up clearly within a few dozen steps."""
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, steps=40, batch_size=32, minibatch_size=16,
                      ppo_epochs=4, learning_rate=3e-3, eval_every=100, adaptive_kl=False, kl_coef=0.01)
    run_dir = run_stage("rl", cfg, progress=False)
    scores = [r["score_mean"] for r in run_dir.read_metrics() if r["split"] == "train"]
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    # Response-level noise of this reward is ~0.06, so a batch mean of 32 moves ~0.01 by chance.
    assert last > 1.5 * first and last - first > 0.03, (first, last)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, monkeypatch, schedule):
    straight = run_stage("rl", make_config(tmp_path / "a", tiny_llama_dir, reviews_csv, reward_spec, lr_schedule=schedule),
                         progress=False)
    cfg = make_config(tmp_path / "b", tiny_llama_dir, reviews_csv, reward_spec, lr_schedule=schedule)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(2))
    with pytest.raises(RunInterrupted):
        run_stage("rl", cfg, progress=False)
    monkeypatch.undo()
    resumed = run_stage("rl", cfg, resume=True, progress=False)
    a = [r for r in straight.read_metrics() if r["split"] == "train"]
    b = [r for r in resumed.read_metrics() if r["split"] == "train"]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x["score_mean"] == pytest.approx(y["score_mean"], abs=1e-6)
        assert x["kl"] == pytest.approx(y["kl"], abs=1e-6)
        assert x["lr"] == pytest.approx(y["lr"], rel=1e-9)  # the schedule resumes where it stopped
    # 4 steps at 1e-3: constant, or falling linearly to 0 at the end of the run (the lr a step trains with)
    expected = [1e-3] * 4 if schedule == "constant" else [1e-3, 7.5e-4, 5e-4, 2.5e-4]
    assert [r["lr"] for r in b] == pytest.approx(expected, rel=1e-9)
    wa = AutoModelForCausalLM.from_pretrained(straight.model_dir).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(resumed.model_dir).state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_value_warmup_trains_the_value_head_alone_then_the_policy(tmp_path, tiny_llama_dir, reviews_csv, reward_spec,
                                                                  monkeypatch):
    """rl.value_warmup_steps: the policy stays the starting model (KL 0, ratio 1, beta held) while the
    zero-initialised value head learns; the steps after it train the policy; a resume keeps to it."""
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, steps=3, value_warmup_steps=2,
                      learning_rate=3e-3)
    monkeypatch.setattr(engine_loop, "StopRequest", lambda: StopAt(1))
    with pytest.raises(RunInterrupted):
        run_stage("rl", cfg, progress=False)
    monkeypatch.undo()
    start = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    saved = torch.load(tmp_path / "runs/tiny/rl.partial/checkpoints/latest/state.pt", weights_only=False)["model"]
    head = [v for k, v in saved.items() if k.startswith("value_head.")]
    blocks = {k.removeprefix("model."): v for k, v in saved.items() if not k.startswith("value_head.")}
    assert head and all(bool(v.abs().sum() > 0) for v in head)  # the head left its zero start
    assert blocks and all(torch.equal(v, start[k]) for k, v in blocks.items())  # the trainable blocks did not move
    run_dir = run_stage("rl", cfg, resume=True, progress=False)
    train = [r for r in run_dir.read_metrics() if r["split"] == "train"]
    assert [r["kl"] for r in train] == [0.0, 0.0, 0.0]  # step 3's rollout still comes from the starting policy
    assert [r["approx_kl"] for r in train[:2]] == [0.0, 0.0] and [r["clip_fraction"] for r in train[:2]] == [0.0, 0.0]
    assert [r["beta"] for r in train] == [0.05] * 3  # the controller waits for the policy
    after = AutoModelForCausalLM.from_pretrained(run_dir.model_dir).state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start)  # step 3 trained the policy


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"value_warmup_steps": 4}, "value_warmup_steps"),
        ({"algorithm": "rloo", "value_warmup_steps": 1}, "has none"),
        ({"minibatch_size": 16}, "minibatch_size"),
        ({"temperature": 0.0}, "temperature"),
        ({"stop_token": "the film"}, "stop_token"),
    ],
)
def test_bad_ppo_settings_are_clear_errors(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, fields, message):
    with pytest.raises(RlhfLabError, match=message):
        run_stage("rl", make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, **fields), progress=False)


def test_missing_sft_run_is_a_clear_error(tmp_path, tiny_llama_dir, reviews_csv, reward_spec):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, policy=None)
    with pytest.raises(RlhfLabError, match="rlhflab sft"):
        run_stage("rl", cfg, progress=False)


def test_frozen_block_outputs_kept_from_generation_equal_a_fresh_forward(tiny_llama_dir):
    from rlhflab.models.policy import shared_lower
    from rlhflab.rollout import response_mask_from

    torch.manual_seed(0)
    policy, tokenizer = tiny_policy(tiny_llama_dir)
    nullctx = torch.autocast("cpu", enabled=False)
    sampled = sample(policy, tokenizer, PROMPTS, max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0,
                     stop_ids=[tokenizer.eos_token_id], autocast=lambda: nullctx)
    mask, _ = response_mask_from(sampled.sequences[:, sampled.width:], [tokenizer.eos_token_id])
    attention = torch.cat([sampled.prompt_mask, mask], dim=1)
    fresh = shared_lower(policy, sampled.sequences, attention)
    real = attention.bool().clone()
    real[:, -1] = False  # the last sampled token is never fed through the model, nor read
    assert sampled.lower.shape == fresh.shape
    torch.testing.assert_close(sampled.lower[real], fresh[real], atol=1e-5, rtol=1e-4)


def test_the_optimum_gap_example_puts_every_evaluation_below_its_optimum(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, capsys):
    cfg = make_config(tmp_path, tiny_llama_dir, reviews_csv, reward_spec, adaptive_kl=False, kl_coef=0.05)
    run_dir = run_stage("rl", cfg, progress=False)
    example = load_example("optimum_gap")
    table = tmp_path / "prompts.csv"
    assert example.main([str(run_dir.path), "--samples", "4", "--plot", str(tmp_path / "gap.png"), "--per-prompt", str(table)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (tmp_path / "gap.png").stat().st_size > 0 and lines[-1].startswith("wrote")
    # One row a held-out prompt: the optimum's KL and reward beside the run's last answer to it.
    rows = list(csv.DictReader(table.read_text().splitlines()))
    answers = json.loads((run_dir.path / "eval_after.json").read_text())
    assert [r["prompt"] for r in rows] == [a["prompt"] for a in answers]
    assert [float(r[f"{run_dir.path}:kl"]) for r in rows] == pytest.approx([a["kl"] for a in answers])
    assert all(float(r["optimum:kl"]) >= -1e-9 and float(r["optimum:reward"]) >= float(r["start:reward"]) - 1e-9 for r in rows)
    assert lines[-4].startswith("optimum: harder half kl") and lines[-3].startswith(f"{run_dir.path}: harder half")
    assert (tmp_path / "prompts.png").stat().st_size > 0
    lines = lines[:-5]
    optimum = float(lines[0].split("J* ")[1].split()[0])
    objectives = [float(line.split("J ")[1].split()[0]) for line in lines[1:]]
    assert len(objectives) == 3 and lines[1].startswith("step    0")  # before training, steps 2 and 4
    # The toy reward is the share of e's: 4 samples a prompt already show the optimum above the start.
    assert optimum > objectives[0]
    assert example.main([str(tmp_path / "nowhere")]) == 2
    # A run whose held-out prompts are others (here set by data.eval_prompts) cannot share the samples.
    other = tmp_path / "other" / "rl"
    shutil.copytree(run_dir.path, other)
    (tmp_path / "others.txt").write_text("A different opening\nAnd another one\n")
    saved = yaml.safe_load((other / "config.yaml").read_text())
    saved["data"]["eval_prompts"] = str(tmp_path / "others.txt")
    (other / "config.yaml").write_text(yaml.safe_dump(saved))
    assert example.main([str(run_dir.path), str(other)]) == 2
    assert "held-out prompts" in capsys.readouterr().err
