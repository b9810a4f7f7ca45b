"""Supervised fine-tuning: `rlhflab sft`.

Trains a causal LM on the train split's review text and reports loss and perplexity on
train, validation and test (seed 000, Table 1), with early stopping on validation loss.
When only the top blocks train, the frozen lower blocks run once per review and their
outputs are reused every epoch (`sft.cache_frozen`).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from rlhflab.checkpoint import load_trainable_state
from rlhflab.config import Config, SftConfig
from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, atomic_dir
from rlhflab.models.blocks import freeze_all_but_blocks, resolve_block_indices, transformer_blocks
from rlhflab.models.causal_lm import count_parameters, load_causal_lm, with_lora
from rlhflab.models.encoding import EncodedSplit, encode_and_cache, make_forward
from rlhflab.ops.lm_loss import perplexity, token_nll_sum
from rlhflab.runtime import make_accelerator, run_facts, seed_everything
from rlhflab.stages.common import load_splits, open_run_dir
from rlhflab.training import LoopSettings, cache_facts, check_training_config, fit, make_optimizer

SPLITS = ("train", "validation", "test")


def configure_trainable(model, sft: SftConfig):
    """Freeze what does not train; returns the model to train (a peft wrapper for LoRA)."""
    if sft.trainable == "all":
        model.requires_grad_(True)
        return model
    if sft.trainable == "lora":
        return with_lora(model, sft.lora)
    freeze_all_but_blocks(model, resolve_block_indices(sft.trainable, len(transformer_blocks(model))))
    return model


def run(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Fine-tune `cfg.sft.model` on `cfg.data`; write runs/<name>/sft."""
    sft = cfg.sft
    check_training_config(sft, "sft")
    if sft.max_length < 2:
        raise RlhfLabError("sft.max_length must be at least 2.")
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
    data, first, cache_seconds = encode_and_cache(
        model, {name: [r.text for r in reviews] for name, reviews in texts.items()}, tokenizer,
        max_length=sft.max_length, append_eos=True, device=device,
        cache_frozen=sft.cache_frozen and isinstance(sft.trainable, list),
        batch_size=sft.eval_batch_size, autocast=accelerator.autocast, progress=progress,
    )
    forward = make_forward(model, first, accelerator.autocast)

    def evaluate(name: str) -> dict[str, float]:
        return evaluate_split(forward, data[name], sft.eval_batch_size, model)

    before = {"validation": evaluate("validation")} if "validation" in data else {}
    optimizer, scheduler = make_optimizer(model, sft, len(data["train"]))
    model, optimizer = accelerator.prepare(model, optimizer)
    train = data["train"]

    def train_step(idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        nll, n_tokens = token_nll_sum(forward(train, idx), train.input_ids[idx], train.attention_mask[idx])
        return nll / max(n_tokens, 1), n_tokens

    result = fit(
        model=model, optimizer=optimizer, scheduler=scheduler, accelerator=accelerator, run_dir=run_dir,
        n_train=len(train), settings=LoopSettings.from_config(sft, cfg.seed, "loss", higher_is_better=False),
        train_step=train_step, validate=(lambda: evaluate("validation")) if "validation" in data else None,
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
        "left_out": splits.left_out,
        **result.facts(),
        "before": before,
        "after": after,
        "frozen_cache": cache_facts(first, cache_seconds),
        "train_tokens_per_s": result.items_per_s,
        **run_facts(accelerator, started),
    }
    return run_dir.finish(summary)


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


def format_summary(summary: dict) -> str:
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
    lines.append(f"({summary['seconds']:.0f} s, {summary['train_tokens_per_s']:.0f} train tokens/s)")
    return "\n".join(lines)
