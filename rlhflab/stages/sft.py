"""Supervised fine-tuning: `rlhflab sft`.

Trains a causal LM on the train split's review text and reports loss and perplexity on
train, validation and test, with early stopping on validation loss.
When only the top blocks train, the frozen lower blocks run once per review and their
outputs are reused every epoch (`sft.cache_frozen`).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from rlhflab.algorithms.supervised import Selection, Supervised, cache_facts, evaluation_chunks, make_optimizer, total_steps
from rlhflab.checkpoint import kept_after_failure, out_of_space_is_one_line
from rlhflab.config import Config, SftConfig, check_training_config
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, frozen_cache_allowed, run_facts
from rlhflab.engine.sharding import gathered, whole_state
from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir, atomic_dir
from rlhflab.models.blocks import freeze_all_but_blocks, resolve_block_indices, transformer_blocks
from rlhflab.models.causal_lm import count_parameters, load_causal_lm, refuse_steering, with_lora
from rlhflab.models.encoding import EncodedSplit, SplitForward, encode_and_cache, make_forward
from rlhflab.ops.lm_loss import perplexity
from rlhflab.stages.common import finish_run, load_splits, open_run_dir
from rlhflab.summaries import SftSummary

SPLITS = ("train", "validation", "test")


def configure_trainable(model, sft: SftConfig, section: str = "sft"):
    """Freeze what does not train; returns the model to train (a peft wrapper for LoRA).
    `section` is the config section of `sft` (sft, dpo, ilql): errors name its `trainable` key."""
    if sft.trainable == "all":
        model.requires_grad_(True)
        return model
    if sft.trainable == "lora":
        return with_lora(model, sft.lora)
    freeze_all_but_blocks(model, resolve_block_indices(sft.trainable, len(transformer_blocks(model)), f"{section}.trainable"))
    return model


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Fine-tune `cfg.sft.model` on `cfg.data`; write runs/<name>/sft."""
    sft = cfg.sft
    check_training_config(sft, "sft")
    refuse_steering(sft.model, "sft.model")
    if sft.max_length < 2:
        raise RlhfLabError("sft.max_length must be at least 2.")
    started = time.perf_counter()
    runtime.seed(cfg.seed, per_rank=False)
    splits = load_splits(cfg)  # data errors surface before any model loads
    if len(splits.train) == 0:
        raise RlhfLabError("The train split is empty; give data.fractions a larger train part.")
    run_dir = open_run_dir(cfg, "sft", resume=resume, overwrite=overwrite, runtime=runtime)

    model, tokenizer = load_causal_lm(sft.model, steering=False)
    model.config.use_cache = False
    model = runtime.place(configure_trainable(model, sft))
    trainable, total = count_parameters(model)
    texts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    data, first, cache_seconds = encode_and_cache(
        model, {name: [r.text for r in reviews] for name, reviews in texts.items()}, tokenizer,
        max_length=sft.max_length, append_eos=True, device=runtime.device,
        cache_frozen=sft.cache_frozen and isinstance(sft.trainable, list) and frozen_cache_allowed(runtime),
        batch_size=sft.eval_batch_size, autocast=runtime.autocast, progress=progress and runtime.is_main,
    )
    optimizer, scheduler = make_optimizer(model, sft, len(data["train"]))
    prepared, optimizer = runtime.accelerator.prepare(SplitForward(model, first, nll=True), optimizer)
    forward = make_forward(prepared, runtime.autocast)

    def evaluate(name: str) -> dict[str, float]:
        return evaluate_split(forward, data[name], sft.eval_batch_size, prepared, runtime)

    before = {"validation": evaluate("validation")} if "validation" in data else {}
    train = data["train"]

    def loss(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        return forward(train, rows)  # (NLL sum, tokens): SplitForward(nll=True)

    algorithm = Supervised(
        runtime=runtime, model=model, prepared=prepared, optimizer=optimizer, scheduler=scheduler, cfg=sft, seed=cfg.seed,
        n_train=len(train), loss=loss, validate=(lambda: evaluate("validation")) if "validation" in data else None,
        selection=Selection("loss", higher_is_better=False), unit="tokens",
        log_extra=lambda mean: {"perplexity": perplexity(mean)},
    )
    steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir, total_steps=total_steps(sft, len(train)),
                     checkpoint_every=sft.checkpoint_every, resume=resume, progress=progress, desc="sft")
    algorithm.keep_best()
    after = {name: evaluate(name) for name in SPLITS if name in data}
    state = whole_state(model)  # under FSDP every process gathers the shards; the main one writes
    if runtime.is_main:
        save_model(model, tokenizer, run_dir, state)
    summary = SftSummary(
        model=sft.model,
        trainable=sft.trainable,
        parameters={"trainable": trainable, "total": total},
        examples={name: len(texts[name]) for name in SPLITS},
        left_out=splits.left_out,
        **algorithm.facts(steps),
        before=before,
        after=after,
        frozen_cache=cache_facts(first, cache_seconds),
        **run_facts(runtime, started),
    )
    return finish_run(run_dir, summary, runtime)


@torch.no_grad()
def evaluate_split(forward: Callable, split: EncodedSplit, batch_size: int, model, runtime: Runtime) -> dict[str, float]:
    """Token-weighted mean loss and perplexity over the whole split (each process scores its share);
    `forward` is make_forward over a SplitForward(nll=True): rows -> (NLL sum, tokens).

    The shares may need different numbers of batches (17 rows, 2 processes, batches of 8: 2 and 1),
    and under FSDP a sharded forward pass is a collective, so the passes run inside `gathered`
    (whole weights, no collective per pass); an empty share runs one row and discards it
    (`evaluation_chunks`: DDP's first forward after a step is a collective)."""
    model.eval()
    total, count = 0.0, 0
    rows = torch.arange(len(split), device=split.input_ids.device)[runtime.rank :: runtime.world_size]
    chunks, counted = evaluation_chunks(rows, batch_size)
    with gathered(model):
        for idx in chunks:
            nll, n = forward(split, idx)
            total += float(nll) if counted else 0.0
            count += n if counted else 0
    total, count = float(runtime.sum(total)), int(runtime.sum(count))
    mean = total / max(count, 1)
    return {"loss": mean, "perplexity": perplexity(mean), "tokens": count}


def save_model(model, tokenizer, run_dir: RunDir, state: dict | None = None) -> None:
    """model/ loads with plain AutoModelForCausalLM: LoRA adapters are merged in first. `state`: the
    model's whole state dict when it is FSDP-sharded (rlhflab/engine/sharding.py)."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    needed = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with out_of_space_is_one_line("the model", run_dir.model_dir, needed=needed, kept=kept_after_failure(run_dir)):
        with atomic_dir(run_dir.model_dir) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)


def format_summary(summary: SftSummary) -> str:
    """The loss/perplexity table printed at the end."""
    before = summary.before or {}
    lines = [f"{'split':<11} {'loss':>8} {'perplexity':>11}   {'perplexity before SFT':>21}"]
    for name in SPLITS:
        if name not in summary.after:
            continue
        row = summary.after[name]
        prior = before.get(name, {}).get("perplexity")
        prior_text = "-" if prior is None else f"{prior:.3f}"
        lines.append(f"{name:<11} {row['loss']:8.3f} {row['perplexity']:11.3f}   {prior_text:>21}")
    lines.append(f"({summary.seconds:.0f} s, {summary.train_tokens_per_s:.0f} train tokens/s)")
    return "\n".join(lines)
