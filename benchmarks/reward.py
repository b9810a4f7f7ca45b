"""Reward-model training cost on this machine: the gain from caching the frozen lower layers.

    python benchmarks/reward.py [--model minilm-l6] [--reviews 512] [--length 256] [--epochs 3]

For each trainable setting it times one full pass of the frozen layers (the cache, paid once)
and one training epoch with and without the cache, then projects the cost of `--epochs`
epochs. Prints figures; it is not a pass/fail test. Then each pass as a fraction of the GEMM rate
(bf16 where autocast runs bf16, else fp32) measured at the model's own shapes, one batch's
tokens as rows, in the same run (benchmarks/ceiling.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from ceiling import (PassFactors, Phase, ceiling_header, ceiling_table, encoder_keys, flops_per_token, gemm_ceiling,
                     pass_factors, phase_line, work)
from rlhflab.data import balanced_sample, load_reviews
from rlhflab.malloc import keep_freed_memory
from rlhflab.models.blocks import first_trainable_block
from rlhflab.models.encoding import SplitForward, cache_lower_blocks, encode, make_forward
from rlhflab.models.reward_model import configure_trainable, load_reward_backbone
from rlhflab.ops.reward_loss import label_loss
from rlhflab.engine.runtime import fast_bf16, peak_memory_mb


def epoch_seconds(model, forward, split, labels, batch_size: int) -> float:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    model.train()
    start = time.perf_counter()
    for idx in torch.arange(len(split)).split(batch_size):
        label_loss(forward(split, idx).squeeze(-1), labels[idx]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    keep_freed_memory()  # as every stage does (RLHFLAB_KEEP_FREED_MEMORY=0 measures without)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--reviews", type=int, default=512)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    bf16 = fast_bf16(cpu=True)
    autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
    reviews = balanced_sample(load_reviews("imdb"), args.reviews // 2, seed=0)
    labels = torch.tensor([float(r.label) for r in reviews])
    model, tokenizer = load_reward_backbone(args.model)
    split = encode([r.text for r in reviews], tokenizer, args.length)
    tokens = int(split.attention_mask.sum())
    print(f"{args.model}: {len(reviews)} reviews, {tokens} tokens (max {args.length}), batch {args.batch}, "
          f"{'bf16' if bf16 else 'fp32'} autocast, {torch.get_num_threads()} threads")
    print(f"{'trainable':<12} {'cache once':>10} {'epoch cached':>13} {'epoch plain':>12} "
          f"{f'{args.epochs} epochs cached':>17} {f'{args.epochs} epochs plain':>16} {'speed-up':>9}")
    timed = []  # (trainable, [(pass, seconds, GEMM passes per token, rows per forward)])
    n_blocks = len(pass_factors(model, train=False).blocks)
    for trainable in ("head", [-1], [-2, -1], "all"):
        configure_trainable(model, trainable)
        first = first_trainable_block(model)
        split.hidden = None
        plain = epoch_seconds(model, make_forward(SplitForward(model, None), autocast), split, labels, args.batch)
        passes = [("epoch plain", plain, pass_factors(model, train=True), args.batch)]
        timed.append((trainable, passes))
        if first is None:  # everything trains: nothing to cache
            print(f"{str(trainable):<12} {'-':>10} {'-':>13} {plain:12.1f} {'-':>17} {args.epochs * plain:16.1f} {'-':>9}")
            continue
        start = time.perf_counter()
        with autocast():
            cache_lower_blocks(model, first, split, 64, desc="cache", progress=False)
        cache = time.perf_counter() - start
        cached = epoch_seconds(model, make_forward(SplitForward(model, first), autocast), split, labels, args.batch)
        passes[:0] = [("cache once", cache, PassFactors(tuple(int(i < first) for i in range(n_blocks)), 0), 64),
                      ("epoch cached", cached, pass_factors(model, train=True, skip_below=first), args.batch)]
        total_cached, total_plain = cache + args.epochs * cached, args.epochs * plain
        print(f"{str(trainable):<12} {cache:10.1f} {cached:13.1f} {plain:12.1f} {total_cached:17.1f} "
              f"{total_plain:16.1f} {total_plain / total_cached:8.1f}x")
    print(f"peak memory: {peak_memory_mb(torch.device('cpu')):.0f} MB (process RSS)")

    # Against the GEMM rate at the model's shapes, one batch's tokens (padded to the split's width) as rows.
    flops, width = flops_per_token(model.config), split.input_ids.shape[1]
    keys = encoder_keys(split.attention_mask.sum(dim=1).tolist())
    dtype = torch.bfloat16 if bf16 else torch.float32
    ceilings = {rows: gemm_ceiling(model.config, rows * width, dtype) for rows in sorted({args.batch, 64})}
    print("\nagainst this host's GEMM rate, measured in this run (work counts real tokens, backward GEMMs at the "
          "forward rate; benchmarks/ceiling.py):")
    print(ceiling_header(flops, args.model))
    print(*ceiling_table(list(ceilings.values())), sep="\n")
    for trainable, passes in timed:
        for name, seconds, factors, rows in passes:
            blocks, _ = work(flops, factors, tokens=tokens, head_tokens=0, attention_keys=keys)
            label = f"{str(trainable):<9}{name} ({factors.describe(head=False)})"
            if not blocks:  # only the head trains: one row per review, nothing to measure against
                print(f"{label:<48}{tokens / seconds:8.0f} tok/s (no block runs: the head alone)")
                continue
            ceiling = ceilings[rows]
            print(phase_line(Phase(label, tokens, seconds, blocks, ceiling.seconds(blocks), ceiling.label), width=48))


if __name__ == "__main__":
    main()
