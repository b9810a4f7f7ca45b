"""SFT throughput on this machine: tokens/s of each training path and peak memory.

    python benchmarks/sft.py [--model smollm2-135m] [--batch 16] [--length 64] [--steps 5]

Prints figures; it is not a pass/fail test. Each path runs a warm-up step first. Then each path
as a fraction of the fp32 and bf16 GEMM rates measured at the model's own shapes, with one
forward's tokens as rows, in the same run (benchmarks/ceiling.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from ceiling import (PassFactors, Phase, causal_keys, ceiling_header, ceiling_table, flops_per_token, gemm_ceiling,
                     pass_factors, phase_line, work)
from rlhflab.config import SftConfig
from rlhflab.data import balanced_sample, load_reviews
from rlhflab.malloc import keep_freed_memory
from rlhflab.models.blocks import first_trainable_block, lower_hidden, top_forward
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.encoding import SplitForward, encode
from rlhflab.ops.lm_loss import token_nll_sum
from rlhflab.engine.runtime import peak_memory_mb
from rlhflab.stages.sft import configure_trainable


def timed(fn, steps: int, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
    keep_freed_memory()  # as every stage does (RLHFLAB_KEEP_FREED_MEMORY=0 measures without)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    reviews = balanced_sample(load_reviews("imdb"), args.batch // 2 + 1, seed=0)[: args.batch]
    t0 = time.perf_counter()
    model, tokenizer = load_causal_lm(args.model)
    load_seconds = time.perf_counter() - t0
    batch = encode([r.text for r in reviews], tokenizer, args.length)
    ids, mask = batch.input_ids, batch.attention_mask
    tokens = int(mask.sum())

    def step(loss_fn, params):
        optimizer = torch.optim.SGD(params, lr=0.0)  # lr 0: measure compute, keep weights fixed

        def run():
            nll, n = loss_fn()
            (nll / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    paths = []
    model.eval()
    paths.append(("forward only (eval)", lambda: torch.no_grad()(lambda: model(input_ids=ids, attention_mask=mask).logits)()))
    model = configure_trainable(model, SftConfig(trainable=[-2, -1]))
    first = first_trainable_block(model)
    top_params = [p for p in model.parameters() if p.requires_grad]
    hidden = lower_hidden(model, first, ids, mask)
    logits_loss = lambda logits: token_nll_sum(logits, ids, mask)  # noqa: E731
    paths.append(("train last 2 blocks, full forward", step(lambda: logits_loss(model(input_ids=ids, attention_mask=mask).logits), top_params)))
    paths.append(("build frozen cache (once per review)", lambda: lower_hidden(model, first, ids, mask)))
    paths.append(("train last 2 blocks, cached, logits", step(lambda: logits_loss(top_forward(model, first, hidden, ids, mask).logits), top_params)))
    # What `rlhflab sft` runs: the loss from the hidden states, no (B, T, V) logits (models/lm_head.py)
    paths.append(("train last 2 blocks, cached (the stage)", step(lambda: SplitForward(model, first, nll=True)(ids, mask, hidden), top_params)))
    all_params = list(model.parameters())
    paths.append(("train all weights", step(lambda: logits_loss(model(input_ids=ids, attention_mask=mask).logits), all_params)))

    rows, factors = [], {}
    for name, fn in paths:
        model.requires_grad_(False)
        for p in all_params if name == "train all weights" else top_params:
            p.requires_grad_(True)
        model.train(name.startswith("train"))
        rows.append((name, timed(fn, args.steps, False), timed(fn, args.steps, True)))
        # GEMM passes per token of this path, read from what trains while it ran.
        if name.startswith("build"):
            n_blocks = len(pass_factors(model, train=False).blocks)
            factors[name] = PassFactors(tuple(int(i < first) for i in range(n_blocks)), 0)
        else:
            factors[name] = pass_factors(model, train=name.startswith("train"), skip_below=first if "cached" in name else None)

    print(f"model {args.model} loaded in {load_seconds:.1f} s; batch {args.batch} x {args.length} = {tokens} real tokens; "
          f"{torch.get_num_threads()} threads")
    print(f"{'path':<42} {'fp32 s/step':>11} {'tokens/s':>9} {'bf16 s/step':>11} {'tokens/s':>9}")
    for name, fp32, bf16 in rows:
        print(f"{name:<42} {fp32:11.3f} {tokens / fp32:9.0f} {bf16:11.3f} {tokens / bf16:9.0f}")
    print(f"peak memory: {peak_memory_mb(torch.device('cpu')):.0f} MB (process RSS)")

    # Against the GEMM rates at the model's shapes, one forward's tokens as rows, measured now.
    flops = flops_per_token(model.config)
    lengths = mask.sum(dim=1).tolist()
    ceilings = {dtype: gemm_ceiling(model.config, ids.numel(), dtype) for dtype in (torch.float32, torch.bfloat16)}
    print("\nagainst this host's GEMM rates, measured in this run (work counts real tokens, backward GEMMs at the "
          "forward rate; benchmarks/ceiling.py):")
    print(ceiling_header(flops, f"model {args.model}"))
    print(*ceiling_table(list(ceilings.values())), sep="\n")
    for name, fp32, bf16 in rows:
        blocks, head = work(flops, factors[name], tokens=tokens, head_tokens=tokens, attention_keys=causal_keys(lengths))
        print(f"{name} ({factors[name].describe()}):")
        for dtype, seconds in ((torch.float32, fp32), (torch.bfloat16, bf16)):
            ceiling = ceilings[dtype]
            phase = Phase(f"  {ceiling.label.split(' ')[0]}", tokens, seconds, blocks + head, ceiling.seconds(blocks, head), ceiling.label)
            print(phase_line(phase, width=8))


if __name__ == "__main__":
    main()
