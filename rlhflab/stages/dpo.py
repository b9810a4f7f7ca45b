"""Direct preference optimisation: `rlhflab dpo`.

Pairs come from a file (dpo.pairs.source: the reward stage's prompt/chosen/rejected format, or
the web app's pairs export) or, by default, from the starting policy itself: k samples per
training prompt ranked by the reward function, best against worst (AI feedback). The starting
model is the frozen reference; its log-probs are computed once per pair (rlhflab/algorithms/dpo.py).
Held-out prompts are answered before and after, scored and compared with the start in KL, as
the PPO stage does, so the two read side by side.
"""

from __future__ import annotations

import time

from rlhflab.algorithms.dpo import DpoObjective, encode_pairs, on_policy_pairs, token_pairs
from rlhflab.algorithms.supervised import Selection, Supervised, cache_facts, make_optimizer, total_steps
from rlhflab.config import Config, check_dpo
from rlhflab.data import load_pairs, split_pairs
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, frozen_cache_allowed, run_facts
from rlhflab.engine.sharding import refuse_sharded
from rlhflab.errors import RlhfLabError
from rlhflab.eval.held_out import held_out
from rlhflab.io import RunDir, write_jsonl
from rlhflab.models.blocks import disable_dropout
from rlhflab.models.causal_lm import count_parameters, load_causal_lm
from rlhflab.models.encoding import SplitForward, encode_and_cache, make_forward
from rlhflab.stages.common import finish_run, load_splits, open_run_dir
from rlhflab.stages.ppo import check_context, prompt_sets, reward_functions, starting_policy
from rlhflab.stages.sft import configure_trainable, save_model

SPLITS = ("train", "validation", "test")


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """DPO from `cfg.dpo.policy` (default: this run's SFT model); write runs/<name>/dpo."""
    dpo = cfg.dpo
    check_dpo(dpo)
    refuse_sharded(runtime, "dpo")
    started = time.perf_counter()
    runtime.seed(cfg.seed, per_rank=False)
    splits = load_splits(cfg)
    prompts = prompt_sets(cfg, splits, dpo.eval_prompts)
    train_prompts, eval_prompts = prompts.train, prompts.held_out
    source = starting_policy(cfg, dpo.policy, "dpo.policy")
    on_policy = dpo.pairs.source is None
    rewards = reward_functions(cfg, runtime, required=on_policy)
    file_pairs = None if on_policy else _file_pairs(dpo.pairs)  # data errors before any model loads
    run_dir = open_run_dir(cfg, "dpo", resume=resume, overwrite=overwrite, runtime=runtime)

    model, tokenizer = load_causal_lm(source, steering=False)  # an ILQL run's heads must not steer training
    disable_dropout(model)  # the reference log-probs are computed once: they must not depend on a dropout mask
    model.to(runtime.device)
    max_new = dpo.on_policy.max_new_tokens if dpo.on_policy.max_new_tokens is not None else cfg.generation.max_new_tokens
    check_context(model, tokenizer, train_prompts[: dpo.on_policy.prompts] + eval_prompts, max_new)
    sampling = dict(max_new_tokens=max_new, seed=cfg.seed, batch_size=dpo.eval_batch_size, runtime=runtime)
    start, _ = held_out(model, None, tokenizer, eval_prompts, rewards, **sampling)
    if on_policy:
        pairs, pair_facts = _on_policy_pairs(cfg, model, tokenizer, train_prompts, rewards["score"], max_new, runtime, run_dir)
    else:
        pairs, pair_facts = token_pairs(file_pairs, tokenizer), {"source": dpo.pairs.source, "left_out": {}}
    parts = split_pairs(pairs, dpo.pairs.fractions, cfg.seed, "dpo.pairs")

    model = configure_trainable(model, dpo)
    trainable, total = count_parameters(model)
    encoded, masks, cut = {}, {}, 0
    for name in SPLITS:
        if getattr(parts, name):
            encoded[name], masks[name], n = encode_pairs(getattr(parts, name), tokenizer, dpo.max_length)
            masks[name], cut = masks[name].to(runtime.device), cut + n
    if cut:
        pair_facts["responses_cut_to_max_length"] = cut
    data, first, cache_seconds = encode_and_cache(
        model, encoded, tokenizer, max_length=dpo.max_length, append_eos=False, device=runtime.device,
        cache_frozen=dpo.cache_frozen and isinstance(dpo.trainable, list) and frozen_cache_allowed(runtime),
        batch_size=dpo.eval_batch_size, autocast=runtime.autocast, progress=progress and runtime.is_main)
    optimizer, scheduler = make_optimizer(model, dpo, len(parts.train))
    prepared, optimizer = runtime.accelerator.prepare(SplitForward(model, first), optimizer)
    objective = DpoObjective(make_forward(prepared, runtime.autocast), data, masks, beta=dpo.beta, loss=dpo.loss,
                             batch_size=dpo.eval_batch_size, model=prepared, runtime=runtime)
    before = {name: objective.metrics(name, start=True) for name in data}
    algorithm = Supervised(
        runtime=runtime, model=model, prepared=prepared, optimizer=optimizer, scheduler=scheduler, cfg=dpo, seed=cfg.seed,
        n_train=len(parts.train), loss=objective.train_loss,
        validate=(lambda: objective.metrics("validation")) if "validation" in data else None,
        selection=Selection("loss", higher_is_better=False), unit="pairs",
    )
    steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir, total_steps=total_steps(dpo, len(parts.train)),
                     checkpoint_every=dpo.checkpoint_every, resume=resume, progress=progress, desc=f"dpo ({dpo.loss})")
    algorithm.keep_best()
    after = {name: objective.metrics(name) for name in data}
    reference, _ = load_causal_lm(source, steering=False)
    end, rows = held_out(model, reference.to(runtime.device), tokenizer, eval_prompts, rewards, **sampling)
    del reference
    if runtime.is_main:
        write_jsonl(run_dir.path / "eval_after.jsonl", rows)
        save_model(model, tokenizer, run_dir)
    summary = {
        "algorithm": "dpo",
        "loss": dpo.loss,
        "beta": dpo.beta,
        "policy": source,
        "reward": rewards["score"].description if rewards else None,
        "pairs": {**pair_facts, **{name: len(getattr(parts, name)) for name in SPLITS}},
        "trainable": dpo.trainable,
        "parameters": {"trainable": trainable, "total": total},
        "left_out": {**splits.left_out, **prompts.left_out},
        "before": before,
        "after": after,
        "start": start,
        "end": end,
        **algorithm.facts(steps),
        "frozen_cache": cache_facts(first, cache_seconds),
        **run_facts(runtime, started),
    }
    return finish_run(run_dir, summary, runtime)


def _file_pairs(pc) -> list:
    """The pairs of dpo.pairs.source (the reward stage's reader)."""
    return load_pairs(pc.source, prompt_column=pc.prompt_column, chosen_column=pc.chosen_column,
                      rejected_column=pc.rejected_column, split=pc.split, section="dpo.pairs")


def _on_policy_pairs(cfg: Config, model, tokenizer, prompts: list[str], reward, max_new: int, runtime: Runtime,
                     run_dir: RunDir) -> tuple[list, dict]:
    """Pairs from the starting model's own samples ranked by the reward (written to pairs.jsonl), and their facts."""
    op = cfg.dpo.on_policy
    pairs, ties = on_policy_pairs(model, tokenizer, prompts[: op.prompts], reward, k=op.samples_per_prompt,
                                  max_new_tokens=max_new, temperature=op.temperature, seed=cfg.seed,
                                  batch_size=op.batch_size, runtime=runtime)
    if runtime.is_main:
        write_jsonl(run_dir.path / "pairs.jsonl", [
            {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected, "chosen_score": p.chosen_score,
             "rejected_score": p.rejected_score} for p in pairs])
    if not pairs:
        raise RlhfLabError(f"Every prompt's {op.samples_per_prompt} samples ({ties} prompt{'s' * (ties != 1)}) scored "
                           f"the same under the reward, "
                           f"so no pair says which is better. Use a reward that tells responses apart, or more samples.")
    return pairs, {"source": "on-policy", "prompts": min(op.prompts, len(prompts)), "samples_per_prompt": op.samples_per_prompt,
                   "left_out": {"all samples scored the same": ties} if ties else {}}


def format_summary(summary: dict) -> str:
    """Pair metrics before and after, and the held-out reward and KL next to the start."""
    lines = [f"{'split':<11} {'loss':>7} {'pair acc':>9} {'margin':>8}"]
    for name, row in summary["after"].items():
        lines.append(f"{name:<11} {row['loss']:7.3f} {row['pair_accuracy']:9.3f} {row['margin']:8.3f}")
    start_loss = summary["before"].get("train", {}).get("loss")
    if start_loss is not None:  # the one number "before" can take: the policy starts as the reference
        lines.append(f"(before training every margin is 0, as the policy is the reference: loss {start_loss:.3f}, "
                     "pair accuracy 0, as a tie is not a correct pair)")
    keys = [k for k in ("score", "positive_probability", "kl") if k in summary["end"]]
    lines.append(f"{'held out':<8}" + "".join(f"{k:>22}" for k in keys))
    for name in ("start", "end"):
        lines.append(f"{name:<8}" + "".join(f"{summary[name][k]:22.3f}" for k in keys))
    lines.append(f"({summary['seconds']:.0f} s, {summary['train_pairs_per_s']:.1f} pairs/s, "
                 f"{summary['pairs']['train']} training pair{'s' * (summary['pairs']['train'] != 1)} from "
                 f"{summary['pairs']['source']})")
    return "\n".join(lines)
