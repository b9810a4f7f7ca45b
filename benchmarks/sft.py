"""SFT throughput on this machine: tokens/s of each training path and peak memory.

    python benchmarks/sft.py [--model smollm2-135m] [--batch 16] [--length 64] [--steps 5]

Prints figures; it is not a pass/fail test. Each path runs a warm-up step first.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlhflab.config import SftConfig
from rlhflab.data import balanced_sample, load_reviews
from rlhflab.models.blocks import first_trainable_block, lower_hidden, top_forward
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.ops.lm_loss import token_nll_sum
from rlhflab.runtime import peak_memory_mb
from rlhflab.stages.sft import configure_trainable, encode


def timed(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main() -> None:
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

    def step(logits_fn, params):
        optimizer = torch.optim.SGD(params, lr=0.0)  # lr 0: measure compute, keep weights fixed

        def run():
            nll, n = token_nll_sum(logits_fn(), ids, mask)
            (nll / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run

    rows = []
    model.eval()
    with torch.no_grad():
        rows.append(("forward only (eval)", timed(lambda: model(input_ids=ids, attention_mask=mask).logits, args.steps)))

    model = configure_trainable(model, SftConfig(trainable=[-2, -1]))
    first = first_trainable_block(model)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    rows.append(("train last 2 blocks, full forward", timed(step(lambda: model(input_ids=ids, attention_mask=mask).logits, params), args.steps)))
    rows.append(("build frozen cache (once per review)", timed(lambda: lower_hidden(model, first, ids, mask), args.steps)))
    hidden = lower_hidden(model, first, ids, mask)
    rows.append(("train last 2 blocks, cached lower blocks", timed(step(lambda: top_forward(model, first, hidden, mask), params), args.steps)))

    model.requires_grad_(True)
    params = list(model.parameters())
    rows.append(("train all weights", timed(step(lambda: model(input_ids=ids, attention_mask=mask).logits, params), args.steps)))

    print(f"model {args.model} loaded in {load_seconds:.1f} s; batch {args.batch} x {args.length} = {tokens} real tokens; "
          f"{torch.get_num_threads()} threads")
    print(f"{'path':<42} {'s/step':>8} {'tokens/s':>9}")
    for name, seconds in rows:
        print(f"{name:<42} {seconds:8.3f} {tokens / seconds:9.0f}")
    print(f"peak memory: {peak_memory_mb(torch.device('cpu')):.0f} MB (process RSS)")


if __name__ == "__main__":
    main()
