"""Pretraining from scratch: `rlhflab pretrain`.

Cleans a corpus (the bundled Shakespeare plays by default), splits every document 90:10 into
contiguous train and validation parts, trains a tokenizer on the train part (word, char or
BPE), builds a small Llama- or GPT-2-style decoder from a config, and trains it on packed
blocks of `pretrain.context` tokens with the one training loop: validation loss and perplexity
once per epoch, early stopping, samples from fixed prompts at every evaluation. The summary sets
the result beside smoothed unigram and bigram models of the same tokens. The model folder loads
with plain `AutoModelForCausalLM` / `AutoTokenizer`, so SFT, the reward stage's scalar head and
RL take it like any other causal LM.
"""

from __future__ import annotations

import json
import time

import torch

from rlhflab.algorithms.supervised import Selection, Supervised, make_optimizer, total_steps
from rlhflab.config import Config, PretrainConfig, check_pretrain
from rlhflab.data.corpus import load_corpus, split_corpus
from rlhflab.engine.loop import run_loop
from rlhflab.engine.runtime import Runtime, run_facts
from rlhflab.engine.sharding import gathered, whole_state
from rlhflab.errors import RlhfLabError
from rlhflab.eval.baselines import ngram_perplexities
from rlhflab.eval.generate import generate
from rlhflab.io import RunDir, append_line
from rlhflab.models.causal_lm import count_parameters
from rlhflab.models.encoding import EncodedSplit, SplitForward, make_forward
from rlhflab.models.tokenizers import train_tokenizer
from rlhflab.ops.lm_loss import perplexity
from rlhflab.ops.schedules import noam_lambda
from rlhflab.stages.common import finish_run, open_run_dir
from rlhflab.stages.sft import evaluate_split, save_model
from rlhflab.summaries import PretrainSummary


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Train a causal LM from scratch on `cfg.pretrain.corpus`; write runs/<name>/pretrain."""
    pre = cfg.pretrain
    check_pretrain(pre)
    started = time.perf_counter()
    runtime.seed(cfg.seed, per_rank=False)
    corpus = load_corpus(pre.corpus, text_column=pre.text_column)  # corpus errors before anything is written
    train_text, validation_text = split_corpus(corpus, pre.validation_fraction)
    tokenizer = train_tokenizer([train_text], pre.tokenizer, pre.vocab_size, min_frequency=pre.min_frequency)
    ids = {"train": _ids(tokenizer, train_text), "validation": _ids(tokenizer, validation_text)}
    blocks = {name: pack(values, pre.context, name) for name, values in ids.items()}
    run_dir = open_run_dir(cfg, "pretrain", resume=resume, overwrite=overwrite, runtime=runtime)

    model = build_model(pre, tokenizer).to(runtime.device)
    _, parameters = count_parameters(model)
    data = {name: EncodedSplit(b, torch.ones_like(b)).to(runtime.device) for name, b in blocks.items()}
    optimizer, scheduler = _optimizer(model, pre, len(data["train"]))
    prepared, optimizer = runtime.accelerator.prepare(SplitForward(model, None, nll=True), optimizer)
    forward = make_forward(prepared, runtime.autocast)
    train = data["train"]

    def loss(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        return forward(train, rows)  # (NLL sum, tokens): SplitForward(nll=True)

    def validate() -> dict:
        result = evaluate_split(forward, data["validation"], pre.eval_batch_size, prepared, runtime)
        _write_samples(run_dir, runtime, prepared, model, tokenizer, pre, cfg.seed, algorithm.state)
        return result

    algorithm = Supervised(
        runtime=runtime, model=model, prepared=prepared, optimizer=optimizer, scheduler=scheduler, cfg=pre, seed=cfg.seed,
        n_train=len(train), loss=loss, validate=validate, selection=Selection("loss", higher_is_better=False),
        unit="tokens", log_extra=lambda mean: {"perplexity": perplexity(mean)},
    )
    steps = run_loop(algorithm, runtime=runtime, run_dir=run_dir, total_steps=total_steps(pre, len(train)),
                     checkpoint_every=pre.checkpoint_every, resume=resume, progress=progress, desc="pretrain")
    algorithm.keep_best()
    # The train split is scored on its first blocks, as many as validation has (a full pass over
    # a corpus costs as much as an epoch); the per-epoch table has the loss over all of it.
    sample = EncodedSplit(train.input_ids[: len(data["validation"])], train.attention_mask[: len(data["validation"])])
    after = {name: evaluate_split(forward, split, pre.eval_batch_size, prepared, runtime)
             for name, split in (("train", sample), ("validation", data["validation"]))}
    state = whole_state(model)  # under FSDP every process gathers the shards; the main one writes
    if runtime.is_main:
        save_model(model, tokenizer, run_dir, state)
    summary = {
        "corpus": {"source": pre.corpus, "documents": len(corpus.documents), "removed": corpus.removed,
                   "characters": {"train": len(train_text), "validation": len(validation_text)}},
        "tokens": {name: len(values) for name, values in ids.items()},
        "tokens_left_out": {name: len(ids[name]) - blocks[name].numel() for name in ids},  # the last partial block
        "tokenizer": {"kind": pre.tokenizer, "vocab_size": len(tokenizer),
                      "unknown_share_validation": _unknown_share(ids["validation"], tokenizer.unk_token_id)},
        "model": {"architecture": pre.architecture, "layers": pre.layers, "width": pre.width, "heads": pre.heads,
                  "context": pre.context, "parameters": parameters},
        **algorithm.facts(steps),
        "epochs": epoch_table(run_dir.read_metrics() if runtime.is_main else []),
        "after": after,
        "baselines": ngram_perplexities(ids["train"], ids["validation"], len(tokenizer)),
        "samples": _last_samples(run_dir) if runtime.is_main else [],
        **run_facts(runtime, started),
    }
    return finish_run(run_dir, PretrainSummary(**summary), runtime)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pack(ids: list[int], context: int, split: str) -> torch.Tensor:
    """(N, context) contiguous blocks of the token stream; the last partial block is left out.

    Raises RlhfLabError when the split holds less than one block."""
    n = len(ids) // context
    if n == 0:
        raise RlhfLabError(f"The {split} part of the corpus has {len(ids)} tokens, fewer than one block of "
                           f"pretrain.context={context}. Use a larger corpus or a smaller pretrain.context.")
    return torch.tensor(ids[: n * context], dtype=torch.long).view(n, context)


def build_model(pre: PretrainConfig, tokenizer):
    """A freshly initialised Hugging Face decoder sized by the config (Llama or GPT-2 style)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    special = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if pre.architecture == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=pre.width, n_layer=pre.layers, n_head=pre.heads,
                            n_positions=pre.context, **special)
    else:  # SwiGLU width 8/3 of the model width (LLaMA), rounded up to a multiple of 32
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=pre.width, intermediate_size=-(-pre.width * 8 // 96) * 32,
                             num_hidden_layers=pre.layers, num_attention_heads=pre.heads, num_key_value_heads=pre.heads,
                             max_position_embeddings=pre.context, tie_word_embeddings=True, **special)
    return AutoModelForCausalLM.from_config(config)


def _optimizer(model, pre: PretrainConfig, n_train: int):
    """AdamW with the Noam schedule (betas 0.9/0.98 as in the Transformer), or cosine with warmup."""
    if pre.schedule == "cosine":
        return make_optimizer(model, pre, n_train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9, weight_decay=pre.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, noam_lambda(pre.width, pre.warmup_steps, pre.lr_mul, 1.0))
    return optimizer, scheduler


def epoch_table(records: list[dict]) -> list[dict]:
    """Per epoch (1-based): the mean train loss logged during it, and the validation loss after it."""
    rows: dict[int, dict] = {}
    for r in records:
        row = rows.setdefault(r.get("epoch", 0), {"epoch": r.get("epoch", 0) + 1, "losses": []})
        if r.get("split") == "train":
            row["losses"].append(r["loss"])
        elif r.get("split") == "validation" and "loss" in r:
            row.update(validation_loss=r["loss"], validation_perplexity=r["perplexity"])
    table = []
    for row in sorted(rows.values(), key=lambda x: x["epoch"]):
        losses = row.pop("losses")
        if losses:
            row["train_loss"] = sum(losses) / len(losses)
            row["train_perplexity"] = perplexity(row["train_loss"])
        table.append(row)
    return table


def _unknown_share(ids: list[int], unk: int | None) -> float:
    return sum(1 for i in ids if i == unk) / max(len(ids), 1)


def _write_samples(run_dir: RunDir, runtime: Runtime, prepared, model, tokenizer, pre: PretrainConfig, seed: int,
                   state: dict) -> None:
    """Unedited samples from the fixed prompts (seeded, pure sampling) into samples.jsonl, sampled by
    the main process; under FSDP every process gathers the weights first (a collective)."""
    step, epoch = state["steps"], state["epoch"] - 1 if state["batch"] == 0 and state["epoch"] > 0 else state["epoch"]
    with gathered(prepared):
        if not runtime.is_main:
            return
        generations = generate(model, tokenizer, list(pre.sample_prompts), max_new_tokens=pre.sample_tokens, seed=seed,
                               autocast=runtime.autocast)
    append_line(run_dir.path / "samples.jsonl", *(json.dumps({"step": step, "epoch": epoch + 1, "prompt": g.prompt,
                                                             "response": g.response}) for g in generations))


def _last_samples(run_dir: RunDir) -> list[dict]:
    path = run_dir.path / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line] if path.exists() else []
    last = max((r["step"] for r in rows), default=None)  # the last evaluation's samples
    return [r for r in rows if r["step"] == last]


def format_summary(summary: PretrainSummary) -> str:
    """The pretraining table: loss and perplexity per split, beside the n-gram baselines."""
    lines = [f"{'':<12} {'loss':>8} {'perplexity':>11}"]
    for name, row in summary.after.items():
        lines.append(f"{name:<12} {row['loss']:8.3f} {row['perplexity']:11.2f}")
    for name in ("unigram", "bigram"):
        lines.append(f"{name + ' model':<12} {'':>8} {summary.baselines[name]:11.2f}   (validation)")
    lines.append(f"({summary.seconds:.0f} s, {summary.train_tokens_per_s:.0f} train tokens/s, "
                 f"{summary.model['parameters'] / 1e6:.1f}M parameters, {summary.tokens['train']:,} train tokens)")
    return "\n".join(lines)
