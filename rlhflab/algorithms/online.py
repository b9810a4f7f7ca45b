"""Online RL from parts: PPO, GRPO, RLOO, ... are recipes (rlhflab/algorithms/recipes.py), not classes.

One step reads top to bottom:

    prompts (k samples each, group ids) -> rollout with the KV cache -> reward scores
    -> per-token KL to the reference policy -> the recipe's advantage estimator
    -> epochs of clipped policy updates (+ value loss with a critic) (+ k3 KL term in the loss)
    -> KL controller (fixed or adaptive beta)

| algorithm | advantage estimator                         | critic | beta * KL goes in  | samples/prompt |
| ppo       | GAE over per-token rewards (Ziegler 2019)    | yes    | the reward (per token) | 1          |
| grpo      | group-normalised scores (Shao et al. 2024)   | no     | the loss (k3)      | 4              |
| rloo      | leave-one-out baseline (Ahmadian et al. 2024)| no     | the reward (sequence) | 4           |
| reinforce_pp | returns normalised over the batch (Hu 2025) | no  | the reward (per token) | 1          |
| dr_grpo   | r - group mean, loss / max length (Liu 2025) | no     | the loss (k3)      | 4              |

A recipe names a pure estimator in rlhflab/ops and what it reads (`TARGETS` below feeds it);
the math is there (pure, tested). Statistics that span the batch (whitening, the KL that drives
beta, score means) are reduced over processes as sums and counts.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import torch
from transformers import get_scheduler

from rlhflab.algorithms.recipes import Recipe, get_recipe
from rlhflab.config import PpoConfig
from rlhflab.engine.runtime import Runtime
from rlhflab.engine.sharding import gathered
from rlhflab.ops.advantages import kl_penalty_in_loss, sequence_advantages_to_tokens
from rlhflab.ops.kl import adaptive_kl_update, kl_per_token, per_token_rewards
from rlhflab.ops.masked import masked_explained_variance, masked_mean, masked_sum_over_max_length, masked_whiten
from rlhflab.ops.ppo import gae, policy_loss, value_loss
from rlhflab.rollout import Experience


@dataclass(frozen=True)
class Parts:
    """A recipe resolved against the config once: what every step calls."""

    recipe: Recipe
    samples_per_prompt: int
    kl_in_loss: bool  # beta * k3 KL in the loss instead of -beta * KL in the reward
    targets: Callable[..., "Targets"]  # (exp, kl, beta, groups, cfg, runtime) -> Targets
    aggregate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # per-token loss (B, R), mask -> scalar

    @property
    def critic(self) -> bool:
        return self.recipe.critic


@dataclass
class Targets:
    advantages: torch.Tensor  # (B, R), 0 on padding
    returns: torch.Tensor | None  # (B, R) for the critic, or None
    stats: dict[str, float]


def gae_targets(exp: Experience, kl: torch.Tensor, beta: float, groups: torch.Tensor, cfg: PpoConfig, runtime: Runtime,
                estimator: Callable = gae) -> Targets:
    """PPO: score on the last token and -beta * KL on every token, GAE over the value head's
    estimates, advantages whitened over the whole (multi-process) batch."""
    mask = exp.response_mask
    rewards, non_score = per_token_rewards(exp.scores, kl, mask, beta)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False, reduce=runtime.sum)
    advantages, returns = estimator(rewards, exp.values, mask, cfg.gamma, cfg.lam)
    advantages = masked_whiten(advantages, mask, reduce=runtime.sum)
    return Targets(advantages, returns, {"non_score_reward": float(runtime.mean(non_score.sum(), len(non_score)))})


def _sequence_rewards(exp: Experience, kl: torch.Tensor, beta: float) -> torch.Tensor:
    """Score minus beta * the response's summed KL (RLOO's "RLHF reward"; beta is 0 when the KL is in the loss)."""
    return exp.scores - beta * kl.sum(-1)


def sequence_targets(exp, kl, beta, groups, cfg, runtime, estimator: Callable) -> Targets:
    """GRPO, RLOO, ...: one advantage per response from its reward and its prompt's other responses,
    the same for every token of the response."""
    advantages = estimator(_sequence_rewards(exp, kl, beta), groups)
    return Targets(sequence_advantages_to_tokens(advantages, exp.response_mask), None, {})


def token_targets(exp, kl, beta, groups, cfg, runtime, estimator: Callable) -> Targets:
    """REINFORCE++, ...: per-token rewards (the score on the last token, -beta * KL on every token)
    into per-token advantages, with statistics over every process's tokens; no critic."""
    rewards, non_score = per_token_rewards(exp.scores, kl, exp.response_mask, beta)
    advantages = estimator(rewards, exp.response_mask, cfg.gamma, reduce=runtime.sum)
    return Targets(advantages, None, {"non_score_reward": float(runtime.mean(non_score.sum(), len(non_score)))})


# What each kind of estimator reads (Recipe.reads), built from a rollout.
TARGETS = {"gae": gae_targets, "sequence": sequence_targets, "tokens": token_targets}


def _import(path: str) -> Callable:
    """The function at "module:function"."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def parts(cfg: PpoConfig) -> Parts:
    """The parts `cfg` asks for; cfg.samples_per_prompt and cfg.kl_penalty must be resolved (resolve_rl)."""
    recipe = get_recipe(cfg.algorithm)
    return Parts(recipe, cfg.samples_per_prompt, kl_in_loss=cfg.kl_penalty == "loss",
                 targets=partial(TARGETS[recipe.reads], estimator=_import(recipe.estimator)),
                 aggregate=partial(masked_sum_over_max_length, max_length=cfg.max_new_tokens)
                 if recipe.loss == "max_length" else masked_mean)


class OnlineRL:
    """The Algorithm (rlhflab/engine/loop.py) of the RL stage, for every recipe."""

    eval_split = "eval"

    def __init__(self, *, runtime: Runtime, module, prepared, optimizer, cfg: PpoConfig, seed: int, prompts: list[str],
                 rollout: Callable, evaluate: Callable, on_step: Callable[[int, dict], None]):
        """`module`: the trainable policy (LM + value head) that checkpoints hold; `prepared`: the same
        after `accelerator.prepare` (DDP-wrapped under several processes); `rollout(prompts)` ->
        Experience; `evaluate()` -> held-out metrics; `on_step(step, batch)` writes samples. The
        learning rate follows cfg.lr_schedule over cfg.steps, set once a step (checkpointed by the loop)."""
        self.runtime, self.module, self.prepared = runtime, module, prepared
        self.optimizer = optimizer
        self.scheduler = None if cfg.lr_schedule == "constant" else get_scheduler(cfg.lr_schedule, optimizer, 0, cfg.steps)
        self.cfg, self.seed, self.prompts, self.parts = cfg, seed, prompts, parts(cfg)
        self.rollout, self._evaluate, self.on_step = rollout, evaluate, on_step
        self.state: dict[str, Any] = {"beta": cfg.kl_coef, "rollout_tokens": 0, "rollout_seconds": 0.0,
                                      "train_tokens": 0, "train_seconds": 0.0, "evaluations": []}
        self._last: dict[str, float] = {}

    def step(self, step: int) -> dict[str, float]:
        cfg, runtime = self.cfg, self.runtime
        prompts, groups = self.step_prompts(step)
        started = time.perf_counter()
        with gathered(self.prepared):  # under FSDP: whole weights while sampling outside the sharded forward
            exp = self.rollout(prompts)
        rollout_seconds = time.perf_counter() - started
        kl = kl_per_token(exp.logprobs, exp.ref_logprobs, cfg.kl_estimator) * exp.response_mask
        beta = self.state["beta"]
        targets = self.parts.targets(exp, kl, 0.0 if self.parts.kl_in_loss else beta, groups, cfg, runtime)
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        update = self.update(exp, targets, beta, step)
        train_seconds = time.perf_counter() - started
        if self.scheduler is not None:
            self.scheduler.step()
        stats = self.batch_stats(exp, kl, beta) | targets.stats
        if cfg.adaptive_kl and step >= cfg.value_warmup_steps:  # a warm-up's KL is 0 by construction, not a signal
            self.state["beta"] = adaptive_kl_update(beta, stats["kl"], cfg.kl_target, cfg.kl_horizon, cfg.batch_size)
        tokens = int(runtime.sum(exp.response_mask.sum()))
        self.state["rollout_tokens"] += tokens
        self.state["rollout_seconds"] += rollout_seconds
        self.state["train_tokens"] += tokens * cfg.ppo_epochs
        self.state["train_seconds"] += train_seconds
        record = {**stats, **update, "lr": lr, "rollout_tokens_per_s": tokens / max(rollout_seconds, 1e-9),
                  "train_tokens_per_s": tokens * cfg.ppo_epochs / max(train_seconds, 1e-9)}
        self._last = record
        self.on_step(step + 1, {"experience": exp, "kl": kl})
        return record

    def step_prompts(self, step: int) -> tuple[list[str], torch.Tensor]:
        """This process's prompts of `step`, each repeated samples_per_prompt times, and their group ids.

        The global list depends only on (seed, step), so a resumed run sees the same prompts;
        a prompt's samples stay on one process, so group statistics need no reduction."""
        k = self.parts.samples_per_prompt
        mine = self.runtime.shard(prompts_for_step(self.prompts, step, self.cfg.batch_size // k, self.seed))
        groups = torch.arange(len(mine), device=self.runtime.device).repeat_interleave(k)
        return [prompt for prompt in mine for _ in range(k)], groups

    def batch_stats(self, exp: Experience, kl: torch.Tensor, beta: float) -> dict[str, float]:
        """Means over every process's responses (sums and counts reduced, then divided)."""
        runtime, n = self.runtime, len(exp.scores)
        mean = float(runtime.mean(exp.scores.sum(), n))
        square = float(runtime.mean((exp.scores.double() ** 2).sum(), n))
        count = float(runtime.sum(n))
        return {
            "score_mean": mean,
            "score_std": (max(square - mean**2, 0.0) * count / max(count - 1, 1)) ** 0.5,
            "kl": float(runtime.mean(kl.sum(-1).sum(), n)),  # nats per response, what the controller targets
            "beta": beta,
            "response_length": float(runtime.mean(exp.response_mask.sum(), n)),
            "stopped_fraction": float(runtime.mean(exp.stopped.float().sum(), n)),
        }

    def update(self, exp: Experience, targets: Targets, beta: float, step: int) -> dict[str, float]:
        """ppo_epochs passes of clipped updates over shuffled minibatches of this process's rollout; in the
        first cfg.value_warmup_steps steps only the value head steps (the policy stays the starting one)."""
        cfg, parts = self.cfg, self.parts
        params = [p for p in self.prepared.parameters() if p.requires_grad]
        warmup = step < cfg.value_warmup_steps
        critic = {id(p) for p in self.module.value_head.parameters()} if warmup else set()
        stats: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(self.seed + step)  # minibatch order: the same after a resume
        self.prepared.train()
        n, size = exp.input_ids.shape[0], cfg.minibatch_size // self.runtime.world_size
        for _ in range(cfg.ppo_epochs):
            for idx in torch.randperm(n, generator=generator).split(size):
                idx = idx.to(exp.input_ids.device)
                mask = exp.response_mask[idx]
                lower = exp.lower[idx] if exp.lower is not None else None
                with self.runtime.autocast():
                    # log-probs of the response tokens straight from the hidden states: no (B, R, V) logits
                    logprobs, entropy, values = self.prepared(exp.input_ids[idx], exp.attention_mask[idx],
                                                              exp.response_start, cfg.temperature, lower)
                loss, terms = policy_loss(logprobs, exp.logprobs[idx], targets.advantages[idx], mask, cfg.clip_range,
                                          aggregate=parts.aggregate)
                terms["policy_loss"] = float(loss.detach())
                if warmup:  # kept in the graph at 0, so every process reduces the same gradients
                    loss = loss * 0.0
                if parts.critic:
                    v_loss, v_stats = value_loss(values, exp.values[idx], targets.returns[idx], mask, cfg.clip_range_value)
                    loss = loss + cfg.vf_coef * v_loss
                    terms |= {"value_loss": float(v_loss.detach()), **v_stats,
                              "explained_variance": float(masked_explained_variance(values.detach(), targets.returns[idx], mask))}
                if parts.kl_in_loss:
                    k3 = kl_penalty_in_loss(logprobs, exp.ref_logprobs[idx], mask, aggregate=parts.aggregate)
                    loss = loss + beta * k3
                    terms["kl_loss"] = float(k3.detach())
                self.runtime.accelerator.backward(loss)
                if warmup:  # the value loss reaches the shared trainable blocks too: only the head steps
                    for p in params:
                        if id(p) not in critic:
                            p.grad = None
                self.runtime.accelerator.clip_grad_norm_(params, cfg.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                terms["entropy"] = float(masked_mean(entropy, mask))  # of the policy before this minibatch's step
                for key, value in terms.items():
                    stats.setdefault(key, []).append(value)
        return {key: float(self.runtime.sum(sum(v) / len(v))) / self.runtime.world_size for key, v in stats.items()}

    # --- evaluation, progress, resume ---------------------------------------------------------------
    def evaluation_due(self, step: int) -> bool:
        return step % self.cfg.eval_every == 0 or step == self.cfg.steps

    def evaluate(self, step: int) -> dict[str, Any]:
        with gathered(self.prepared):
            result = self._evaluate()
        self.state["evaluations"].append({"step": step, **result})
        return result

    def should_stop(self) -> bool:
        return False

    def progress(self) -> dict[str, str]:
        last = self._last
        return {"score": f"{last.get('score_mean', 0):.2f}", "kl": f"{last.get('kl', 0):.2f}", "beta": f"{self.state['beta']:.3f}"}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def summary(self) -> dict[str, Any]:
        evaluations = self.state["evaluations"]
        return {"start": evaluations[0], "end": evaluations[-1], "evaluations": evaluations, "final_beta": self.state["beta"],
                "rollout_tokens_per_s": self.state["rollout_tokens"] / max(self.state["rollout_seconds"], 1e-9),
                "train_tokens_per_s": self.state["train_tokens"] / max(self.state["train_seconds"], 1e-9)}


def prompts_for_step(prompts: list[str], step: int, count: int, seed: int) -> list[str]:
    """The `count` prompts of step `step`: epochs of seeded shuffles, so a resumed run sees the same ones."""
    out = []
    for i in range(step * count, (step + 1) * count):
        epoch, position = divmod(i, len(prompts))
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        out.append(prompts[int(order[position])])
    return out
