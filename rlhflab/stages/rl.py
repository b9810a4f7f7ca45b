"""Online RL fine-tuning: `rlhflab rl` (PPO by default; `rl.algorithm=grpo`, `rloo`, ...).

Each step samples responses to a batch of prompts, scores them with the reward function,
measures the per-token KL to the frozen SFT model and turns both into advantages, then runs
epochs of clipped updates (rlhflab/algorithms/online.py). This module builds the parts from
the config, hands them to the one training loop (rlhflab/engine/loop.py) and writes the run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhflab.algorithms.online import OnlineRL
from rlhflab.config import Config, PpoConfig, resolve_rl
from rlhflab.data import make_prompts
from rlhflab.data.prompts import load_prompts
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, frozen_cache_allowed, run_facts
from rlhflab.engine.sharding import whole_state
from rlhflab.errors import RlhfLabError
from rlhflab.eval.held_out import HELD_OUT_BATCH, score_rows
from rlhflab.io import RunDir, atomic_dir, write_json
from rlhflab.models.causal_lm import count_parameters, load_causal_lm, refuse_steering
from rlhflab.models.policy import Policy, PolicyWithValue, build_policy
from rlhflab.models.snapshot import save_snapshot, trainable_tensors
from rlhflab.ops.kl import kl_per_token
from rlhflab.rewards import RewardFunction, build_reward, probability_reward
from rlhflab.rollout import Experience, sample, score_rollout
from rlhflab.stages.common import finish_run, load_splits, open_run_dir
from rlhflab.stages.registry import policy_stage
from rlhflab.summaries import RlSummary
from rlhflab.vllm_rollout import build_vllm_rollout, resolve_rollout_engine


def stop_token_ids(tokenizer, stop_token: str | None) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if stop_token:
        encoded = tokenizer.encode(stop_token, add_special_tokens=False)
        if len(encoded) != 1:
            raise RlhfLabError(f"generation.stop_token {stop_token!r} is {len(encoded)} tokens for this tokenizer; choose a single-token stop such as '.' or a newline.")
        ids.append(encoded[0])
    return ids


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """RL from `cfg.rl.policy` (default: this run's SFT model) against `cfg.reward_fn`; write runs/<name>/rl."""
    ppo = resolve_rl(cfg.rl, runtime.world_size, cfg.generation)  # with the generation settings it samples with
    engine_name = resolve_rollout_engine(ppo.rollout_engine, device_type=runtime.device.type, processes=runtime.world_size)
    started = time.perf_counter()
    runtime.seed(cfg.seed, per_rank=True)  # data order below is seeded on its own; sampling differs per rank
    splits = load_splits(cfg)
    prompts = prompt_sets(cfg, splits, ppo.eval_prompts)
    train_prompts, eval_prompts = prompts.train, prompts.held_out
    policy_source = starting_policy(cfg, ppo.policy, "rl.policy")
    rewards = reward_functions(cfg, runtime)
    run_dir = open_run_dir(cfg, "rl", resume=resume, overwrite=overwrite, runtime=runtime)

    model, tokenizer = load_causal_lm(policy_source, steering=False)
    stop_ids = stop_token_ids(tokenizer, ppo.stop_token)
    tokenizer.padding_side = "left"
    check_context(model, tokenizer, train_prompts + eval_prompts, ppo.max_new_tokens)
    probe = tokenizer(train_prompts[:2], return_tensors="pt", padding=True)
    policy = build_policy(model, ppo.trainable, ppo.lora, cache_frozen=ppo.cache_frozen and frozen_cache_allowed(runtime),
                          probe=(probe.input_ids, probe.attention_mask))
    module = runtime.place(PolicyWithValue(policy))
    policy.reference.to(runtime.device)
    trainable, total = count_parameters(policy.model)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=ppo.learning_rate)
    prepared, optimizer = runtime.accelerator.prepare(module, optimizer)
    sampling = dict(max_new_tokens=ppo.max_new_tokens, temperature=ppo.temperature, top_k=ppo.top_k, top_p=ppo.top_p,
                    stop_ids=stop_ids, autocast=runtime.autocast)
    engine = None
    if engine_name == "vllm":  # sent the policy's weights before each rollout; built at the first
        longest = max(len(ids) for ids in tokenizer(train_prompts)["input_ids"])
        engine = build_vllm_rollout(policy, tokenizer, precision=runtime.precision, seed=cfg.seed,
                                    gpu_memory_utilization=ppo.vllm_gpu_memory_utilization,
                                    max_model_len=longest + ppo.max_new_tokens, max_new_tokens=ppo.max_new_tokens,
                                    temperature=ppo.temperature, top_k=ppo.top_k, top_p=ppo.top_p, stop_ids=stop_ids)

    def rollout(prompts: list[str]) -> Experience:
        # Either engine gives token ids only: the log-probs training uses are computed here, by the policy.
        sampled = engine.sample(policy, prompts) if engine is not None else sample(policy, tokenizer, prompts, **sampling)
        return score_rollout(policy, tokenizer, rewards["score"], prompts, sampled, temperature=ppo.temperature,
                             stop_ids=stop_ids, non_stop_penalty=ppo.non_stop_penalty, autocast=runtime.autocast)

    def held_out() -> tuple[dict, list[dict]]:
        return evaluate(policy, tokenizer, rewards, eval_prompts, ppo, sampling, cfg.seed, runtime)

    outputs = StepOutputs(run_dir, runtime, policy, policy_source, ppo, len(train_prompts))
    algorithm = OnlineRL(runtime=runtime, module=module, prepared=prepared, optimizer=optimizer,
                         cfg=ppo, seed=cfg.seed, prompts=train_prompts, rollout=rollout,
                         evaluate=lambda: outputs.keep_rows(held_out()), on_step=outputs.after_step)
    if not resume:
        algorithm.evaluate(0)
        outputs.write("eval_before.json")
        if runtime.is_main:
            run_dir.log_metrics({"step": 0, "split": "eval", **algorithm.state["evaluations"][0]})
    steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir, total_steps=ppo.steps, checkpoint_every=ppo.checkpoint_every,
                     resume=resume, progress=progress, desc=ppo.algorithm)
    if outputs.rows is None:  # resumed after the last step: nothing was evaluated in this process
        outputs.keep_rows(held_out())
    outputs.write("eval_after.json")
    state = whole_state(module)  # under FSDP every process gathers the shards; the main one writes
    if runtime.is_main:
        save_policy(policy, tokenizer, run_dir.model_dir, state)
    reads = rewards["score"].reads
    summary = RlSummary(
        algorithm=ppo.algorithm,
        rollout_engine=engine_name,  # what sampled the training rollouts (evaluations sample with hf)
        samples_per_prompt=ppo.samples_per_prompt,
        kl_penalty=ppo.kl_penalty,
        policy=policy_source,
        reward=rewards["score"].description,
        # how the reward model's token budget went: prompts that crowd out the response (summed over processes)
        reward_reads=reads.summary(runtime.sum) if reads else None,
        trainable=ppo.trainable,
        parameters={"trainable": trainable, "total": total},
        reference=policy.reference.description,
        left_out={**splits.left_out, **prompts.left_out},
        steps=steps,
        **algorithm.summary(),
        **run_facts(runtime, started),
    )
    return finish_run(run_dir, summary, runtime)


def check_context(model, tokenizer, prompts: list[str], max_new_tokens: int) -> None:
    """Refuse prompts + responses longer than the positions the model was trained on (a GPT-2 style
    model cannot embed them at all; a rotary one would run on positions it never saw)."""
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    longest = max((len(ids) for ids in tokenizer(prompts, add_special_tokens=True)["input_ids"]), default=0)
    if limit and longest + max_new_tokens > limit:
        raise RlhfLabError(f"The policy holds {limit} positions, but the longest prompt ({longest} tokens) plus "
                           f"generation.max_new_tokens ({max_new_tokens}) needs {longest + max_new_tokens}. Lower generation.max_new_tokens "
                           f"or data.prompt_max_words / data.prompt_max_tokens, or pretrain with a longer context.")


@dataclass
class PromptSets:
    """The prompts an RL stage trains on and reports on, and the blank ones its files held."""

    train: list[str]
    held_out: list[str]
    left_out: dict[str, int]  # for the summary's "left_out": reason -> count, reason a plural noun first


def prompt_sets(cfg: Config, splits, eval_count: int) -> PromptSets:
    """The training prompts and the first `eval_count` held-out prompts every RL stage (rl, dpo,
    ilql) trains on and reports on. From data.prompts / data.eval_prompts files when set, else
    the opening words of the train split's and the test split's reviews."""
    data = cfg.data
    words = (data.prompt_min_words, data.prompt_max_words)
    left_out: dict[str, int] = {}

    def read(key: str) -> list[str]:
        prompts, _, blank = load_prompts(getattr(data, key))
        if blank:
            left_out[f"prompts left blank in data.{key}"] = blank
        return prompts

    if data.prompts:
        train = read("prompts")
    else:
        train = make_prompts(splits.train, *words, cfg.seed, max_tokens=data.prompt_max_tokens)
    if data.eval_prompts:
        held_out = read("eval_prompts")
    elif data.prompts:
        held_out = train
    else:
        held_out = make_prompts(splits.test or splits.validation or splits.train, *words, cfg.seed + 1,
                                max_tokens=data.prompt_max_tokens)
    return PromptSets(train, held_out[:eval_count], left_out)


def starting_policy(cfg: Config, setting: str | None, key: str) -> str:
    """The model an RL stage starts from: `setting` (its `key`; not an ILQL model's `@beta=`), else this
    run's SFT (or pretrain) stage, which must exist. Load it with load_causal_lm(..., steering=False)."""
    if setting:
        refuse_steering(setting, key)  # before any work, naming the setting
        return setting
    start = policy_stage(cfg)  # sft, or pretrain in a pipeline without SFT
    folder = Path(cfg.runs_dir) / cfg.name / start
    if not (folder / "model").exists():
        raise RlhfLabError(f"{key} is not set and {folder / 'model'} does not exist. Run `rlhflab {start}` first or set {key}.")
    return str(folder)


def reward_functions(cfg: Config, runtime: Runtime, *, required: bool = True) -> dict[str, RewardFunction]:
    """The training reward ("score") and, where the reward model has one, its P(positive). With
    `required` False and no reward source at all (no reward_fn.source, no reward stage), {}."""
    default = str(Path(cfg.runs_dir) / cfg.name / "reward")
    if cfg.reward_fn.source is None and not Path(default).exists():
        if not required:
            return {}
        raise RlhfLabError(f"No reward: reward_fn.source is not set and this run has no reward model ({default}). Run "
                           f"`rlhflab reward` first, or set reward_fn.source (a reward run, a classifier or module:function).")
    rewards = {"score": build_reward(cfg.reward_fn, default_source=default, device=runtime.device)}
    probability = probability_reward(cfg.reward_fn, default_source=default, device=runtime.device)
    if probability is not None:
        rewards["positive_probability"] = probability
    return rewards


class StepOutputs:
    """What the RL stage writes besides metrics: sample tables, per-epoch snapshots, held-out rows."""

    def __init__(self, run_dir: RunDir, runtime: Runtime, policy: Policy, policy_source: str, ppo: PpoConfig, n_prompts: int):
        self.run_dir, self.runtime, self.policy, self.policy_source = run_dir, runtime, policy, policy_source
        self.ppo, self.n_prompts = ppo, n_prompts
        self.rows: list[dict] | None = None

    def keep_rows(self, result: tuple[dict, list[dict]]) -> dict:
        metrics, self.rows = result
        return metrics

    def write(self, name: str) -> None:
        if self.runtime.is_main:
            write_json(self.run_dir.path / name, self.rows)

    def after_step(self, step: int, batch: dict) -> None:
        """Samples every sample_every steps; a snapshot of the policy after each pass over the prompts
        for the over-optimisation study (rlhflab/stages/overopt.py)."""
        if self.runtime.is_main and (step % self.ppo.sample_every == 0 or step == 1):
            _write_samples(self.run_dir, step, batch["experience"], batch["kl"])
        prompts_per_step = self.ppo.batch_size // self.ppo.samples_per_prompt
        epoch = step * prompts_per_step // self.n_prompts
        if self.ppo.snapshot_each_epoch and epoch > (step - 1) * prompts_per_step // self.n_prompts:
            # every process gathers (a collective under FSDP, where each holds shards); the main one writes
            tensors = None if self.policy.lora else trainable_tensors(self.policy)
            if self.runtime.is_main:
                save_snapshot(self.policy, self.policy_source, self.run_dir.checkpoint_dir / f"epoch-{epoch}",
                              self.ppo.snapshot_dtype, tensors)


@torch.no_grad()
def evaluate(policy: Policy, tokenizer, rewards: dict[str, RewardFunction], prompts: list[str], ppo: PpoConfig,
             sampling: dict, seed: int, runtime: Runtime) -> tuple[dict, list[dict]]:
    """Mean rewards and KL on held-out prompts, sampled with a fixed seed so evaluations compare.

    Each process answers its share of the prompts in chunks seeded as rlhflab/eval/held_out.py's
    `held_out` seeds them, so DPO and ILQL runs from the same model start from the same samples;
    the rows are gathered in prompt order. The training RNG streams (CPU and CUDA) are left as
    they were."""
    mine = prompts[runtime.rank :: runtime.world_size]
    rows: list[dict] = []
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for start in range(0, len(mine), HELD_OUT_BATCH):
            chunk = mine[start : start + HELD_OUT_BATCH]
            torch.manual_seed(seed + runtime.rank + start)
            sampled = sample(policy, tokenizer, chunk, **sampling)
            exp = score_rollout(policy, tokenizer, lambda p, r: torch.zeros(len(r)), chunk, sampled, temperature=ppo.temperature,
                                stop_ids=sampling["stop_ids"], non_stop_penalty=None, autocast=runtime.autocast)
            kl = (kl_per_token(exp.logprobs, exp.ref_logprobs, ppo.kl_estimator) * exp.response_mask).sum(-1).cpu()
            rows += [{"prompt": p, "response": r, "kl": float(k)} for p, r, k in zip(chunk, exp.responses, kl)]
    return score_rows(rows, rewards, runtime)


def save_policy(policy: Policy, tokenizer, folder: Path, state: dict | None = None) -> None:
    """A plain causal LM folder (LoRA merged) plus the value head; the live tokenizer is left as it is.
    `state`: PolicyWithValue's whole state dict when it is FSDP-sharded (rlhflab/engine/sharding.py)."""
    import copy

    from safetensors.torch import save_file

    model = copy.deepcopy(policy.model).merge_and_unload() if policy.lora else policy.model
    saved = copy.copy(tokenizer)  # padding side "right" in the folder, without flipping the one in use
    saved.padding_side = "right"
    lm_state = value_state = None
    if state is not None:  # keys as PolicyWithValue names them: model.<lm key>, value_head.<key>
        lm_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        value_state = {k.removeprefix("value_head."): v for k, v in state.items() if k.startswith("value_head.")}
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, state_dict=lm_state)
        saved.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in (value_state or policy.value_head.state_dict()).items()},
                  tmp / "value_head.safetensors")


def _write_samples(run_dir: RunDir, step: int, exp: Experience, kl: torch.Tensor, limit: int = 8) -> None:
    with open(run_dir.path / "samples.jsonl", "a", encoding="utf-8") as handle:
        for i in range(min(limit, len(exp.prompts))):
            handle.write(json.dumps({"step": step, "prompt": exp.prompts[i], "response": exp.responses[i],
                                     "score": float(exp.scores[i]), "kl": float(kl[i].sum())}) + "\n")


def format_summary(summary: RlSummary) -> str:
    start, end = summary.start, summary.end
    keys = [k for k in ("score", "positive_probability", "kl") if k in start]
    lines = [f"{'':<8}" + "".join(f"{k:>22}" for k in keys)]
    for name, row in (("start", start), ("end", end)):
        lines.append(f"{name:<8}" + "".join(f"{row[k]:22.3f}" for k in keys))
    lines.append(f"({summary.seconds:.0f} s, rollout {summary.rollout_tokens_per_s:.0f} tokens/s, "
                 f"training {summary.train_tokens_per_s:.0f} tokens/s, peak {summary.peak_memory_mb:.0f} MB)")
    return "\n".join(lines)
