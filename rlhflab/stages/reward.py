"""Reward-model training: `rlhflab reward`.

Three kinds, one stage: a BERT-family classifier on labelled reviews, a Bradley-Terry model
on preference pairs (Ouyang et al. 2022), and a causal LM whose LM head is replaced by a
scalar head. The model with the best validation accuracy is saved to model/
with the gain and bias that normalise its scores.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable

import torch

from rlhflab.algorithms.supervised import Selection, Supervised, cache_facts, make_optimizer, total_steps
from rlhflab.config import Config, RewardConfig, check_training_config
from rlhflab.data import load_pairs, split_pairs
from rlhflab.errors import RlhfLabError
from rlhflab.eval.metrics import classification_metrics, format_classification_table, format_confusion, pairwise_metrics
from rlhflab.io import RunDir
from rlhflab.models.blocks import disable_dropout
from rlhflab.models.causal_lm import count_parameters, load_tokenizer
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, frozen_cache_allowed, run_facts
from rlhflab.engine.sharding import whole_state
from rlhflab.models.encoding import (EncodedSplit, SplitForward, encode_and_cache, encode_prompt_response, length_grouped_batches,
                                     make_forward, row_lengths)
from rlhflab.models.attention import use_matmul_attention
from rlhflab.models.reward_model import RewardMeta, configure_trainable, load_reward_backbone, save_reward_model
from rlhflab.ops.reward_loss import bradley_terry_loss, label_loss, normalization
from rlhflab.stages.common import finish_run, load_splits, open_run_dir
from rlhflab.summaries import RewardSummary

SPLITS = ("train", "validation", "test")


def _labelled_texts(cfg: Config) -> tuple[dict[str, list[str] | EncodedSplit], dict[str, torch.Tensor], dict[str, int]]:
    """Each split's texts (encoded already when they answer prompts: the prompt gives way from its
    front, the answer is read whole), labels, and what the reader left out."""
    splits = load_splits(cfg, cfg.reward.data, require_labels=True)
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    texts = {name: [r.text for r in reviews] for name, reviews in parts.items() if reviews}
    if any(r.prompt for reviews in parts.values() for r in reviews):
        tokenizer = load_tokenizer(cfg.reward.model)
        texts = {name: encode_prompt_response([r.prompt for r in reviews], [r.text for r in reviews], tokenizer,
                                              cfg.reward.max_length, long_response="truncate")[0]
                 for name, reviews in parts.items() if reviews}
    labels = {name: torch.tensor([float(r.label) for r in reviews]) for name, reviews in parts.items() if reviews}
    return texts, labels, splits.left_out


def _pair_inputs(cfg: Config) -> tuple[dict[str, EncodedSplit], dict[str, torch.Tensor], dict[str, int]]:
    """Each split's chosen and rejected texts, tokenized with the prompt cut from its front when
    prompt + response exceed reward.max_length, so the two responses are always read whole."""
    rw = cfg.reward
    pairs_cfg = rw.pairs
    if not pairs_cfg.source:
        raise RlhfLabError("reward.objective is pairs but reward.pairs.source is not set; point it at a file of prompt/chosen/rejected rows.")
    pairs = load_pairs(pairs_cfg.source, prompt_column=pairs_cfg.prompt_column, chosen_column=pairs_cfg.chosen_column,
                       rejected_column=pairs_cfg.rejected_column, margin_column=pairs_cfg.margin_column, split=pairs_cfg.split)
    splits = split_pairs(pairs, pairs_cfg.fractions, cfg.seed)
    tokenizer = load_tokenizer(rw.model)  # cheap; the model loads after the data is known to fit
    inputs, margins, cut, total = {}, {}, 0, 0
    for name in SPLITS:
        part = getattr(splits, name)
        if part:
            for side in ("chosen", "rejected"):
                inputs[f"{name}/{side}"], n = encode_prompt_response(
                    [p.prompt for p in part], [getattr(p, side) for p in part], tokenizer, rw.max_length,
                    setting="reward.max_length", where=[f"the {side} response of the pair at {p.where}" for p in part])
                cut, total = cut + n, total + len(part)
            margins[name] = torch.tensor([p.margin for p in part])
    if cut:
        print(f"Note: {cut} of {total} prompt + response texts exceed reward.max_length={rw.max_length}; "
              f"their prompts were cut from the front so that the responses are read whole.")
    return inputs, margins, {}


@torch.no_grad()
def raw_scores(forward: Callable, split: EncodedSplit, batch_size: int, model) -> torch.Tensor:
    """The head's output for every row of a split (N,), in fp32, in the split's row order.

    Rows go through longest first, so that each batch holds texts of similar length and a
    trimming `forward` (make_forward(trim=True)) computes little padding."""
    model.eval()
    order = torch.sort(row_lengths(split), descending=True, stable=True).indices
    scores = torch.empty(len(split))
    for idx in order.split(batch_size):
        scores[idx.cpu()] = forward(split, idx).squeeze(-1).float().cpu()
    return scores


def length_grouped(split: EncodedSplit, batch_size: int):
    """Batches of similar length for labelled texts, or None (plain shuffled batches).

    Trimmed to their longest text, they compute a fifth fewer padded tokens than random batches of
    IMDB reviews at max_length 256 (41 % are cut to 256, the rest are shorter). When every text
    has the same length there is nothing to save. Preference pairs are never grouped (the caller
    passes None): their texts are short, and batches sorted by length would group pairs by a
    feature that can go with the preference (long chosen answers), a bias per batch."""
    lengths = row_lengths(split)
    if bool(lengths.min() == lengths.max()):
        return None
    return lambda generator: length_grouped_batches(lengths, batch_size, generator)


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Train `cfg.reward.model` on labels or preference pairs; write runs/<name>/reward."""
    rw: RewardConfig = cfg.reward
    check_training_config(rw, "reward")
    if rw.max_length < 2:
        raise RlhfLabError("reward.max_length must be at least 2.")
    started = time.perf_counter()
    runtime.seed(cfg.seed, per_rank=False)
    pairs = rw.objective == "pairs"
    texts, targets, left_out = _pair_inputs(cfg) if pairs else _labelled_texts(cfg)  # data errors before models load
    run_dir = open_run_dir(cfg, "reward", resume=resume, overwrite=overwrite, runtime=runtime)

    model, tokenizer = load_reward_backbone(rw.model)
    if not rw.dropout:
        disable_dropout(model)
    configure_trainable(model, rw.trainable)
    model = runtime.place(model)
    # On a CPU, a 32-review MiniLM training step takes 0.49 s at 128 tokens, 0.74 at 192 and
    # 1.2-1.4 at 256 with matmul attention, against 0.9-1.0, 1.4 and 1.4-1.6 with torch's
    # flash-attention kernel (2-core Xeon, bf16), for about 0.7 GB more memory at 256 tokens
    # (it keeps each layer's attention probabilities for the backward pass). GPUs keep their kernels.
    matmul_attention = runtime.device.type == "cpu" and use_matmul_attention(model)
    trainable, total = count_parameters(model)
    data, first, cache_seconds = encode_and_cache(
        model, texts, tokenizer, max_length=rw.max_length, append_eos=False, device=runtime.device,
        cache_frozen=rw.cache_frozen and rw.trainable != "all" and frozen_cache_allowed(runtime),
        batch_size=rw.eval_batch_size, autocast=runtime.autocast, progress=progress and runtime.is_main,
        keep=rw.truncation,
    )
    targets = {name: value.to(runtime.device) for name, value in targets.items()}
    train_name = "train/chosen" if pairs else "train"
    optimizer, scheduler = make_optimizer(model, rw, len(data[train_name]))
    prepared, optimizer = runtime.accelerator.prepare(SplitForward(model, first), optimizer)
    scorer = Scorer(make_forward(prepared, runtime.autocast, trim=True, multiple=32), data, targets, pairs, rw.eval_batch_size, prepared)
    has_validation = ("validation/chosen" if pairs else "validation") in data
    algorithm = Supervised(
        runtime=runtime, model=model, prepared=prepared, optimizer=optimizer, scheduler=scheduler, cfg=rw, seed=cfg.seed,
        n_train=len(data[train_name]), loss=scorer.train_loss,
        validate=(lambda: scorer.metrics("validation")) if has_validation else None,
        selection=Selection("pairwise_accuracy" if pairs else "accuracy", higher_is_better=True), unit="examples",
        batches=None if pairs else length_grouped(data[train_name], rw.batch_size),
    )
    steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir, total_steps=total_steps(rw, len(data[train_name])),
                     checkpoint_every=rw.checkpoint_every, resume=resume, progress=progress, desc="reward")
    algorithm.keep_best()
    # The loop always validates after the last step; when that evaluation was the best, the kept
    # weights are the ones it scored, and its validation scores are reused instead of recomputed.
    reuse = algorithm.state["evals_without_gain"] == 0 and scorer.last_validation is not None
    final_scores = {name: scorer.last_validation if reuse and name == "validation" else scorer.split_scores(name)
                    for name in SPLITS if name in targets}
    metrics = {name: scorer.metrics(name, raw) for name, raw in final_scores.items()}
    reference = "validation" if has_validation else "train"
    gain, bias = normalization(torch.cat(list(final_scores[reference].values())))
    meta = RewardMeta(objective=rw.objective, gain=gain, bias=bias, reference=f"{reference} split", base_model=rw.model,
                      max_length=rw.max_length, truncation=rw.truncation)
    if matmul_attention:
        model.set_attn_implementation("sdpa")  # saved with an attention every transformers install has
    state = whole_state(model)  # under FSDP every process gathers the shards; the main one writes
    if runtime.is_main:
        save_reward_model(model, tokenizer, meta, run_dir.model_dir, state)
    summary = RewardSummary(
        objective=rw.objective,
        model=rw.model,
        trainable=rw.trainable,
        parameters={"trainable": trainable, "total": total},
        examples={name: len(data[f"{name}/chosen" if pairs else name]) for name in SPLITS if name in targets},
        left_out=left_out,
        labels=_label_kind(cfg),
        metrics=metrics,
        normalization=asdict(meta),
        **algorithm.facts(steps),
        frozen_cache=cache_facts(first, cache_seconds),
        **run_facts(runtime, started),
        confusion_matrix_test=metrics["test"]["confusion_matrix"] if not pairs and "test" in metrics else None,
    )
    return finish_run(run_dir, summary, runtime)


def _label_kind(cfg: Config) -> str:
    """What the targets are: preference pairs, human/dataset labels, or a lexicon's weak labels."""
    from rlhflab.data.weak_labels import THRESHOLD, WEAK_SOURCES

    if cfg.reward.objective == "pairs":
        return "preference pairs"
    source = (cfg.reward.data or cfg.data).source.lower()
    if source in WEAK_SOURCES:
        return f"weak labels: VADER lexicon on snippets of {WEAK_SOURCES[source]} (compound >= {THRESHOLD} happy, <= -{THRESHOLD} sad)"
    return "labels from the data"


class Scorer:
    """The reward head's outputs on the splits: the training loss and the validation/test metrics.

    Every process scores whole splits (metrics such as accuracy need every score), so the
    numbers are the same on every rank."""

    def __init__(self, forward: Callable, data: dict[str, EncodedSplit], targets: dict[str, torch.Tensor], pairs: bool,
                 batch_size: int, model):
        self.forward, self.data, self.targets, self.pairs = forward, data, targets, pairs
        self.batch_size, self.model = batch_size, model
        self.last_validation: dict[str, torch.Tensor] | None = None  # raw scores of the latest validation

    def train_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(loss summed over the rows, number of rows)."""
        if self.pairs:
            chosen = self.forward(self.data["train/chosen"], rows).squeeze(-1)
            rejected = self.forward(self.data["train/rejected"], rows).squeeze(-1)
            return bradley_terry_loss(chosen, rejected, self.targets["train"][rows]) * len(rows), len(rows)
        return label_loss(self.forward(self.data["train"], rows).squeeze(-1), self.targets["train"][rows]) * len(rows), len(rows)

    def split_scores(self, name: str) -> dict[str, torch.Tensor]:
        if self.pairs:
            return {side: raw_scores(self.forward, self.data[f"{name}/{side}"], self.batch_size, self.model)
                    for side in ("chosen", "rejected")}
        return {"scores": raw_scores(self.forward, self.data[name], self.batch_size, self.model)}

    def metrics(self, name: str, raw: dict[str, torch.Tensor] | None = None) -> dict:
        raw = raw or self.split_scores(name)
        if name == "validation":
            self.last_validation = raw
        target = self.targets[name].cpu()
        if self.pairs:
            loss = float(bradley_terry_loss(raw["chosen"], raw["rejected"], target))
            return {"loss": loss, **pairwise_metrics(raw["chosen"].tolist(), raw["rejected"].tolist())}
        metrics = classification_metrics(target.long().tolist(), (raw["scores"] > 0).long().tolist())
        return {"loss": float(label_loss(raw["scores"], target)), **metrics}


def format_summary(summary: RewardSummary) -> str:
    """The tables printed at the end: metrics per split and the confusion matrix, or pairwise accuracy."""
    metrics = summary.metrics
    timing = f"({summary.seconds:.0f} s, {summary.train_examples_per_s:.0f} train examples/s)"
    if summary.objective == "pairs":
        lines = [f"{'split':<11} {'pairwise acc':>12} {'mean margin':>12} {'loss':>8}"]
        for name, row in metrics.items():
            lines.append(f"{name:<11} {row['pairwise_accuracy']:12.3f} {row['mean_margin']:12.3f} {row['loss']:8.3f}")
        return "\n".join(lines + [timing])
    text = format_classification_table(metrics)
    if summary.confusion_matrix_test is not None:
        text += "\n\nConfusion matrix on test:\n" + format_confusion(summary.confusion_matrix_test)
    return text + "\n" + timing
