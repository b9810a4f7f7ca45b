"""Tokenized splits held as tensors, optionally with the frozen lower blocks' outputs cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from rlhflab.models.blocks import cache_is_exact, first_trainable_block, lower_hidden, top_forward


@dataclass
class EncodedSplit:
    """Right-padded ids and mask (N, T); `hidden` (N, T, H) once the frozen blocks are cached."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device) -> "EncodedSplit":
        hidden = None if self.hidden is None else self.hidden.to(device)
        return EncodedSplit(self.input_ids.to(device), self.attention_mask.to(device), hidden)


def encode(texts: list[str], tokenizer, max_length: int, *, append_eos: bool = False) -> EncodedSplit:
    """Tokenize and right-pad. With append_eos, EOS ends every text that fits in max_length
    (so a language model learns where a review stops)."""
    rows = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if append_eos and eos is not None:
        rows = [ids + [eos] if len(ids) < max_length and (not ids or ids[-1] != eos) else ids for ids in rows]
    width = max((len(ids) for ids in rows), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return EncodedSplit(input_ids, attention_mask)


def cache_start(model, enabled: bool, probe: EncodedSplit) -> int | None:
    """The first trainable block when everything below it can be computed once, else None."""
    if not enabled:
        return None
    first = first_trainable_block(model)
    if not first:
        return None
    rows = slice(0, min(2, len(probe)))
    if not cache_is_exact(model, first, probe.input_ids[rows], probe.attention_mask[rows]):
        print(f"Note: frozen-block caching does not reproduce {type(model).__name__}'s forward; using the full forward.")
        return None
    return first


@torch.no_grad()
def cache_lower_blocks(model, first: int, split: EncodedSplit, batch_size: int, *, desc: str, progress: bool) -> None:
    """Fill `split.hidden` with the input of block `first` for every row (stored in fp32)."""
    model.eval()
    parts = []
    for idx in tqdm(torch.arange(len(split)).split(batch_size), desc=desc, disable=not progress, leave=False):
        parts.append(lower_hidden(model, first, split.input_ids[idx], split.attention_mask[idx]).float())
    split.hidden = torch.cat(parts)


def make_forward(model, first: int | None, autocast) -> Callable[[EncodedSplit, torch.Tensor], torch.Tensor]:
    """forward(split, rows) -> logits, from the cache when the split has one."""

    def forward(split: EncodedSplit, idx: torch.Tensor) -> torch.Tensor:
        with autocast():
            if split.hidden is not None:
                return top_forward(model, first, split.hidden[idx], split.input_ids[idx], split.attention_mask[idx]).logits
            return model(input_ids=split.input_ids[idx], attention_mask=split.attention_mask[idx]).logits

    return forward


def encode_and_cache(model, texts: dict[str, list[str]], tokenizer, *, max_length: int, append_eos: bool,
                     device, cache_frozen: bool, batch_size: int, autocast, progress: bool):
    """Encode every named text list onto `device`; cache the frozen lower blocks when possible.

    Returns (splits by name, first trainable block or None, seconds spent caching).
    """
    import time

    data = {name: encode(items, tokenizer, max_length, append_eos=append_eos).to(device) for name, items in texts.items() if items}
    first = cache_start(model, cache_frozen, next(iter(data.values())))
    started = time.perf_counter()
    if first is not None:
        with autocast():
            for name, split in data.items():
                cache_lower_blocks(model, first, split, batch_size, desc=f"cache {name}", progress=progress)
    return data, first, time.perf_counter() - started
