"""Softmax attention as two matmuls for short sequences on a CPU; transformers' sdpa otherwise.

Registered with transformers' attention interface as MATMUL_ATTENTION and switched on per
model by `use_matmul_attention`; every call decides between the matmuls and sdpa by its shapes
and device, so one model runs both.
"""

from __future__ import annotations

import torch

# The name under which transformers' AttentionInterface finds `matmul_attention`.
MATMUL_ATTENTION = "rlhflab_matmul"
# Longer keys go to sdpa: its memory grows with T, the (T, T) scores' with T^2 - at 32 x 256 they
# held 0.7 GB more (reward stage peak 3.3 GB) for a step about 12 % faster; at 192 keys matmul is
# 2x faster than sdpa (0.74 against 1.44 s a step).
MATMUL_MAX_KEYS = 224


def _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def matmul_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Softmax attention as two matmuls; sdpa off the CPU and beyond MATMUL_MAX_KEYS keys. A causal
    model's one-token decode steps take `_decode_step`.

    query (batch, heads, T, head_dim); key, value (batch, kv_heads, S, head_dim) with kv_heads
    dividing heads (grouped-query attention: each key/value head serves heads / kv_heads query
    heads, as transformers' `repeat_kv`); attention_mask None or bool (batch, 1, T, S), True where a
    query may attend (transformers' sdpa mask). None means nothing is padded: then a causal module
    (`module.is_causal`) attends to keys up to its own position, counted from the right when S > T.
    Returns ((batch, T, heads, head_dim), None), as transformers' attention functions do.

    Why: torch's CPU flash-attention backward runs at a few percent of the bf16 matmul rate on
    short sequences (MiniLM's 32-wide heads: 0.6 of 1.45 s of a 32 x 256 reward training step;
    SmolLM2's PPO update: 0.19 of 1.5 s for 16 x 38 tokens, 2-core Xeon), and transformers' own
    eager attention adds an fp32 mask, which makes the (batch, heads, T, S) scores and their
    gradients fp32.
    The softmax runs in fp32 for causal LMs (their log-probs are what RL trains on; sdpa's CPU
    kernel accumulates in fp32 too) and in the scores' dtype for encoders (bf16 under autocast).
    """
    causal = getattr(module, "is_causal", False)
    steps, keys = query.shape[2], key.shape[2]
    if query.device.type != "cpu" or keys > MATMUL_MAX_KEYS:
        return _sdpa(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    groups = query.shape[1] // key.shape[1]
    if causal and steps == 1:
        return _decode_step(query, key, value, attention_mask, scaling, groups)
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if attention_mask is None and causal and steps > 1:
        attention_mask = torch.ones(steps, keys, dtype=torch.bool, device=query.device).tril(keys - steps)
    # Scale the (T, head_dim) queries, not the (T, S) scores; mask by adding a constant bias, whose
    # backward is free (masked_fill's is another pass over the scores' gradient).
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(2, 3))
    if causal:
        scores = scores.float()
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            bias = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
            bias.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:  # already additive (0 or a large negative number)
            bias = attention_mask.to(scores.dtype).clamp_min(torch.finfo(scores.dtype).min)
        scores = scores + bias
    probs = torch.nn.functional.softmax(scores, dim=-1).to(value.dtype)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _decode_step(query, key, value, attention_mask, scaling, groups: int):
    """One decode step (T = 1) of a causal LM: each key/value head's `groups` query heads become
    the rows of one (groups, S) score matrix, so grouped-query attention needs no repeated keys.

    Why: torch's CPU flash-attention kernel spends 0.7-2 ms on a decode step's few FLOPs at
    64 x 9 heads x 20-40 keys (its blocking is sized for long sequences); these two batched
    matmuls take 0.3 ms (2-core AMD Zen 4, bf16): a tenth of a PPO rollout's sampling time.
    attention_mask None (nothing padded: every cached key is earlier), or bool or additive
    (batch, 1, 1, S). Scores and softmax in fp32, as in the prompt's pass.
    """
    batch, heads, _, dim = query.shape
    scale = dim ** -0.5 if scaling is None else scaling
    grouped = (query * scale).view(batch, key.shape[1], groups, dim)  # (B, kv_heads, groups, head_dim)
    scores = torch.matmul(grouped, key.transpose(2, 3)).float()  # (B, kv_heads, groups, S)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:  # already additive (0 or a large negative number)
        scores = scores + attention_mask.to(scores.dtype).clamp_min(torch.finfo(scores.dtype).min)
    probs = torch.nn.functional.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(probs, value).view(batch, heads, 1, dim).transpose(1, 2), None


def use_matmul_attention(model) -> bool:
    """Switch a model whose attention goes through transformers' attention interface with sdpa
    (BERT, MiniLM, Llama, SmolLM2, GPT-2, ...) to `matmul_attention`; returns whether it did.
    Models with their own attention code, or another implementation chosen, keep theirs."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(MATMUL_ATTENTION, matmul_attention)
    AttentionMaskInterface.register(MATMUL_ATTENTION, sdpa_mask)  # a bool mask, skipped when nothing is padded
    try:
        model.set_attn_implementation(MATMUL_ATTENTION)
    except (ValueError, AttributeError):  # a model class that does not dispatch through the interface
        return False
    return True
