"""Generation and log-probs for plain causal LMs (evaluation, blind ratings, the scored samples DPO and ILQL
learn from): no value head, no PPO state."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rlhflab.models.causal_lm import sample_tokens
from rlhflab.models.policy import position_ids_for
from rlhflab.ops.ppo import logprobs_from_logits
from rlhflab.rollout import response_mask_from


@dataclass
class Generation:
    prompt: str
    response: str
    prompt_ids: list[int]
    response_ids: list[int]  # up to and including the stop token, if one was sampled


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0,
             batch_size: int = 16, autocast=nullcontext) -> list[Generation]:
    """Pure sampling (no top-k/top-p), seeded per batch so a model's samples do not depend on what ran before."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    model.eval()
    results: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(_device(model))
        torch.manual_seed(seed + start)
        with autocast():
            out = sample_tokens(model, enc.input_ids, enc.attention_mask, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=stop_ids or None)
        width = enc.input_ids.shape[1]
        response = out[:, width:]
        mask, _ = response_mask_from(response, stop_ids)
        for i, prompt in enumerate(chunk):
            ids = response[i][mask[i].bool()].tolist()
            prompt_ids = enc.input_ids[i][enc.attention_mask[i].bool()].tolist()
            results.append(Generation(prompt, tokenizer.decode(ids, skip_special_tokens=True), prompt_ids, ids))
    return results


@torch.no_grad()
def sample_and_score(model, tokenizer, prompts: Sequence[str], reward: Callable, *, k: int, max_new_tokens: int,
                     temperature: float, seed: int, batch_size: int, runtime) -> tuple[list[str], list[Generation], torch.Tensor]:
    """k responses to each of this process's share of `prompts` (every world_size-th, from its rank),
    scored by `reward` (prompts, responses) -> (N,): (its prompts, their generations, prompt by prompt,
    and the scores (len(its prompts), k)). Put the per-prompt results back in order with
    `runtime.gather_round_robin`. The global RNG is left as it was, so training after it does not
    depend on how much was sampled."""
    mine = list(prompts[runtime.rank :: runtime.world_size])
    repeated = [p for p in mine for _ in range(k)]
    devices = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        generations = generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed + 7919 * runtime.rank, batch_size=batch_size, autocast=runtime.autocast)
    scores = reward(repeated, [g.response for g in generations]).view(len(mine), k) if mine else torch.zeros(0, k)
    return mine, generations, scores


@torch.no_grad()
def response_logprobs(model, generations: list[Generation], *, pad_token_id: int, batch_size: int = 16,
                      autocast=nullcontext) -> list[torch.Tensor]:
    """Per-token log-probs (fp32, temperature 1) of each response given its prompt, under `model`."""
    device = _device(model)
    model.eval()
    result: list[torch.Tensor] = []
    for start in range(0, len(generations), batch_size):
        chunk = generations[start:start + batch_size]
        width = max(len(g.prompt_ids) for g in chunk)
        length = max(max(len(g.response_ids) for g in chunk), 1)
        ids = torch.full((len(chunk), width + length), pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, g in enumerate(chunk):
            p, r = len(g.prompt_ids), len(g.response_ids)
            ids[i, width - p:width] = torch.tensor(g.prompt_ids)
            ids[i, width:width + r] = torch.tensor(g.response_ids, dtype=torch.long)
            attention[i, width - p:width + r] = 1
        ids, attention = ids.to(device), attention.to(device)
        with autocast():
            logits = model(input_ids=ids, attention_mask=attention, position_ids=position_ids_for(attention),
                           use_cache=False).logits[:, width - 1:-1]
        # In the forward's dtype (bf16 under autocast): logprobs_from_logits takes fp32 one row at a
        # time, the same values without a (B, R, V) fp32 copy of the batch (150 MB at 32 x 24 tokens).
        logprobs = logprobs_from_logits(logits, ids[:, width:])
        del logits
        result.extend(logprobs[i, :len(g.response_ids)].cpu() for i, g in enumerate(chunk))
    return result


def generate_responses(model_source: str, prompts: list[str], *, max_new_tokens: int = 24, temperature: float = 1.0,
                       seed: int = 0, batch_size: int = 16, device: str = "auto") -> list[str]:
    """Responses of a model id, asset name or run directory to `prompts` (bf16 where the hardware is fast at it)."""
    from rlhflab.models.causal_lm import load_causal_lm
    from rlhflab.engine.runtime import Runtime

    runtime = Runtime.create(device, "auto")
    model, tokenizer = load_causal_lm(model_source)
    model.to(runtime.device)
    generations = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                           seed=seed, batch_size=batch_size, autocast=runtime.autocast)
    return [g.response for g in generations]
