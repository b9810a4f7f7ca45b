"""PPO fine-tuning: `rlhflab ppo`.

Each step samples responses to a batch of prompts, scores them with the reward function,
turns score and per-token KL against the frozen SFT model into per-token rewards, estimates
advantages with GAE, and runs several epochs of clipped PPO updates over minibatches. The
math lives in rlhflab/ops (pure, tested functions); this module only orchestrates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlhflab.checkpoint import load_checkpoint, save_checkpoint
from rlhflab.config import Config, PpoConfig
from rlhflab.data import make_prompts
from rlhflab.errors import RlhfLabError, RunInterrupted
from rlhflab.interrupt import StopRequest
from rlhflab.io import RunDir, atomic_dir, write_json
from rlhflab.models.causal_lm import count_parameters, load_causal_lm
from rlhflab.models.policy import Policy, build_policy, policy_forward
from rlhflab.ops.kl import adaptive_kl_update, kl_per_token, per_token_rewards
from rlhflab.ops.masked import masked_explained_variance, masked_whiten
from rlhflab.ops.ppo import entropy_from_logits, gae, logprobs_from_logits, policy_loss, value_loss
from rlhflab.rewards import RewardFunction, build_reward, probability_reward
from rlhflab.rollout import Experience, sample, score_rollout
from rlhflab.runtime import make_accelerator, run_facts, seed_everything
from rlhflab.stages.common import load_splits, open_run_dir


def check(ppo: PpoConfig) -> None:
    checks = [
        (ppo.steps >= 1, "steps must be at least 1"),
        (ppo.batch_size >= 1 and ppo.minibatch_size >= 1, "batch_size and minibatch_size must be at least 1"),
        (ppo.minibatch_size <= ppo.batch_size, "minibatch_size must not exceed batch_size"),
        (ppo.ppo_epochs >= 1, "ppo_epochs must be at least 1"),
        (ppo.learning_rate > 0, "learning_rate must be positive"),
        (ppo.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
        (ppo.temperature > 0, "temperature must be positive"),
        (ppo.top_k >= 0 and 0 < ppo.top_p <= 1, "top_k must be >= 0 and top_p in (0, 1]"),
        (ppo.kl_coef >= 0 and ppo.kl_target > 0 and ppo.kl_horizon > 0, "kl_coef must be >= 0, kl_target and kl_horizon positive"),
        # beta moves by up to 20% x batch_size / kl_horizon per step: a shorter horizon overshoots below 0.
        (not ppo.adaptive_kl or ppo.kl_horizon >= ppo.batch_size,
         f"kl_horizon ({ppo.kl_horizon}) must be at least batch_size ({ppo.batch_size}): each step moves beta by up to "
         f"20% x batch_size / kl_horizon, so a shorter horizon can drive beta to or below 0"),
        (ppo.eval_prompts >= 1, "eval_prompts must be at least 1"),
        (0 <= ppo.gamma <= 1 and 0 <= ppo.lam <= 1, "gamma and lam must be in [0, 1]"),
        (ppo.clip_range > 0 and ppo.clip_range_value > 0, "clip ranges must be positive"),
        (ppo.eval_every >= 1 and ppo.sample_every >= 1 and ppo.checkpoint_every >= 1, "eval_every, sample_every and checkpoint_every must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"ppo.{message}.")


def stop_token_ids(tokenizer, stop_token: str | None) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if stop_token:
        encoded = tokenizer.encode(stop_token, add_special_tokens=False)
        if len(encoded) != 1:
            raise RlhfLabError(f"ppo.stop_token {stop_token!r} is {len(encoded)} tokens for this tokenizer; choose a single-token stop such as '.' or a newline.")
        ids.append(encoded[0])
    return ids


def prompts_for_step(prompts: list[str], step: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of PPO step `step`: epochs of seeded shuffles, so a resumed run sees the same ones."""
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, position = divmod(i, len(prompts))
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(prompts[int(order[position])])
    return out


@dataclass
class Batch:
    """What the PPO updates need from one rollout, advantages included."""

    experience: Experience
    advantages: torch.Tensor  # (B, R), whitened
    returns: torch.Tensor  # (B, R)
    kl: torch.Tensor  # (B, R) per-token KL estimate (0 on padding)
    stats: dict = field(default_factory=dict)


def make_batch(exp: Experience, ppo: PpoConfig, beta: float) -> Batch:
    mask = exp.response_mask
    kl = kl_per_token(exp.logprobs, exp.ref_logprobs, ppo.kl_estimator) * mask
    rewards, non_score = per_token_rewards(exp.scores, kl, mask, beta)
    if ppo.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, exp.values, mask, ppo.gamma, ppo.lam)
    advantages = masked_whiten(advantages, mask)
    stats = {
        "score_mean": float(exp.scores.mean()),
        "score_std": float(exp.scores.std()) if len(exp.scores) > 1 else 0.0,
        "kl": float(kl.sum(-1).mean()),  # nats per response, the quantity the controller targets
        "beta": beta,
        "non_score_reward": float(non_score.mean()),
        "response_length": float(mask.sum(-1).float().mean()),
        "stopped_fraction": float(exp.stopped.float().mean()),
    }
    return Batch(exp, advantages, returns, kl, stats)


def ppo_update(policy: Policy, batch: Batch, optimizer, accelerator, ppo: PpoConfig, generator: torch.Generator, autocast) -> dict:
    """Several epochs of clipped PPO over shuffled minibatches of one rollout batch."""
    exp = batch.experience
    params = policy.trainable_parameters()
    stats: dict[str, list[float]] = {}
    policy.model.train()
    n = exp.input_ids.shape[0]
    for _ in range(ppo.ppo_epochs):
        for idx in torch.randperm(n, generator=generator).split(ppo.minibatch_size):
            idx = idx.to(exp.input_ids.device)
            mask = exp.response_mask[idx]
            lower = exp.lower[idx] if exp.lower is not None else None
            with autocast():
                out = policy_forward(policy, exp.input_ids[idx], exp.attention_mask[idx], exp.response_start, ppo.temperature, lower)
            logprobs = logprobs_from_logits(out.logits, exp.input_ids[idx, exp.response_start:])
            p_loss, p_stats = policy_loss(logprobs, exp.logprobs[idx], batch.advantages[idx], mask, ppo.clip_range)
            v_loss, v_stats = value_loss(out.values, exp.values[idx], batch.returns[idx], mask, ppo.clip_range_value)
            loss = p_loss + ppo.vf_coef * v_loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(params, ppo.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                entropy = float(entropy_from_logits(out.logits.detach(), mask))
                explained = float(masked_explained_variance(out.values.detach(), batch.returns[idx], mask))
            for key, value in {"policy_loss": float(p_loss.detach()), "value_loss": float(v_loss.detach()), "entropy": entropy,
                               "explained_variance": explained, **p_stats, **v_stats}.items():
                stats.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in stats.items()}


@torch.no_grad()
def evaluate(policy: Policy, tokenizer, rewards: dict[str, RewardFunction], prompts: list[str], ppo: PpoConfig,
             stop_ids: list[int], autocast, seed: int) -> tuple[dict, list[dict]]:
    """Mean reward on held-out prompts (sampled with a fixed seed so evaluations compare)."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    results, rows = {}, []
    responses: list[str] = []
    kls: list[torch.Tensor] = []
    for start in range(0, len(prompts), ppo.batch_size):
        chunk = prompts[start : start + ppo.batch_size]
        sampled = sample(policy, tokenizer, chunk, max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature,
                         top_k=ppo.top_k, top_p=ppo.top_p, stop_ids=stop_ids, autocast=autocast)
        exp = score_rollout(policy, tokenizer, lambda p, r: torch.zeros(len(r)), chunk, sampled,
                            temperature=ppo.temperature, stop_ids=stop_ids, non_stop_penalty=None, autocast=autocast)
        responses += exp.responses
        kls.append((kl_per_token(exp.logprobs, exp.ref_logprobs, ppo.kl_estimator) * exp.response_mask).sum(-1).cpu())
    torch.set_rng_state(state)
    kl = torch.cat(kls)
    results["kl"] = float(kl.mean())
    columns = {}
    for name, fn in rewards.items():
        values = fn(prompts, responses)
        results[name] = float(values.mean())
        columns[name] = values.tolist()
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        rows.append({"prompt": prompt, "response": response, "kl": float(kl[i]), **{k: v[i] for k, v in columns.items()}})
    return results, rows


def save_policy(policy: Policy, tokenizer, folder: Path) -> None:
    """A plain causal LM folder (LoRA merged) plus the value head."""
    from safetensors.torch import save_file

    model = policy.model
    if policy.lora:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.padding_side = "right"
        tokenizer.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in policy.value_head.state_dict().items()}, tmp / "value_head.safetensors")


def _write_samples(run_dir: RunDir, step: int, batch: Batch, limit: int = 8) -> None:
    import json

    exp = batch.experience
    with open(run_dir.path / "samples.jsonl", "a", encoding="utf-8") as handle:
        for i in range(min(limit, len(exp.prompts))):
            handle.write(json.dumps({"step": step, "prompt": exp.prompts[i], "response": exp.responses[i],
                                     "score": float(exp.scores[i]), "kl": float(batch.kl[i].sum())}) + "\n")


def run(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """PPO from `cfg.ppo.policy` (default: this run's SFT model) against `cfg.reward_fn`."""
    ppo = cfg.ppo
    check(ppo)
    started = time.perf_counter()
    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    train_prompts = make_prompts(splits.train, cfg.data.prompt_min_words, cfg.data.prompt_max_words, cfg.seed,
                                 max_tokens=cfg.data.prompt_max_tokens)
    eval_source = splits.test or splits.validation or splits.train
    eval_prompts = make_prompts(eval_source, cfg.data.prompt_min_words, cfg.data.prompt_max_words, cfg.seed + 1,
                                max_tokens=cfg.data.prompt_max_tokens)[: ppo.eval_prompts]
    runs = Path(cfg.runs_dir) / cfg.name
    policy_source = ppo.policy or str(runs / "sft")
    if ppo.policy is None and not (runs / "sft" / "model").exists():
        raise RlhfLabError(f"ppo.policy is not set and {runs / 'sft' / 'model'} does not exist. Run `rlhflab sft` first or set ppo.policy.")
    reward_fn = build_reward(cfg.reward_fn, default_source=str(runs / "reward"))
    rewards = {"score": reward_fn}
    probability = probability_reward(cfg.reward_fn, default_source=str(runs / "reward"))
    if probability is not None:
        rewards["positive_probability"] = probability
    run_dir = open_run_dir(cfg, "ppo", resume=resume, overwrite=overwrite)
    accelerator = make_accelerator(ppo.device, ppo.mixed_precision)
    device = accelerator.device
    autocast = accelerator.autocast

    model, tokenizer = load_causal_lm(policy_source)
    stop_ids = stop_token_ids(tokenizer, ppo.stop_token)
    tokenizer.padding_side = "left"
    probe = tokenizer(train_prompts[:2], return_tensors="pt", padding=True)
    policy = build_policy(model, ppo.trainable, ppo.lora, cache_frozen=ppo.cache_frozen,
                          probe=(probe.input_ids, probe.attention_mask))
    policy.model.to(device)
    policy.value_head.to(device)
    for frozen in (policy.reference_top, policy.reference_model):
        if frozen is not None:
            frozen.to(device)
    trainable, total = count_parameters(policy.model)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=ppo.learning_rate)

    loop = {"step": 0, "beta": ppo.kl_coef, "rollout_tokens": 0, "rollout_seconds": 0.0, "train_tokens": 0, "train_seconds": 0.0, "evaluations": []}
    if resume:
        loop, _ = load_checkpoint(run_dir.checkpoint_dir / "latest", model=_Trainable(policy), optimizer=optimizer, scheduler=None)
        run_dir.truncate_metrics(loop["step"])
    else:
        before, rows = evaluate(policy, tokenizer, rewards, eval_prompts, ppo, stop_ids, autocast, cfg.seed)
        loop["evaluations"].append({"step": 0, **before})
        run_dir.log_metrics({"step": 0, "split": "eval", **before})
        write_json(run_dir.path / "eval_before.json", rows)

    def checkpoint() -> None:
        save_checkpoint(run_dir.checkpoint_dir / "latest", model=_Trainable(policy), optimizer=optimizer, scheduler=None, loop=loop)

    final_rows = None  # rows of the evaluation after the last step
    bar = tqdm(total=ppo.steps, initial=loop["step"], desc="ppo", disable=not progress, dynamic_ncols=True)
    with StopRequest() as stop:
        while loop["step"] < ppo.steps:
            step = loop["step"]
            prompts = prompts_for_step(train_prompts, step, ppo.batch_size, cfg.seed)

            t0 = time.perf_counter()
            sampled = sample(policy, tokenizer, prompts, max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature,
                             top_k=ppo.top_k, top_p=ppo.top_p, stop_ids=stop_ids, autocast=autocast)
            rollout_seconds = time.perf_counter() - t0
            exp = score_rollout(policy, tokenizer, reward_fn, prompts, sampled, temperature=ppo.temperature,
                                stop_ids=stop_ids, non_stop_penalty=ppo.non_stop_penalty, autocast=autocast)
            batch = make_batch(exp, ppo, loop["beta"])
            t1 = time.perf_counter()
            update = ppo_update(policy, batch, optimizer, accelerator, ppo, torch.Generator().manual_seed(cfg.seed + step), autocast)
            train_seconds = time.perf_counter() - t1
            response_tokens = int(exp.response_mask.sum())
            loop["rollout_tokens"] += response_tokens
            loop["rollout_seconds"] += rollout_seconds
            loop["train_tokens"] += response_tokens * ppo.ppo_epochs
            loop["train_seconds"] += train_seconds
            if ppo.adaptive_kl:
                loop["beta"] = adaptive_kl_update(loop["beta"], batch.stats["kl"], ppo.kl_target, ppo.kl_horizon, len(prompts))
            loop["step"] = step + 1
            record = {"step": loop["step"], "split": "train", **batch.stats, **update,
                      "rollout_tokens_per_s": response_tokens / max(rollout_seconds, 1e-9),
                      "train_tokens_per_s": response_tokens * ppo.ppo_epochs / max(train_seconds, 1e-9)}
            run_dir.log_metrics(record)
            bar.update(1)
            bar.set_postfix(score=f"{batch.stats['score_mean']:.2f}", kl=f"{batch.stats['kl']:.2f}", beta=f"{loop['beta']:.3f}")
            if loop["step"] % ppo.sample_every == 0 or loop["step"] == 1:
                _write_samples(run_dir, loop["step"], batch)
            if loop["step"] % ppo.eval_every == 0 or loop["step"] == ppo.steps:
                result, final_rows = evaluate(policy, tokenizer, rewards, eval_prompts, ppo, stop_ids, autocast, cfg.seed)
                loop["evaluations"].append({"step": loop["step"], **result})
                run_dir.log_metrics({"step": loop["step"], "split": "eval", **result})
            epoch = loop["step"] * ppo.batch_size // len(train_prompts)
            if ppo.snapshot_each_epoch and epoch > step * ppo.batch_size // len(train_prompts):
                save_policy(policy, tokenizer, run_dir.checkpoint_dir / f"epoch-{epoch}")
            if stop.requested:
                checkpoint()
                bar.close()
                raise RunInterrupted(f"Stopped at step {loop['step']}; checkpoint saved in {run_dir.checkpoint_dir}. Continue with --resume.")
            if loop["step"] % ppo.checkpoint_every == 0:
                checkpoint()
        checkpoint()
    bar.close()

    if final_rows is None:  # resumed after the last step: nothing ran in this process
        _, final_rows = evaluate(policy, tokenizer, rewards, eval_prompts, ppo, stop_ids, autocast, cfg.seed)
    write_json(run_dir.path / "eval_after.json", final_rows)
    save_policy(policy, tokenizer, run_dir.model_dir)
    evaluations = loop["evaluations"]
    summary = {
        "policy": policy_source,
        "reward": reward_fn.description,
        "trainable": ppo.trainable,
        "parameters": {"trainable": trainable, "total": total},
        "reference": "shared frozen blocks + copy of the trainable top" if policy.reference_top is not None
        else ("adapter switched off" if policy.lora else "frozen full copy"),
        "left_out": splits.left_out,
        "steps": loop["step"],
        "start": evaluations[0],
        "end": evaluations[-1],
        "evaluations": evaluations,
        "final_beta": loop["beta"],
        "rollout_tokens_per_s": loop["rollout_tokens"] / max(loop["rollout_seconds"], 1e-9),
        "train_tokens_per_s": loop["train_tokens"] / max(loop["train_seconds"], 1e-9),
        **run_facts(accelerator, started),
    }
    return run_dir.finish(summary)


class _Trainable(torch.nn.Module):
    """Policy weights and value head as one module, so checkpoints hold both."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.model = policy.model
        self.value_head = policy.value_head


def format_summary(summary: dict) -> str:
    start, end = summary["start"], summary["end"]
    keys = [k for k in ("score", "positive_probability", "kl") if k in start]
    lines = [f"{'':<8}" + "".join(f"{k:>22}" for k in keys)]
    for name, row in (("start", start), ("end", end)):
        lines.append(f"{name:<8}" + "".join(f"{row[k]:22.3f}" for k in keys))
    lines.append(f"({summary['seconds']:.0f} s, rollout {summary['rollout_tokens_per_s']:.0f} tokens/s, "
                 f"training {summary['train_tokens_per_s']:.0f} tokens/s, peak {summary['peak_memory_mb']:.0f} MB)")
    return "\n".join(lines)
