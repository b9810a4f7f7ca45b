"""Held-out checks of a plain causal LM against its reference: the numbers DPO and ILQL report
before and after training, in the units PPO reports (rlhflab/stages/rl.py `evaluate`).

    metrics, rows = held_out(model, reference, tokenizer, prompts, rewards, ...)
    metrics == {"kl": nats per response, "score": mean reward, "positive_probability": ...}
"""

from __future__ import annotations

import torch

from rlhflab.eval.generate import generate, response_logprobs

# Every stage samples its held-out prompts in chunks of this many, seeding chunk k at
# seed + rank + k * HELD_OUT_BATCH (rlhflab/eval/generate.py `generate`; RL's `evaluate` does the
# same). Random draws depend on the batch's shape, so a shared chunk means one model answers one
# prompt list with the same samples in every stage: the start of an RL run and of a DPO run from
# one SFT model score the same, and their frontiers differ by what training did, not by noise.
HELD_OUT_BATCH = 64


@torch.no_grad()
def held_out(model, reference, tokenizer, prompts: list[str], rewards: dict, *, max_new_tokens: int, seed: int,
             batch_size: int, runtime) -> tuple[dict[str, float], list[dict]]:
    """Sample one response per prompt from `model` (temperature 1, seeded), score it with every
    reward (name -> RewardFunction), and measure KL(model || reference) as the sum over the
    response's tokens of log π(y_t) − log π_ref(y_t) (the k1 estimate, nats per response).
    `reference` None means the model is its own reference (KL 0, one pass fewer). Sampling runs in
    chunks of HELD_OUT_BATCH prompts; `batch_size` is the log-prob passes' batch.

    Each process answers its share of the prompts; every process gets all rows back in prompt
    order. The training RNG streams are left as they were."""
    mine = prompts[runtime.rank :: runtime.world_size]
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generations = generate(model, tokenizer, mine, max_new_tokens=max_new_tokens, temperature=1.0,
                               seed=seed + runtime.rank, batch_size=HELD_OUT_BATCH, autocast=runtime.autocast)
    rows = [{"prompt": g.prompt, "response": g.response, "kl": 0.0} for g in generations]
    if reference is not None and generations:
        options = dict(pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, autocast=runtime.autocast)
        policy_lp = response_logprobs(model, generations, **options)
        reference_lp = response_logprobs(reference, generations, **options)
        for row, a, b in zip(rows, policy_lp, reference_lp):
            row["kl"] = float((a - b).sum())
    return score_rows(rows, rewards, runtime)


def score_rows(rows: list[dict], rewards: dict, runtime) -> tuple[dict[str, float], list[dict]]:
    """Score this process's rows ({"prompt", "response", "kl"}) with every reward (name ->
    RewardFunction), gather every process's rows in prompt order (round robin), and return the
    means of "kl" and of each reward over all of them, with the rows."""
    for name, fn in rewards.items():
        values = fn([r["prompt"] for r in rows], [r["response"] for r in rows]).tolist() if rows else []
        for row, value in zip(rows, values):
            row[name] = value
    rows = runtime.gather_round_robin(rows)
    return {key: sum(r[key] for r in rows) / max(len(rows), 1) for key in ("kl", *rewards)}, rows
