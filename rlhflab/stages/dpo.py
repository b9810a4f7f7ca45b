"""Direct preference optimisation: `rlhflab dpo`.

Pairs come from a file (dpo.pairs.source: the reward stage's prompt/chosen/rejected format, or
the web app's pairs export) or, by default, from the policy itself: k samples per training prompt
ranked by the reward function, best against worst (AI feedback). On-policy DPO runs in
`dpo.rounds` rounds (iterated DPO: Xu et al. 2023, Xiong et al. 2024): each samples new pairs from
the policy as trained so far, on the next `dpo.on_policy.prompts` training prompts, and trains on
them against the reference (`dpo.reference`: the starting model, or the policy as the round
began), whose log-probs are computed once per pair (rlhflab/algorithms/dpo.py). Held-out prompts
are answered at the start and after every round, scored and compared with the start in KL, as
the RL stage does, so the two read side by side and each round is a point of the frontier.

A round that finishes saves its weights and results (checkpoints/round/); an interrupted run
resumes in its round, from the loop's checkpoint (its pairs are sampled again, alike).
"""

from __future__ import annotations

import contextlib
import json
import time

import torch

from rlhflab.algorithms.dpo import DpoObjective, encode_pairs, on_policy_pairs, token_pairs
from rlhflab.algorithms.supervised import Selection, Supervised, cache_facts, make_optimizer, total_steps
from rlhflab.checkpoint import load_trainable_state, trainable_state
from rlhflab.config import Config, check_dpo
from rlhflab.data import load_pairs, split_pairs
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, frozen_cache_allowed, run_facts
from rlhflab.engine.sharding import gathered, whole_state
from rlhflab.errors import RlhfLabError
from rlhflab.eval.held_out import held_out
from rlhflab.io import RunDir, atomic_dir, read_json, write_json, write_jsonl
from rlhflab.models.blocks import disable_dropout
from rlhflab.models.causal_lm import count_parameters, load_causal_lm
from rlhflab.models.encoding import SplitForward, encode_and_cache, make_forward
from rlhflab.stages.common import finish_run, load_splits, open_run_dir
from rlhflab.stages.rl import check_context, prompt_sets, reward_functions, starting_policy
from rlhflab.stages.sft import configure_trainable, save_model
from rlhflab.summaries import DpoSummary

SPLITS = ("train", "validation", "test")
ROUND_SEED = 1009  # round r samples its pairs with seed + ROUND_SEED * (r - 1): round 1 as a one-round run


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """DPO from `cfg.dpo.policy` (default: this run's SFT model) in dpo.rounds rounds; write runs/<name>/dpo."""
    dpo = cfg.dpo
    check_dpo(dpo)
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
    disable_dropout(model.to(runtime.device))  # the reference log-probs are computed once: not under a dropout mask
    max_new = dpo.on_policy.max_new_tokens if dpo.on_policy.max_new_tokens is not None else cfg.generation.max_new_tokens
    check_context(model, tokenizer, train_prompts[: dpo.on_policy.prompts * dpo.rounds] + eval_prompts, max_new)
    sampling = dict(max_new_tokens=max_new, seed=cfg.seed, batch_size=dpo.eval_batch_size, runtime=runtime)
    start, _ = held_out(model, None, tokenizer, eval_prompts, rewards, **sampling)
    model = configure_trainable(model, dpo, "dpo")
    trainable, total = count_parameters(model)
    # Rounds after the first score their pairs against the starting weights (reference: start) or
    # against the policy as the round begins (previous_round, which needs no copy).
    start_weights = trainable_state(model) if dpo.rounds > 1 and dpo.reference == "start" else None
    done, resume_loop = _resumed_rounds(run_dir, model, runtime) if resume else ([], False)
    first_round = len(done) + 1
    prepared = None  # the last round's prepared policy (None before the first): under FSDP its weights are shards
    for number in range(first_round, dpo.rounds + 1):
        round_started, first_step = time.perf_counter(), done[-1]["step"] if done else 0
        runtime.seed(cfg.seed, per_rank=False)
        # 1. Pairs: the policy's own samples on this round's prompts ranked by the reward, or the file's, encoded
        # with the frozen lower blocks cached; both run outside the sharded forward (whole weights).
        with _whole(prepared):
            pairs, pair_facts = (_on_policy_pairs(cfg, number, model, tokenizer, train_prompts, rewards["score"], max_new,
                                                  runtime, run_dir) if on_policy else
                                 (token_pairs(file_pairs, tokenizer), {"source": dpo.pairs.source, "left_out": {}}))
            parts = split_pairs(pairs, dpo.pairs.fractions, cfg.seed, "dpo.pairs")
            data, masks, first, cache_seconds = _encode(parts, pair_facts, model, tokenizer, dpo, runtime, progress)
        # 2. The reference log-probs, once per pair: the policy's own, with the reference's weights in place.
        optimizer, scheduler = make_optimizer(model, dpo, len(parts.train))
        prepared, optimizer = _prepare(runtime, model, first, optimizer, prepared)
        reference_weights = start_weights if number > 1 else None
        with _weights(model, reference_weights):
            objective = DpoObjective(make_forward(prepared, runtime.autocast), data, masks, beta=dpo.beta, loss=dpo.loss,
                                     batch_size=dpo.eval_batch_size, model=prepared, runtime=runtime,
                                     nll_coef=dpo.nll_coef, reward_gaps=_reward_gaps(parts, data, runtime))
        before = {name: objective.metrics(name, start=reference_weights is None) for name in data}
        # 3. Train on the round's pairs (a fresh optimizer and schedule), keeping the best validation loss.
        algorithm = Supervised(
            runtime=runtime, model=model, prepared=prepared, optimizer=optimizer, scheduler=scheduler, cfg=dpo,
            seed=cfg.seed, n_train=len(parts.train), loss=objective.train_loss,
            validate=(lambda: objective.metrics("validation")) if "validation" in data else None,
            selection=Selection("loss", higher_is_better=False), unit="pairs", first_step=first_step,
        )
        steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir,
                         total_steps=first_step + total_steps(dpo, len(parts.train)), first_step=first_step,
                         checkpoint_every=dpo.checkpoint_every, resume=resume_loop and number == first_round,
                         progress=progress,
                         desc=f"dpo ({dpo.loss})" + (f" round {number}/{dpo.rounds}" if dpo.rounds > 1 else ""))
        algorithm.keep_best()
        after = {name: objective.metrics(name) for name in data}
        # 4. The held-out evaluation against the starting model: this round's point on the frontier.
        del objective, data
        end, rows = _held_out_round(source, model, prepared, tokenizer, eval_prompts, rewards, sampling, runtime)
        done.append({"round": number, "step": steps, "pairs": {**pair_facts, **{n: len(getattr(parts, n)) for n in SPLITS}},
                     "before": before, "after": after, "end": end, **algorithm.facts(steps),
                     "frozen_cache": cache_facts(first, cache_seconds),
                     "seconds": round(time.perf_counter() - round_started, 1)})
        if runtime.is_main:
            write_jsonl(run_dir.path / "eval_after.jsonl", rows)
        _save_round(run_dir, model, done, runtime)
        _log_round(run_dir, done[-1], runtime)

    state = whole_state(model)  # under FSDP every process gathers the shards; the main one writes
    if runtime.is_main:
        save_model(model, tokenizer, run_dir, state)
    summary = _summary(cfg, source, rewards, done, start, splits.left_out | prompts.left_out, trainable, total)
    return finish_run(run_dir, DpoSummary(**summary, **run_facts(runtime, started)), runtime)


def _resumed_rounds(run_dir: RunDir, model, runtime: Runtime) -> tuple[list[dict], bool]:
    """(the rounds a resumed run finished, whether it stopped inside the next round's loop), with the
    last finished round's weights loaded. A resume continues the loop of the round it stopped in;
    stopped between rounds, it starts the next, the metrics cut back to the last round's end."""
    done = _finished_rounds(run_dir, model, runtime)
    resume_loop = _checkpoint_step(run_dir) > (done[-1]["step"] if done else 0)
    if done and not resume_loop and runtime.is_main:
        run_dir.truncate_metrics(done[-1]["step"])
        _log_round(run_dir, done[-1], runtime)
    return done, resume_loop


def _held_out_round(source: str, model, prepared, tokenizer, prompts: list[str], rewards: dict, sampling: dict,
                    runtime: Runtime) -> tuple[dict, list[dict]]:
    """The held-out metrics and rows of the policy after a round, KL measured to the starting model
    `source` (loaded for the purpose and let go after)."""
    reference, _ = load_causal_lm(source, steering=False)
    with gathered(prepared):  # under FSDP: whole weights while sampling outside the sharded forward
        return held_out(model, reference.to(runtime.device), tokenizer, prompts, rewards, **sampling)


def _encode(parts, pair_facts: dict, model, tokenizer, dpo, runtime: Runtime, progress: bool):
    """The pairs of each split as token tensors (responses cut to dpo.max_length, counted in
    `pair_facts`), with the frozen lower blocks' outputs cached once: (data, masks, first, seconds)."""
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
    return data, masks, first, cache_seconds


def _reward_gaps(parts, data: dict, runtime: Runtime) -> dict[str, torch.Tensor] | None:
    """Each split's r(chosen) - r(rejected) (N,), where the pairs were scored (on-policy pairs); else None."""
    if any(pair.chosen_score is None for name in data for pair in getattr(parts, name)):
        return None
    return {name: torch.tensor([p.chosen_score - p.rejected_score for p in getattr(parts, name)], device=runtime.device)
            for name in data}


def _summary(cfg: Config, source: str, rewards: dict, done: list[dict], start: dict, left_out: dict,
             trainable: int, total: int) -> dict:
    """summary.json: the last round's pairs and metrics, the start and end, and every round's point."""
    dpo, last = cfg.dpo, done[-1]
    return {
        "algorithm": "dpo",
        "loss": dpo.loss,
        "beta": dpo.beta,
        "nll_coef": dpo.nll_coef,
        "rounds": dpo.rounds,
        "reference": dpo.reference,
        "policy": source,
        "reward": rewards["score"].description if rewards else None,
        "pairs": last["pairs"],
        "trainable": dpo.trainable,
        "parameters": {"trainable": trainable, "total": total},
        "left_out": left_out,
        "before": last["before"],
        "after": last["after"],
        "start": start,
        "end": last["end"],
        "by_round": [{k: r[k] for k in ("round", "step", "end", "seconds")} | {"train_pairs": r["pairs"]["train"]}
                     for r in done],
        **{k: last[k] for k in ("steps", "epochs_completed", "stopped_early", "train_pairs_per_s", "frozen_cache")},
    }


def _prepare(runtime: Runtime, model, first: int | None, optimizer, prepared):
    """(prepared policy, optimizer) for a round. Under FSDP the policy is sharded once, in the first
    round, and later rounds prepare their fresh optimizer with it again: FSDP 2 prepares an optimizer
    only with its model, and a new wrapper around weights that are shards already cannot be sharded."""
    if prepared is not None and runtime.sharded:
        return runtime.accelerator.prepare(prepared, optimizer)
    return runtime.accelerator.prepare(SplitForward(model, first), optimizer)


def _whole(prepared):
    """`gathered(prepared)` once a round has prepared the policy; before that its weights are whole."""
    return contextlib.nullcontext() if prepared is None else gathered(prepared)


@contextlib.contextmanager
def _weights(model, weights: dict | None):
    """`model` with its trainable weights replaced by `weights` inside the block (None: unchanged)."""
    if weights is None:
        yield
        return
    current = trainable_state(model)
    load_trainable_state(model, weights)
    try:
        yield
    finally:
        load_trainable_state(model, current)


def _checkpoint_step(run_dir: RunDir) -> int:
    """The step of the loop's last checkpoint (checkpoints/latest), 0 when there is none."""
    state = read_json(run_dir.checkpoint_dir / "latest" / "state.json") if run_dir.has_checkpoint() else None
    return int(state["step"]) if isinstance(state, dict) and isinstance(state.get("step"), int) else 0


def _save_round(run_dir: RunDir, model, done: list[dict], runtime: Runtime) -> None:
    """checkpoints/round/: the policy after the last finished round (trainable weights) and every finished
    round's results, in one folder written at once, so a resume starts the next round from them."""
    weights = trainable_state(model)  # under FSDP gathered by every process
    if runtime.is_main:
        with atomic_dir(run_dir.checkpoint_dir / "round") as tmp:
            torch.save(weights, tmp / "weights.pt")
            write_json(tmp / "rounds.json", done)
    runtime.barrier()


def _finished_rounds(run_dir: RunDir, model, runtime: Runtime) -> list[dict]:
    """The results of the rounds an interrupted run finished, with the last one's weights loaded into `model`."""
    folder = run_dir.checkpoint_dir / "round"
    if not (folder / "rounds.json").is_file():
        return []
    done = read_json(folder / "rounds.json")
    if not isinstance(done, list) or not all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in done):
        raise RlhfLabError(f"{folder / 'rounds.json'} is not a list of finished rounds; this run cannot be resumed. "
                           f"Start again with --overwrite.")
    load_trainable_state(model, torch.load(folder / "weights.pt", map_location=runtime.device, weights_only=True))
    return done


def _log_round(run_dir: RunDir, record: dict, runtime: Runtime) -> None:
    """Log a round's held-out evaluation in metrics.jsonl (split "eval"), once: a resume that finds it logged
    does not repeat it."""
    if not runtime.is_main:
        return
    line = {"step": record["step"], "split": "eval", "round": record["round"], **record["end"]}
    logged = run_dir.metrics_path.read_text(encoding="utf-8").splitlines() if run_dir.metrics_path.exists() else []
    if not any(json.loads(text).get("split") == "eval" and json.loads(text).get("round") == record["round"]
               for text in logged if text.strip()):
        run_dir.log_metrics(line)


def _file_pairs(pc) -> list:
    """The pairs of dpo.pairs.source (the reward stage's reader)."""
    return load_pairs(pc.source, prompt_column=pc.prompt_column, chosen_column=pc.chosen_column,
                      rejected_column=pc.rejected_column, split=pc.split, section="dpo.pairs")


def round_prompts(prompts: list[str], count: int, number: int) -> list[str]:
    """The `count` training prompts of round `number` (from 1): those after the previous round's, wrapping
    around the list, so round 1 takes the first `count` and rounds see new prompts while there are any."""
    count = min(count, len(prompts))
    first = (number - 1) * count % max(len(prompts), 1)
    return (prompts[first:] + prompts[:first])[:count]


def _on_policy_pairs(cfg: Config, number: int, model, tokenizer, prompts: list[str], reward, max_new: int,
                     runtime: Runtime, run_dir: RunDir) -> tuple[list, dict]:
    """Round `number`'s pairs from the policy's own samples ranked by the reward (added to pairs.jsonl,
    whose lines of this and later rounds are replaced), and their facts."""
    op = cfg.dpo.on_policy
    pairs, ties = on_policy_pairs(model, tokenizer, round_prompts(prompts, op.prompts, number), reward,
                                  k=op.samples_per_prompt, max_new_tokens=max_new, temperature=op.temperature,
                                  seed=cfg.seed + ROUND_SEED * (number - 1), batch_size=op.batch_size, runtime=runtime,
                                  pairing=op.pairing)
    if runtime.is_main:
        path = run_dir.path / "pairs.jsonl"
        earlier = [json.loads(t) for t in path.read_text(encoding="utf-8").splitlines() if t.strip()] if path.exists() else []
        write_jsonl(path, [r for r in earlier if r.get("round", 1) < number] + [
            {"round": number, "prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected,
             "chosen_score": p.chosen_score, "rejected_score": p.rejected_score} for p in pairs])
    if not pairs:
        raise RlhfLabError(f"Every prompt's {op.samples_per_prompt} samples ({ties} prompt{'s' * (ties != 1)}) scored "
                           f"the same under the reward, "
                           f"so no pair says which is better. Use a reward that tells responses apart, or more samples.")
    return pairs, {"source": "on-policy", "prompts": min(op.prompts, len(prompts)), "samples_per_prompt": op.samples_per_prompt,
                   "pairing": op.pairing,
                   "left_out": {"all samples scored the same": ties} if ties else {}}


def format_summary(summary: DpoSummary) -> str:
    """Pair metrics before and after, and the held-out reward and KL next to the start."""
    lines = [f"{'split':<11} {'loss':>7} {'pair acc':>9} {'margin':>8}"]
    for name, row in summary.after.items():
        lines.append(f"{name:<11} {row['loss']:7.3f} {row['pair_accuracy']:9.3f} {row['margin']:8.3f}")
    start_loss = summary.before.get("train", {}).get("loss")
    rounds = summary.by_round or []
    if start_loss is not None and (len(rounds) < 2 or summary.reference == "previous_round"):
        # the one number "before" can take when the policy starts the round as its reference
        lines.append(f"(before training every margin is 0, as the policy is the reference: loss {start_loss:.3f}, "
                     "pair accuracy 0, as a tie is not a correct pair)")
    keys = [k for k in ("score", "positive_probability", "kl") if k in summary.end]
    lines.append(f"{'held out':<8}" + "".join(f"{k:>22}" for k in keys))
    ends = [(f"round {r['round']}", r["end"]) for r in rounds] if len(rounds) > 1 else [("end", summary.end)]
    for name, metrics in [("start", summary.start), *ends]:
        lines.append(f"{name:<8}" + "".join(f"{metrics[k]:22.3f}" for k in keys))
    pairs = summary.pairs
    lines.append(f"({summary.seconds:.0f} s, {summary.train_pairs_per_s:.1f} pairs/s, "
                 f"{pairs['train']} training pair{'s' * (pairs['train'] != 1)} from {pairs['source']})")
    return "\n".join(lines)
