"""Which weights train, and reuse of the frozen lower blocks' outputs.

When only the top blocks (and heads) train, everything below them is a fixed function of the
input. `lower_hidden` runs the model's own forward up to the first trainable block and stops
there; `top_forward` runs the model again with that block list cut to the top and the
embedding output replaced by the stored hidden states. Together they give the same outputs as
the plain forward pass, for decoders (Llama, GPT-2) and encoders (BERT, DistilBERT) alike;
`cache_is_exact` checks that at run time, so an architecture that does something else between
embeddings and blocks falls back to the full forward instead of training on wrong inputs.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Sequence

import torch
from torch import nn

from rlhflab.errors import RlhfLabError

# Where the block list lives, relative to the base model (Llama, GPT-2, BERT, DistilBERT, ...).
_BLOCK_PATHS = ("layers", "h", "blocks", "encoder.layer", "transformer.layer")


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _find_blocks(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """(parent module, attribute name, block list)."""
    base = _base(model)
    for path in _BLOCK_PATHS:
        parent = base
        *parents, attr = path.split(".")
        for name in parents:
            parent = getattr(parent, name, None)
        blocks = getattr(parent, attr, None) if parent is not None else None
        if isinstance(blocks, nn.ModuleList):
            return parent, attr, blocks
    raise RlhfLabError(
        f"Cannot find the transformer blocks of {type(model).__name__}; train all weights (or LoRA) instead."
    )


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of blocks (`model.layers`, `transformer.h`, `encoder.layer`, ...)."""
    return _find_blocks(model)[2]


def _embedding_modules(model: nn.Module) -> tuple[nn.Module, nn.Module | None] | None:
    """(module whose output enters block 0, learned position embedding added after it, if any)."""
    base = _base(model)
    if isinstance(getattr(base, "embeddings", None), nn.Module):  # BERT family: one module
        return base.embeddings, None
    if isinstance(getattr(base, "embed_tokens", None), nn.Module):  # Llama family
        return base.embed_tokens, None
    if isinstance(getattr(base, "wte", None), nn.Module):  # GPT-2: token + learned positions
        return base.wte, getattr(base, "wpe", None)
    return None


def resolve_block_indices(indices: Sequence[int], n_blocks: int, key: str = "sft.trainable") -> list[int]:
    """Turn user indices (negative counts from the top) into sorted, unique block numbers."""
    if not indices:
        raise RlhfLabError(f"{key} is an empty list; give block indices like [-2, -1].")
    out = set()
    for index in indices:
        if not -n_blocks <= index < n_blocks:
            raise RlhfLabError(
                f"{key}: block index {index} is out of range: the model has {n_blocks} block{'s' * (n_blocks != 1)} "
                f"(0..{n_blocks - 1}, or -1..-{n_blocks} from the top)."
            )
        out.add(index % n_blocks)
    return sorted(out)


def freeze_all_but_blocks(model: nn.Module, block_indices: Sequence[int]) -> None:
    blocks = transformer_blocks(model)
    model.requires_grad_(False)
    for index in block_indices:
        blocks[index].requires_grad_(True)


def first_trainable_block(model: nn.Module) -> int | None:
    """Index of the lowest trainable block when nothing below it trains; else None.

    When no block trains (a head-only reward model) it is the number of blocks: the whole body
    is then computed once and only the head runs each epoch.
    """
    embeddings = _embedding_modules(model)
    if embeddings is None:
        return None
    below = [m for m in embeddings if m is not None]
    if any(p.requires_grad for module in below for p in module.parameters()):
        return None
    blocks = transformer_blocks(model)
    for index, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return index
    return len(blocks)


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0.

    Attention implementations read `self.dropout.p` at call time, so this also turns attention
    dropout off. PPO needs it (log-probs must not depend on a dropout mask); supervised stages
    use it for speed: on a CPU, BERT trains 3x faster without dropout.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class _StopForward(Exception):
    pass


def _call_base(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids=None):
    base = _base(model)
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(base.forward).parameters else {}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


@torch.no_grad()
def lower_hidden(model: nn.Module, first: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Hidden states entering block `first` (batch, seq, hidden), computed by the model's own code.

    position_ids matter with left padding (rollouts): pass the same ones to `top_forward`.
    """
    captured: list[torch.Tensor] = []

    def stop(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    if first == 0:
        hook_target = _embedding_modules(model)[0]
    else:
        hook_target = transformer_blocks(model)[first - 1]
    handle = hook_target.register_forward_hook(stop)
    try:
        _call_base(model, input_ids, attention_mask, position_ids)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


@contextlib.contextmanager
def recording_lower(model: nn.Module, first: int) -> Iterator[list[torch.Tensor]]:
    """Collects the hidden states entering block `first` on every forward call inside the block.

    During generation with the KV cache that is the prompt, then one position per new token:
    concatenated, the same states `lower_hidden` would compute for the sampled sequence (up to
    kernel rounding), without running the frozen blocks over it a second time.
    """
    chunks: list[torch.Tensor] = []
    target = _embedding_modules(model)[0] if first == 0 else transformer_blocks(model)[first - 1]

    def keep(_module, _inputs, output):
        chunks.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = target.register_forward_hook(keep)
    try:
        yield chunks
    finally:
        handle.remove()


@contextlib.contextmanager
def from_hidden(model: nn.Module, first: int, hidden: torch.Tensor, top_blocks: Sequence[nn.Module] | None = None) -> Iterator[None]:
    """Within the block: blocks below `first` are gone and the embedding output is `hidden`.

    `top_blocks` replaces blocks `first..` (PPO's reference model shares the frozen lower
    blocks with the policy and keeps only its own copy of the trainable top).
    """
    parent, attr, blocks = _find_blocks(model)
    embed, positions = _embedding_modules(model)
    setattr(parent, attr, nn.ModuleList(list(top_blocks) if top_blocks is not None else list(blocks)[first:]))
    handles = [embed.register_forward_hook(lambda _m, _i, _out: hidden)]
    if positions is not None:  # GPT-2 adds learned positions after the token embedding
        handles.append(positions.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        setattr(parent, attr, blocks)


def last_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, *, first: int | None = None,
                hidden: torch.Tensor | None = None, top_blocks: Sequence[nn.Module] | None = None) -> torch.Tensor:
    """The base model's last hidden states (B, T, H): a causal LM's trunk without its head.

    With `hidden` (the states entering block `first`, from `lower_hidden`), the blocks below
    `first` are skipped and `top_blocks`, if given, replace the rest (`from_hidden`).
    position_ids matter with left padding (rollouts; `lower_hidden` must have had the same).
    """
    with from_hidden(model, first, hidden, top_blocks) if hidden is not None else contextlib.nullcontext():
        return _call_base(model, input_ids, attention_mask, position_ids).last_hidden_state


def top_forward(model: nn.Module, first: int, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None):
    """The model's output (logits of an LM or a classifier) from the hidden states entering `first`.

    input_ids are still passed: models derive masks and pooling positions from them.
    """
    extra = {} if position_ids is None else {"position_ids": position_ids}
    with from_hidden(model, first, hidden):
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra)


@torch.no_grad()
def cache_is_exact(model: nn.Module, first: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
    """Whether lower_hidden + the top blocks reproduce the plain forward's last hidden states
    (batch, seq, hidden) at the real positions of this batch.

    The trunk's output, not the head's: a head (LM or classifier) is the same function of it on
    both paths, and it may not hold its weights yet here (under FSDP a fresh reward head is on the
    meta device on all but the main process until `prepare` broadcasts it)."""
    if _embedding_modules(model) is None:
        return False
    was_training = model.training
    model.eval()
    try:
        full = _call_base(model, input_ids, attention_mask).last_hidden_state
        hidden = lower_hidden(model, first, input_ids, attention_mask)
        split = last_hidden(model, input_ids, attention_mask, first=first, hidden=hidden)
    finally:
        model.train(was_training)
    mask = attention_mask.bool()
    return torch.allclose(full[mask], split[mask], atol=1e-4, rtol=1e-4)
