"""Rollouts: batched sampling with the KV cache, stop handling, scoring -> Experience."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rlhflab.models.blocks import recording_lower
from rlhflab.models.causal_lm import sample_tokens
from rlhflab.models.policy import Policy, policy_forward, reference_logprobs, shared_lower


@dataclass
class Experience:
    """One rollout batch. Token tensors are (B, T) with T = P + R; per-token ones are (B, R)."""

    prompts: list[str]
    responses: list[str]
    input_ids: torch.Tensor  # left-padded prompt (width P) followed by the response
    attention_mask: torch.Tensor  # 1 on real prompt tokens and on response tokens up to the stop
    response_start: int  # P
    response_mask: torch.Tensor  # (B, R)
    logprobs: torch.Tensor  # (B, R) of the policy that sampled
    ref_logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor  # (B, R)
    scores: torch.Tensor  # (B,) from the reward function (after any stop penalty)
    stopped: torch.Tensor  # (B,) bool: the response ended with EOS or the stop token
    lower: torch.Tensor | None  # shared frozen-block output for the whole sequence, if cached


def response_mask_from(tokens: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, stopped) for sampled tokens (B, R): real up to and including the first stop token."""
    is_stop = torch.isin(tokens, torch.tensor(stop_ids, device=tokens.device)) if stop_ids else torch.zeros_like(tokens, dtype=torch.bool)
    # A position is after the end when a stop token occurred strictly before it.
    stops_before = torch.cumsum(is_stop.long(), dim=-1) - is_stop.long()
    mask = (stops_before == 0).long()
    return mask, is_stop.any(dim=-1)


@contextlib.contextmanager
def casts_kept(model: torch.nn.Module):
    """Within the autocast region entered inside this block, each frozen weight is cast once, not at every call.

    torch's autocast keeps its bf16 copy of a weight until the region ends only for leaf tensors
    that require grad; a frozen fp32 weight is cast again at every call - at every decode step, for
    the 28 frozen blocks and the tied LM head of a default PPO rollout. Marked as requiring grad
    while sampling (under no_grad: no graph is built), they are cached too: the same bf16 values,
    cast once per rollout. The marks are removed on the way out, whatever happens. (On a CPU with
    oneDNN bf16 kernels the linear layers skip autocast altogether: `sampling.packed_linears`.)
    """
    if torch.is_grad_enabled():
        raise RuntimeError("casts_kept is for sampling under torch.no_grad()")
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    for param in frozen:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in frozen:
            param.requires_grad_(False)


@dataclass
class Sampled:
    sequences: torch.Tensor  # (B, P+R): left-padded prompt, then the sampled tokens
    prompt_mask: torch.Tensor  # (B, P)
    width: int  # P
    lower: torch.Tensor | None  # (B, P+R, H) hidden states entering the first trainable block, if cached


@torch.no_grad()
def sample(policy: Policy, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
           top_k: int, top_p: float, stop_ids: list[int], autocast) -> Sampled:
    """Generate with the KV cache, keeping the frozen blocks' outputs that generation computed anyway."""
    device = next(policy.model.parameters()).device
    tokenizer.padding_side = "left"  # generation appends on the right
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    policy.model.eval()
    recording = recording_lower(policy.lm, policy.first) if policy.first is not None else contextlib.nullcontext()
    with casts_kept(policy.model), autocast(), recording as chunks:
        out = sample_tokens(policy.model, enc.input_ids, enc.attention_mask, max_new_tokens=max_new_tokens,
                            temperature=temperature, top_k=top_k, top_p=top_p, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=stop_ids or None)
    width = enc.input_ids.shape[1]
    if out.shape[1] == width:  # every row stopped at once: keep one (masked) response slot
        out = torch.cat([out, torch.full_like(out[:, :1], tokenizer.pad_token_id)], dim=1)
    lower = None
    if chunks is not None:
        lower = torch.cat(chunks, dim=1)
        # The last sampled token was never fed back, and no logit or value is read at its
        # position (they predict the token after it), so zeros stand in; attention is causal.
        lower = torch.cat([lower, lower.new_zeros(lower.shape[0], out.shape[1] - lower.shape[1], lower.shape[2])], dim=1)
    return Sampled(out, enc.attention_mask, width, lower)


@torch.no_grad()
def score_rollout(policy: Policy, tokenizer, reward_fn, prompts: list[str], sampled: Sampled, *, temperature: float,
                  stop_ids: list[int], non_stop_penalty: float | None, autocast) -> Experience:
    """Log-probs, values, reference log-probs and scores of sampled sequences."""
    sequences, prompt_mask, width = sampled.sequences, sampled.prompt_mask, sampled.width
    response = sequences[:, width:]
    response_mask, stopped = response_mask_from(response, stop_ids)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    texts = tokenizer.batch_decode(torch.where(response_mask.bool(), response, tokenizer.pad_token_id), skip_special_tokens=True)
    policy.model.eval()
    with autocast():
        lower = sampled.lower if sampled.lower is not None else shared_lower(policy, sequences, attention_mask)
        # No entropy here: the logged entropy is the training pass's (OnlineRL.update), as it always was.
        out = policy_forward(policy, sequences, attention_mask, width, temperature, lower)
        ref_logprobs = reference_logprobs(policy, sequences, attention_mask, width, temperature, lower)
    scores = reward_fn(prompts, texts).to(sequences.device)
    if non_stop_penalty is not None:
        scores = torch.where(stopped, scores, torch.full_like(scores, non_stop_penalty))
    return Experience(prompts, texts, sequences, attention_mask, width, response_mask, out.logprobs, ref_logprobs,
                      out.values.float(), scores.float(), stopped, lower)
