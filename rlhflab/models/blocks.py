"""Which weights train, and reuse of the frozen lower blocks' outputs.

When only the top blocks train, everything below them is a fixed function of the input.
`lower_hidden` runs the model's own forward up to the first trainable block (and stops
there); `top_forward` runs the rest from a stored hidden state. Together they give the same
logits as the plain forward pass (checked at run time by `cache_is_exact`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from rlhflab.errors import RlhfLabError

_BLOCK_ATTRS = ("layers", "h", "blocks")


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of transformer blocks (`model.layers` for Llama, `transformer.h` for GPT-2)."""
    base = _base(model)
    for attr in _BLOCK_ATTRS:
        blocks = getattr(base, attr, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise RlhfLabError(
        f"Cannot find the decoder blocks of {type(model).__name__}; train with trainable=all or lora instead."
    )


def resolve_block_indices(indices: Sequence[int], n_blocks: int) -> list[int]:
    """Turn user indices (negative counts from the top) into sorted, unique block numbers."""
    if not indices:
        raise RlhfLabError("sft.trainable is an empty list; give block indices like [-2, -1], or all, or lora.")
    out = set()
    for index in indices:
        if not -n_blocks <= index < n_blocks:
            raise RlhfLabError(
                f"Block index {index} is out of range: the model has {n_blocks} blocks "
                f"(0..{n_blocks - 1}, or -1..-{n_blocks} from the top)."
            )
        out.add(index % n_blocks)
    return sorted(out)


def freeze_all_but_blocks(model: nn.Module, block_indices: Sequence[int]) -> None:
    blocks = decoder_blocks(model)
    model.requires_grad_(False)
    for index in block_indices:
        blocks[index].requires_grad_(True)


def first_trainable_block(model: nn.Module) -> int | None:
    """Index of the lowest block with trainable weights, if nothing below it trains; else None."""
    blocks = decoder_blocks(model)
    below_blocks = {id(p) for block in blocks for p in block.parameters()}
    if any(p.requires_grad and id(p) not in below_blocks for p in _base(model).parameters()):
        return None  # embeddings or other shared weights train: nothing below is fixed
    for index, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return index
    return None


class _StopForward(Exception):
    pass


@torch.no_grad()
def lower_hidden(model: nn.Module, first: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states entering block `first` (batch, seq, hidden), computed by the model's own code."""
    captured: list[torch.Tensor] = []

    def stop(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handle = decoder_blocks(model)[first - 1].register_forward_hook(stop)
    try:
        _base(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


@contextlib.contextmanager
def _only_top_blocks(model: nn.Module, first: int) -> Iterator[None]:
    base = _base(model)
    attr = next(a for a in _BLOCK_ATTRS if isinstance(getattr(base, a, None), nn.ModuleList))
    blocks = getattr(base, attr)
    setattr(base, attr, nn.ModuleList(list(blocks)[first:]))
    handles = []
    wpe = getattr(base, "wpe", None)  # GPT-2 adds learned positions to inputs_embeds
    if isinstance(wpe, nn.Module):
        handles.append(wpe.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        setattr(base, attr, blocks)


def top_forward(model: nn.Module, first: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits from blocks `first..` onward, given the hidden states entering block `first`."""
    with _only_top_blocks(model, first):
        return model(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).logits


@torch.no_grad()
def cache_is_exact(model: nn.Module, first: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
    """Whether lower_hidden + top_forward reproduce the plain forward on this batch.

    Architectures that transform inputs_embeds or positions in other ways (scaled embeddings,
    offset positions) fail this check, and training then falls back to the full forward.
    """
    was_training = model.training
    model.eval()
    try:
        full = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        split = top_forward(model, first, lower_hidden(model, first, input_ids, attention_mask), attention_mask)
    finally:
        model.train(was_training)
    mask = attention_mask.bool()
    return torch.allclose(full[mask], split[mask], atol=1e-4, rtol=1e-4)
