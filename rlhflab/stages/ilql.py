"""Offline RL from scored texts: `rlhflab ilql` (implicit language Q-learning, Snell et al. 2022).

By default the samples are the data section's reviews with their labels as rewards (trlX's ILQL
sentiment example); `ilql.samples` names any file of texts with rewards, or `on_policy`: the
starting model's own responses to training prompts, scored by reward_fn before training (written
to samples.jsonl; 90 % of the prompts train, 10 % validate). No sampling happens while training.
Returns are normalised over the training texts (as trlX does) and put on each text's last token.
The model saved in model/ is a plain causal LM (the AWAC-trained policy) plus the heads; loading
the folder steers generation by β·(Q − V), with β = ilql.beta unless the model is named as
"<run>/ilql@beta=<β>" (rlhflab/models/causal_lm.py).
Held-out prompts are answered at the start and, after training, at every β of ilql.eval_betas.
"""

from __future__ import annotations

import math
import time

import torch

from rlhflab.algorithms.ilql import Ilql, IlqlModule, IlqlObjective, rewards_at_last_token
from rlhflab.algorithms.supervised import Selection, cache_facts, make_optimizer, total_steps
from rlhflab.config import ON_POLICY, Config, check_ilql
from rlhflab.data.records import join_prompt_response
from rlhflab.data.scored import ScoredTexts, load_scored_texts
from rlhflab.data.splits import split_sizes
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, frozen_cache_allowed, run_facts
from rlhflab.engine.sharding import gathered, whole_state
from rlhflab.errors import RlhfLabError
from rlhflab.eval.generate import sample_and_score
from rlhflab.eval.held_out import held_out
from rlhflab.io import RunDir, write_jsonl
from rlhflab.models.blocks import disable_dropout
from rlhflab.models.causal_lm import count_parameters, load_causal_lm
from rlhflab.models.encoding import encode, encode_and_cache, make_forward
from rlhflab.models.ilql import IlqlHeads, attach_steering, save_heads
from rlhflab.stages.common import finish_run, load_splits, open_run_dir
from rlhflab.stages.rl import check_context, prompt_sets, reward_functions, starting_policy
from rlhflab.stages.sft import configure_trainable, save_model
from rlhflab.summaries import IlqlSummary


def scored_splits(cfg: Config, splits) -> tuple[dict[str, ScoredTexts], str]:
    """Train and validation texts with rewards, and where they came from."""
    il = cfg.ilql
    if il.samples is None:
        parts = {"train": splits.train, "validation": splits.validation}
        return {name: ScoredTexts([r.text for r in reviews], [float(r.label) for r in reviews])
                for name, reviews in parts.items() if reviews}, f"{cfg.data.source} reviews, label as reward"
    scored = load_scored_texts(il.samples, text_column=il.text_column, reward_column=il.reward_column)
    order = torch.randperm(len(scored.texts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_train, n_validation, _ = split_sizes(len(order), [0.9, 0.1, 0.0])
    parts = {"train": order[:n_train], "validation": order[n_train:n_train + n_validation]}
    return {name: ScoredTexts([scored.texts[i] for i in idx], [scored.rewards[i] for i in idx], scored.left_out)
            for name, idx in parts.items() if idx}, il.samples


def policy_samples(cfg: Config, model, tokenizer, prompts: list[str], reward, runtime: Runtime,
                   run_dir: RunDir) -> tuple[dict[str, ScoredTexts], str]:
    """ilql.on_policy.samples_per_prompt responses of `model` to each of `prompts`, each prompt + response
    scored by `reward`, as train and validation texts (the first 90 % of the prompts train, the rest
    validate, so validation prompts are unseen), and where they came from. Every process gets them all;
    the main one writes them to samples.jsonl."""
    op = cfg.ilql.on_policy
    max_new_tokens = op.max_new_tokens or cfg.generation.max_new_tokens
    check_context(model, tokenizer, prompts, max_new_tokens)
    mine, generations, scores = sample_and_score(model, tokenizer, prompts, reward, k=op.samples_per_prompt,
                                                 max_new_tokens=max_new_tokens, temperature=op.temperature,
                                                 seed=cfg.seed, batch_size=op.batch_size, runtime=runtime)
    k = op.samples_per_prompt
    per_prompt = runtime.gather_round_robin([[(g.prompt, g.response, float(r)) for g, r in
                                              zip(generations[i * k:(i + 1) * k], scores[i].tolist())]
                                             for i in range(len(mine))])
    n_train, n_validation, _ = split_sizes(len(per_prompt), [0.9, 0.1, 0.0])
    parts = {"train": per_prompt[:n_train], "validation": per_prompt[n_train:n_train + n_validation]}
    if runtime.is_main:
        write_jsonl(run_dir.path / "samples.jsonl", [{"split": name, "prompt": p, "response": r, "reward": score}
                                                     for name, part in parts.items() for rows in part
                                                     for p, r, score in rows])
    scored = {name: ScoredTexts([join_prompt_response(p, r) for rows in part for p, r, _ in rows],
                                [score for rows in part for _, _, score in rows]) for name, part in parts.items() if part}
    return scored, f"on-policy: {k} sample{'s' * (k != 1)} of the policy per training prompt, scored by the reward"


def normalised_returns(scored: dict[str, ScoredTexts], source: str) -> tuple[dict[str, torch.Tensor], float, float]:
    """Each split's rewards normalised over the training texts (as trlX does, so the heads learn on one scale
    whatever the reward's units), in the float32 the heads train on: ({split: (N,)}, mean, std).

    Raises RlhfLabError when a value is not finite there: rewards near float32's limit (3e38) overflow
    the mean, and a validation reward far outside the training ones overflows once normalised."""
    rescale = "rescale all rewards (dividing them by one number changes nothing after normalising)"
    train = torch.tensor(scored["train"].rewards)
    mean, std = float(train.mean()), float(train.std()) if len(train) > 1 else 1.0
    if not (math.isfinite(mean) and math.isfinite(std)):  # NaN or inf here would quietly make every return NaN or 0
        raise RlhfLabError(f"The training rewards of {source} overflow the 32-bit floats ILQL trains in (their mean "
                           f"comes out as {mean:g}, their standard deviation as {std:g}): {rescale}.")
    std = std if std > 0 else 1.0
    returns = {}
    for split, part in scored.items():
        returns[split] = (torch.tensor(part.rewards) - mean) / std
        bad = (~torch.isfinite(returns[split])).nonzero().flatten().tolist()
        if bad:
            raise RlhfLabError(
                f"A {split} reward of {source}, {part.rewards[bad[0]]:g}, becomes {float(returns[split][bad[0]])} when "
                f"normalised in the 32-bit floats ILQL trains in (the training rewards' mean is {mean:g}, their "
                f"standard deviation {std:g}). Check that reward, or {rescale}.")
    return returns, mean, std


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """ILQL from `cfg.ilql.policy` (default: this run's SFT model); write runs/<name>/ilql."""
    il = cfg.ilql
    check_ilql(il)
    started = time.perf_counter()
    runtime.seed(cfg.seed, per_rank=False)
    on_policy = il.samples == ON_POLICY
    splits = load_splits(cfg, require_labels=il.samples is None)
    prompts = prompt_sets(cfg, splits, il.eval_prompts)
    eval_prompts, sample_prompts = prompts.held_out, prompts.train[: il.on_policy.prompts] if on_policy else []
    if on_policy and not sample_prompts:
        raise RlhfLabError("ilql.samples is on_policy, but there are no training prompts to sample on: give the data "
                           "section a train split, or data.prompts.")
    if not on_policy:  # data errors before any model is loaded
        scored, described = scored_splits(cfg, splits)
        returns, mean, std = normalised_returns(scored, described)
    source = starting_policy(cfg, il.policy, "ilql.policy")
    rewards = reward_functions(cfg, runtime, required=on_policy)
    run_dir = open_run_dir(cfg, "ilql", resume=resume, overwrite=overwrite, runtime=runtime)

    model, tokenizer = load_causal_lm(source, steering=False)  # an earlier ILQL run's heads must not steer training
    disable_dropout(model.to(runtime.device))
    max_new = cfg.generation.max_new_tokens
    check_context(model, tokenizer, eval_prompts, max_new)
    sampling = dict(max_new_tokens=max_new, seed=cfg.seed, batch_size=il.eval_batch_size, runtime=runtime)
    start, _ = held_out(model, None, tokenizer, eval_prompts, rewards, **sampling)
    if on_policy:
        scored, described = policy_samples(cfg, model, tokenizer, sample_prompts, rewards["score"], runtime, run_dir)
        returns, mean, std = normalised_returns(scored, described)

    encoded = {name: encode(part.texts, tokenizer, il.max_length, append_eos=True) for name, part in scored.items()}
    action_rewards = {name: rewards_at_last_token(encoded[name].attention_mask, returns[name]).to(runtime.device)
                      for name in scored}

    model = configure_trainable(model, il, "ilql")
    heads = IlqlHeads(model.config.get_text_config().hidden_size, model.get_output_embeddings()).to(runtime.device)
    data, first, cache_seconds = encode_and_cache(
        model, encoded, tokenizer, max_length=il.max_length, append_eos=True, device=runtime.device,
        cache_frozen=il.cache_frozen and isinstance(il.trainable, list) and frozen_cache_allowed(runtime),
        batch_size=il.eval_batch_size, autocast=runtime.autocast, progress=progress and runtime.is_main)
    module = IlqlModule(model, heads, first)
    trainable, total = count_parameters(module)
    optimizer, scheduler = make_optimizer(module, il, len(data["train"]))
    prepared, optimizer = runtime.accelerator.prepare(module, optimizer)
    objective = IlqlObjective(make_forward(prepared, runtime.autocast), data, action_rewards, settings=il,
                              batch_size=il.eval_batch_size, model=prepared, runtime=runtime)
    algorithm = Ilql(
        heads=heads, polyak=il.polyak, runtime=runtime, model=module, prepared=prepared, optimizer=optimizer,
        scheduler=scheduler, cfg=il, seed=cfg.seed, n_train=len(data["train"]), loss=objective.train_loss,
        validate=(lambda: objective.metrics("validation")) if "validation" in data else None,
        selection=Selection("loss", higher_is_better=False), unit="tokens",
    )
    steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir, total_steps=total_steps(il, len(data["train"])),
                     checkpoint_every=il.checkpoint_every, resume=resume, progress=progress, desc="ilql")
    algorithm.keep_best()
    after = {name: objective.metrics(name) for name in data}

    with gathered(prepared):  # under FSDP: whole weights (the LM's and the heads') while sampling
        by_beta, samples = _held_out_by_beta(model, heads, source, tokenizer, eval_prompts, rewards, il, sampling, runtime)
    # under FSDP every process gathers the shards; the main one writes
    state, heads_state = whole_state(model), whole_state(heads)
    if runtime.is_main:
        write_jsonl(run_dir.path / "eval_after.jsonl", samples)
        save_model(model, tokenizer, run_dir, state)
        save_heads(heads, run_dir.model_dir, beta=il.beta, top_k=il.top_k, state=heads_state)
    summary = _summary(il, source, rewards, scored, described, (mean, std), (trainable, total), start, after, by_beta,
                       {**splits.left_out, **prompts.left_out, **scored["train"].left_out})
    summary |= {**algorithm.facts(steps), "frozen_cache": cache_facts(first, cache_seconds), **run_facts(runtime, started)}
    return finish_run(run_dir, IlqlSummary(**summary), runtime)


def _summary(il, source: str, rewards: dict, scored: dict, described: str, reward_stats: tuple[float, float],
             parameters: tuple[int, int], start: dict, after: dict, by_beta: dict, left_out: dict) -> dict:
    """summary.json's account of the run: its samples and their reward statistics (mean, std), the
    parameters (trainable, total), the held-out start and the end at ilql.beta beside every β."""
    return {
        "algorithm": "ilql",
        "policy": source,
        "samples": {"source": described, **{name: len(part.texts) for name, part in scored.items()},
                    "reward_mean": reward_stats[0], "reward_std": reward_stats[1]},
        "reward": rewards["score"].description if rewards else None,
        "beta": il.beta,
        "top_k": il.top_k,
        "trainable": il.trainable,
        "parameters": {"trainable": parameters[0], "total": parameters[1]},
        "left_out": left_out,
        "after": after,
        "start": start,
        "end": by_beta[str(il.beta)],
        "by_beta": by_beta,
    }


def _held_out_by_beta(model, heads, source: str, tokenizer, prompts: list[str], rewards: dict, il, sampling: dict,
                      runtime: Runtime) -> tuple[dict, list[dict]]:
    """The held-out metrics ({str(β): metrics}) and rows of the model steered at each β of eval_betas and
    the default one, each against the starting model (loaded again, once, for the KL)."""
    reference, _ = load_causal_lm(source, steering=False)
    reference.to(runtime.device)
    by_beta, samples = {}, []
    for beta in sorted({*il.eval_betas, il.beta}):
        handle = attach_steering(model, heads, beta, il.top_k)
        try:
            by_beta[str(beta)], rows = held_out(model, reference, tokenizer, prompts, rewards, **sampling)
        finally:
            handle.remove()
        samples += [{"beta": beta, **row} for row in rows]
    return by_beta, samples


def format_summary(summary: IlqlSummary) -> str:
    """The loss terms per action, then the held-out reward and KL at each generation β."""
    lines = [f"{'split':<11}" + "".join(f"{k:>9}" for k in ("loss", "q", "v", "cql", "awac"))]
    for name, row in summary.after.items():
        lines.append(f"{name:<11}" + "".join(f"{row[k]:9.3f}" for k in ("loss", "q", "v", "cql", "awac")))
    keys = [k for k in ("score", "positive_probability", "kl") if k in summary.start]
    lines.append(f"{'held out':<12}" + "".join(f"{k:>22}" for k in keys))
    lines.append(f"{'start':<12}" + "".join(f"{summary.start[k]:22.3f}" for k in keys))
    for beta, row in summary.by_beta.items():
        lines.append(f"{'beta ' + beta:<12}" + "".join(f"{row[k]:22.3f}" for k in keys))
    texts = summary.samples["train"]
    lines.append(f"({summary.seconds:.0f} s, {summary.train_tokens_per_s:.0f} train tokens/s, "
                 f"{texts} text{'s' * (texts != 1)} from {summary.samples['source']})")
    return "\n".join(lines)
