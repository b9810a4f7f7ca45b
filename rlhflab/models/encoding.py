"""Tokenized splits held as tensors, optionally with the frozen lower blocks' outputs cached.

`prompt_response_ids` is the one place a prompt and a response are joined and cut to a token
budget: the prompt gives way from its front, so the response (the part a reward model judges)
is always read whole.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from rlhflab.data.records import join_prompt_response
from rlhflab.errors import RlhfLabError
from rlhflab.models.blocks import cache_is_exact, first_trainable_block, last_hidden, lower_hidden, top_forward
from rlhflab.models.lm_head import next_token_nll
from rlhflab.ops.lm_loss import token_nll_sum


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


def encode(texts: list[str], tokenizer, max_length: int, *, append_eos: bool = False,
           keep: Literal["head", "head+tail"] = "head") -> EncodedSplit:
    """Tokenize and right-pad; a text longer than max_length keeps its beginning, or with
    keep="head+tail" its first and last tokens (`head_and_tail_ids`). With append_eos, EOS ends
    every text that fits in max_length (so a language model learns where a review stops)."""
    if keep == "head+tail":
        rows = head_and_tail_ids(texts, tokenizer, max_length)
    else:
        with truncation_side(tokenizer, "right"):
            rows = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    if append_eos and eos is not None:
        rows = [ids + [eos] if len(ids) < max_length and (not ids or ids[-1] != eos) else ids for ids in rows]
    return pad_rows(rows, tokenizer)


def head_and_tail_ids(texts: Sequence[str], tokenizer, max_length: int) -> list[list[int]]:
    """Token ids (special tokens included, at most max_length each) of each text; one too long
    keeps its first quarter of the budget from its beginning and the rest from its end.

    A review's verdict often sits in its last sentences: Sun et al. (2019, "How to Fine-Tune
    BERT for Text Classification?") found head + tail the best cut of long IMDB reviews.
    Raises RlhfLabError when a text must be cut and max_length leaves under 2 tokens beside the
    special tokens."""
    enc = tokenizer(list(texts), add_special_tokens=True, return_special_tokens_mask=True)
    rows = []
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        # the tokenizer's own special tokens ([CLS] ... [SEP], a BOS) stay at either end
        front = next((i for i, s in enumerate(special) if not s), len(ids))
        back = next((i for i, s in enumerate(reversed(special)) if not s), 0) if front < len(ids) else 0
        if len(ids) > max_length:
            budget = max_length - front - back
            if budget < 2:
                raise RlhfLabError(f"max_length={max_length} leaves {max(budget, 0)} tokens beside the special tokens; "
                                   f"head+tail truncation needs at least 2.")
            head = budget // 4
            ids = ids[:front + head] + ids[len(ids) - back - (budget - head):]
        rows.append(list(ids))
    return rows


def pad_rows(rows: list[list[int]], tokenizer) -> EncodedSplit:
    """Right-pad token id lists into (N, T) ids and mask."""
    width = max((len(ids) for ids in rows), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return EncodedSplit(input_ids, attention_mask)


@contextmanager
def truncation_side(tokenizer, side: str):
    """Truncate from `side` for the calls inside; the tokenizer's own setting is restored after."""
    before = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = side
    try:
        yield
    finally:
        tokenizer.truncation_side = before


@dataclass
class FittedTexts:
    """Token ids of joined prompt + response texts cut to a budget, and how the budget was spent.

    rows: ids per text (special tokens included); prompt_tokens: how many of a row's ids are
    prompt text; prompts_cut: texts whose prompt lost its front; responses_cut: texts whose
    response did not fit alone (read without its prompt, keeping its beginning)."""

    rows: list[list[int]]
    prompt_tokens: list[int]
    prompts_cut: int
    responses_cut: int


def prompt_response_ids(prompts: Sequence[str], responses: Sequence[str], tokenizer, max_length: int,
                        **options) -> tuple[list[list[int]], int]:
    """`fit_prompt_response`'s token ids, and how many prompts were shortened."""
    fitted = fit_prompt_response(prompts, responses, tokenizer, max_length, **options)
    return fitted.rows, fitted.prompts_cut


def fit_prompt_response(
    prompts: Sequence[str],
    responses: Sequence[str],
    tokenizer,
    max_length: int,
    *,
    long_response: Literal["error", "truncate"] = "error",
    setting: str = "max_length",
    where: Sequence[str] | None = None,
) -> FittedTexts:
    """Token ids (special tokens included, at most `max_length` each) of every
    `join_prompt_response(prompt, response)`, with the number of prompt tokens each row kept (FittedTexts).

    Too long a text loses the front of its prompt, never the response: a reward model judges
    the response, and two responses cut to the same prompt prefix would score the same. Special
    tokens (BERT's [CLS] ... [SEP], a BOS) survive, as tokenizers add them after truncating.
    A response that does not fit alone raises RlhfLabError naming `where[i]` (what the text is)
    and the `setting` to raise; with long_response="truncate" it is read alone and keeps its
    beginning instead, like any plain text (scoring, where an error mid-run helps no one).
    """
    prompts, responses = list(prompts), list(responses)
    texts = [join_prompt_response(p, r) for p, r in zip(prompts, responses)]
    # Character offsets in each joined text: where its first visible character and its
    # response's first visible character sit.
    heads = [len(t) - len(t.lstrip()) for t in texts]
    starts = [len(t) - len(r.lstrip()) for t, r in zip(texts, responses)]
    with truncation_side(tokenizer, "left"):
        rows, kept_from, prompt_tokens = _left_truncated(tokenizer, texts, max_length, starts)
    cut_prompts = cut_responses = 0
    for i, first in enumerate(kept_from):
        if first <= heads[i]:
            continue  # the whole text fits
        if first <= starts[i]:
            cut_prompts += 1
            continue
        # The response alone does not fit.
        if long_response == "error":
            need = max(len(tokenizer(texts[i][starts[i]:])["input_ids"]), max_length + 1)
            what = where[i] if where is not None else f"the response in row {i + 1}"
            raise RlhfLabError(
                f"{what[:1].upper()}{what[1:]} is {need} tokens long, more than {setting}={max_length} holds even "
                f"without its prompt. Raise {setting} to at least {need}, or shorten or remove that row."
            )
        with truncation_side(tokenizer, "right"):
            rows[i] = tokenizer(responses[i], truncation=True, max_length=max_length)["input_ids"]
        prompt_tokens[i] = 0
        cut_responses += 1
    return FittedTexts(rows, prompt_tokens, cut_prompts, cut_responses)


def _left_truncated(tokenizer, texts: list[str], max_length: int,
                    starts: list[int]) -> tuple[list[list[int]], list[int], list[int]]:
    """Ids of each text cut from the left to max_length, the character offset of the first text
    character kept (len(text) when none is), and how many kept tokens are prompt text (before
    `starts`, the response's first character)."""
    if not getattr(tokenizer, "is_fast", False):  # a pure Python tokenizer has no offsets: judge by token counts
        rows = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        kept, prompt_tokens = [], []
        for text, start, row in zip(texts, starts, rows):
            response = len(tokenizer(text[start:])["input_ids"])  # special tokens counted on both sides
            if len(tokenizer(text)["input_ids"]) <= max_length:
                kept.append(0)
            else:
                kept.append(start if response <= max_length else start + 1)
            prompt_tokens.append(max(len(row) - response, 0))
        return rows, kept, prompt_tokens
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    kept, prompt_tokens = [], []
    for text, start, offsets, special in zip(texts, starts, enc["offset_mapping"], enc["special_tokens_mask"]):
        kept.append(min((a for (a, b), s in zip(offsets, special) if not s and b > a), default=len(text)))
        prompt_tokens.append(sum(1 for (a, b), s in zip(offsets, special) if not s and b > a and a < start))
    return list(enc["input_ids"]), kept, prompt_tokens


def encode_prompt_response(prompts: Sequence[str], responses: Sequence[str], tokenizer, max_length: int,
                           **options) -> tuple[EncodedSplit, int]:
    """`prompt_response_ids` right-padded into an EncodedSplit (N, T), and the prompts shortened."""
    rows, cut = prompt_response_ids(prompts, responses, tokenizer, max_length, **options)
    return pad_rows(rows, tokenizer), cut


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


class LMWrapper(torch.nn.Module):
    """A Module that holds an LM as `.model` and is what `accelerator.prepare` is given
    (SplitForward, PolicyWithValue, IlqlModule)."""

    def tie_weights(self, **kwargs) -> None:
        """The wrapped LM's own weight tying. Accelerate's FSDP 2 preparation moves the module it
        is given to the meta device and then calls its `tie_weights()`: without this, a tied input
        embedding and LM head (SmolLM2, pretrain's models) came back as two parameters, trained apart
        and saved as a model whose config still says tied."""
        self.model.tie_weights(**kwargs)


class SplitForward(LMWrapper):
    """Logits (or head outputs) for rows of an EncodedSplit, from the cached frozen-block output
    when the rows come with one; with `nll`, a causal LM's (next-token NLL sum, token count)
    instead (`next_token_nll`: no (B, T, V) logits). A Module, so that `accelerator.prepare`
    (DDP) wraps this forward and synchronises the gradients of the trainable blocks it runs."""

    def __init__(self, model, first: int | None, *, nll: bool = False):
        super().__init__()
        self.model, self.first, self.nll = model, first, nll

    def forward(self, input_ids, attention_mask, hidden=None):
        if self.nll and isinstance(self.model, PreTrainedModel) and self.model.base_model is not self.model:
            states = last_hidden(self.model, input_ids, attention_mask, first=self.first, hidden=hidden)
            return next_token_nll(self.model, states, input_ids, attention_mask)
        if hidden is not None:
            logits = top_forward(self.model, self.first, hidden, input_ids, attention_mask).logits
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return token_nll_sum(logits, input_ids, attention_mask) if self.nll else logits


def make_forward(prepared: torch.nn.Module, autocast, *, trim: bool = False,
                 multiple: int = 1) -> Callable[[EncodedSplit, torch.Tensor], torch.Tensor]:
    """forward(split, rows) -> logits (or, with `nll`, the NLL sum and token count) through `prepared`
    (a SplitForward, possibly DDP-wrapped).

    trim: cut the rows' columns to the longest of them first, rounded up to a `multiple`
    (`take_rows`), so a batch of short texts does not pay for the split's longest one. The
    logits are then (rows, T_rows, ...), not (rows, T, ...): fine for a pooled classifier head,
    not for callers that index positions of T.
    """

    def forward(split: EncodedSplit, idx: torch.Tensor) -> torch.Tensor:
        if trim:
            part = take_rows(split, idx, multiple)
            input_ids, attention_mask, hidden = part.input_ids, part.attention_mask, part.hidden
        else:
            input_ids, attention_mask = split.input_ids[idx], split.attention_mask[idx]
            hidden = split.hidden[idx] if split.hidden is not None else None
        with autocast():
            return prepared(input_ids, attention_mask, hidden)

    return forward


def row_lengths(split: EncodedSplit) -> torch.Tensor:
    """Real tokens per row (N,), padding excluded."""
    return split.attention_mask.sum(dim=1)


def take_rows(split: EncodedSplit, idx: torch.Tensor, multiple: int = 1) -> EncodedSplit:
    """Rows `idx` of a right-padded split, their columns cut to the longest of them, rounded up
    to a multiple of `multiple` (at most the split's width).

    Exact for right padding: the columns dropped are padding in every row taken, which attention
    masks out (encoders) or which comes after every real token (decoders). Rounding keeps the
    number of distinct batch shapes small: glibc, told to keep freed memory (rlhflab/malloc.py),
    reuses blocks of the sizes it has seen, while a new width every step fragments its heap."""
    mask = split.attention_mask[idx]
    longest = max(int(mask.sum(dim=1).max()), 1) if len(idx) else 1
    width = min(-(-longest // multiple) * multiple, mask.shape[1])
    hidden = None if split.hidden is None else split.hidden[idx, :width]
    return EncodedSplit(split.input_ids[idx, :width], mask[:, :width], hidden)


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator, *,
                           megabatch: int = 50) -> list[torch.Tensor]:
    """Random batches of rows of similar length, so that trimming each batch (`take_rows`) saves
    padding (transformers' `group_by_length`, with the batch order shuffled as well).

    A random permutation of the rows is cut into megabatches of `megabatch` batches; each is
    sorted by length (longest first, ties in permutation order) and cut into batches of
    `batch_size`, and the batches are shuffled. Every row appears in exactly one batch; every
    batch holds `batch_size` rows except at most one, and there are ceil(N / batch_size) of them,
    as with plain shuffling. The same generator state gives the same batches.

    lengths: (N,) tokens per row. Raises RlhfLabError for a batch_size or megabatch below 1.
    """
    if batch_size < 1 or megabatch < 1:
        raise RlhfLabError(f"length_grouped_batches needs batch_size and megabatch of at least 1, got {batch_size} and {megabatch}.")
    lengths = torch.as_tensor(lengths).cpu()
    batches: list[torch.Tensor] = []
    for group in torch.randperm(len(lengths), generator=generator).split(batch_size * megabatch):
        # stable sort: equal lengths keep the random order, so the result depends on the generator only
        order = torch.sort(lengths[group], descending=True, stable=True).indices
        batches.extend(group[order].split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def encode_and_cache(model, texts: dict[str, list[str] | EncodedSplit], tokenizer, *, max_length: int, append_eos: bool,
                     device, cache_frozen: bool, batch_size: int, autocast, progress: bool,
                     keep: Literal["head", "head+tail"] = "head"):
    """Encode every named text list (or take the EncodedSplit given) onto `device`, cutting long
    texts as `encode(keep=...)` does; cache the frozen lower blocks when possible.

    Returns (splits by name, first trainable block or None, seconds spent caching).
    """
    import time

    data = {name: (items if isinstance(items, EncodedSplit) else encode(items, tokenizer, max_length, append_eos=append_eos, keep=keep)).to(device)
            for name, items in texts.items() if len(items)}
    first = cache_start(model, cache_frozen, next(iter(data.values())))
    started = time.perf_counter()
    if first is not None:
        with autocast():
            for name, split in data.items():
                cache_lower_blocks(model, first, split, batch_size, desc=f"cache {name}", progress=progress)
    return data, first, time.perf_counter() - started
