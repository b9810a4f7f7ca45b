"""Supervised fine-tuning: `rlhflab sft`.

Trains a causal LM on the train split's review text and reports loss and perplexity on
train, validation and test (seed 000, Table 1), with early stopping on validation loss.
When only the top blocks train, the frozen lower blocks run once per review and their
outputs are reused every epoch (`sft.cache_frozen`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from rlhflab.checkpoint import load_trainable_state
from rlhflab.config import Config, SftConfig
from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, atomic_dir, write_json
from rlhflab.models.blocks import (
    cache_is_exact,
    transformer_blocks,
    first_trainable_block,
    freeze_all_but_blocks,
    lower_hidden,
    resolve_block_indices,
    top_forward,
)
from rlhflab.models.causal_lm import count_parameters, load_causal_lm
from rlhflab.ops.lm_loss import perplexity, token_nll_sum
from rlhflab.runtime import make_accelerator, peak_memory_mb, seed_everything
from rlhflab.stages.common import load_splits, make_optimizer, open_run_dir
from rlhflab.training import LoopSettings, fit

SPLITS = ("train", "validation", "test")


@dataclass
class EncodedSplit:
    """One split, right-padded: ids and mask (N, T); `hidden` (N, T, H) when frozen blocks are cached."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    hidden: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode(texts: list[str], tokenizer, max_length: int) -> EncodedSplit:
    """Tokenize reviews; EOS ends a review that fits, so the model learns where reviews stop."""
    rows = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    rows = [ids + [eos] if eos is not None and len(ids) < max_length and (not ids or ids[-1] != eos) else ids for ids in rows]
    width = max((len(ids) for ids in rows), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    return EncodedSplit(input_ids, attention_mask)


def configure_trainable(model, sft: SftConfig):
    """Freeze what does not train; returns the model to train (a peft wrapper for LoRA)."""
    if sft.trainable == "all":
        model.requires_grad_(True)
        return model
    if sft.trainable == "lora":
        from peft import LoraConfig, get_peft_model

        lora = sft.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules or "all-linear",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)
    freeze_all_but_blocks(model, resolve_block_indices(sft.trainable, len(transformer_blocks(model))))
    return model


def validate(sft: SftConfig) -> None:
    checks = [
        (sft.max_length >= 2, "sft.max_length must be at least 2"),
        (sft.epochs >= 1, "sft.epochs must be at least 1"),
        (sft.max_steps is None or sft.max_steps >= 1, "sft.max_steps must be at least 1 (or null)"),
        (sft.batch_size >= 1 and sft.eval_batch_size >= 1, "batch sizes must be at least 1"),
        (sft.learning_rate > 0, "sft.learning_rate must be positive"),
        (0 <= sft.warmup_ratio < 1, "sft.warmup_ratio must be in [0, 1)"),
        (sft.eval_every is None or sft.eval_every >= 1, "sft.eval_every must be at least 1 (or null)"),
        (sft.early_stopping_patience >= 1, "sft.early_stopping_patience must be at least 1"),
        (sft.log_every >= 1 and sft.checkpoint_every >= 1, "sft.log_every and sft.checkpoint_every must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(message + ".")


def run(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Fine-tune `cfg.sft.model` on `cfg.data`; write runs/<name>/sft."""
    sft = cfg.sft
    validate(sft)
    started = time.perf_counter()
    seed_everything(cfg.seed)
    splits = load_splits(cfg)  # data errors surface before any model loads
    if len(splits.train) == 0:
        raise RlhfLabError("The train split is empty; give data.fractions a larger train part.")
    run_dir = open_run_dir(cfg, "sft", resume=resume, overwrite=overwrite)
    accelerator = make_accelerator(sft.device, sft.mixed_precision)
    device = accelerator.device

    model, tokenizer = load_causal_lm(sft.model)
    model.config.use_cache = False
    model = configure_trainable(model, sft).to(device)
    trainable, total = count_parameters(model)
    texts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    data = {name: encode([r.text for r in reviews], tokenizer, sft.max_length) for name, reviews in texts.items() if reviews}
    data = {name: EncodedSplit(d.input_ids.to(device), d.attention_mask.to(device)) for name, d in data.items()}

    first = _cache_start(model, sft, data["train"])
    cache_seconds = 0.0
    if first is not None:
        t0 = time.perf_counter()
        for name, split in data.items():
            with accelerator.autocast():
                split.hidden = _run_lower_blocks(model, first, split, sft.eval_batch_size, f"cache {name}", progress)
        cache_seconds = time.perf_counter() - t0

    def forward(split: EncodedSplit, idx: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():
            if split.hidden is not None:
                return top_forward(model, first, split.hidden[idx], split.input_ids[idx], split.attention_mask[idx]).logits
            return model(input_ids=split.input_ids[idx], attention_mask=split.attention_mask[idx]).logits

    def evaluate(name: str) -> dict[str, float]:
        return evaluate_split(forward, data[name], sft.eval_batch_size, model)

    before = {"validation": evaluate("validation")} if "validation" in data else {}
    optimizer, scheduler = make_optimizer(model, sft.learning_rate, sft.weight_decay, sft.warmup_ratio,
                                          sft.epochs, len(data["train"]), sft.batch_size, sft.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    train = data["train"]

    def train_step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        nll, n_tokens = token_nll_sum(forward(train, idx), train.input_ids[idx], train.attention_mask[idx])
        return nll / max(n_tokens, 1), n_tokens

    settings = LoopSettings(
        epochs=sft.epochs, max_steps=sft.max_steps, batch_size=sft.batch_size, eval_every=sft.eval_every,
        patience=sft.early_stopping_patience, log_every=sft.log_every, checkpoint_every=sft.checkpoint_every,
        grad_clip=sft.grad_clip, seed=cfg.seed, select_metric="loss", higher_is_better=False,
    )
    result = fit(
        model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator, run_dir=run_dir,
        n_train=len(train), settings=settings, train_step=train_step,
        validate=(lambda: evaluate("validation")) if "validation" in data else None,
        resume=resume, progress=progress, desc="sft", unit="tokens",
        log_extra=lambda mean: {"perplexity": perplexity(mean)},
    )

    load_trainable_state(model, result.best_state)
    after = {name: evaluate(name) for name in SPLITS if name in data}
    save_model(accelerator.unwrap_model(model), tokenizer, run_dir)
    summary = {
        "model": sft.model,
        "trainable": sft.trainable,
        "parameters": {"trainable": trainable, "total": total},
        "examples": {name: len(texts[name]) for name in SPLITS},
        "steps": result.steps,
        "epochs_completed": result.epochs_completed,
        "stopped_early": result.stopped_early,
        "before": before,
        "after": after,
        "frozen_cache": {"used": first is not None, "first_trainable_block": first, "seconds": round(cache_seconds, 2)},
        "train_tokens_per_s": result.items_per_s,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "mixed_precision": accelerator.mixed_precision,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run_dir.summary_path, summary)
    return run_dir


def _cache_start(model, sft: SftConfig, train: EncodedSplit) -> int | None:
    """First trainable block when the blocks below it can be computed once, else None."""
    if not sft.cache_frozen or not isinstance(sft.trainable, list):
        return None
    first = first_trainable_block(model)
    if not first:
        return None
    probe = slice(0, min(2, len(train)))
    if not cache_is_exact(model, first, train.input_ids[probe], train.attention_mask[probe]):
        print(f"Note: frozen-block caching does not reproduce {type(model).__name__}'s forward; using the full forward.")
        return None
    return first


def _run_lower_blocks(model, first: int, split: EncodedSplit, batch_size: int, desc: str, progress: bool) -> torch.Tensor:
    model.eval()
    parts = []
    for idx in tqdm(torch.arange(len(split)).split(batch_size), desc=desc, disable=not progress, leave=False):
        parts.append(lower_hidden(model, first, split.input_ids[idx], split.attention_mask[idx]).float())
    return torch.cat(parts)


@torch.no_grad()
def evaluate_split(forward: Callable, split: EncodedSplit, batch_size: int, model) -> dict[str, float]:
    """Token-weighted mean loss and perplexity over the whole split."""
    model.eval()
    total, count = 0.0, 0
    for idx in torch.arange(len(split), device=split.input_ids.device).split(batch_size):
        nll, n = token_nll_sum(forward(split, idx), split.input_ids[idx], split.attention_mask[idx])
        total += float(nll)
        count += n
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": perplexity(mean), "tokens": count}


def save_model(model, tokenizer, run_dir: RunDir) -> None:
    """model/ loads with plain AutoModelForCausalLM: LoRA adapters are merged in first."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(run_dir.model_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def format_table(summary: dict) -> str:
    """The loss/perplexity table printed at the end (seed 000, Table 1)."""
    before = summary.get("before", {})
    lines = [f"{'split':<11} {'loss':>8} {'perplexity':>11}   {'perplexity before SFT':>21}"]
    for name in SPLITS:
        if name not in summary["after"]:
            continue
        row = summary["after"][name]
        prior = before.get(name, {}).get("perplexity")
        prior_text = "-" if prior is None else f"{prior:.3f}"
        lines.append(f"{name:<11} {row['loss']:8.3f} {row['perplexity']:11.3f}   {prior_text:>21}")
    return "\n".join(lines)
