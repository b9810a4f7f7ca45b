"""RL-step throughput and memory on this machine, with what it takes to explain the figures.

    python benchmarks/ppo.py [--policy smollm2-135m] [--reward minilm-l6] [--batch 64] [--minibatch 16]
                             [--tokens 24] [--steps 3] [--precision auto|bf16|no] [--threads N]

Runs a few real PPO steps (sampling with the KV cache, scoring, reference log-probs, GAE and
clipped updates through the same code as `rlhflab ppo`) with the bundled SmolLM2 as policy and
an untrained MiniLM classifier as reward (throughput does not depend on what it has learned).
Prints the host (CPU flags, threads, oneDNN/MKL), the dtype path, each phase's time and tokens/s,
and peak memory; not a pass/fail test. Compare `--precision bf16` and `--precision no` on a
host to see whether its bf16 kernels help or hurt small-batch decoding.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from rlhflab.algorithms.online import OnlineRL, gae_targets
from rlhflab.config import LoraConfig, PpoConfig, resolve_rl
from rlhflab.data import balanced_sample, load_reviews, make_prompts
from rlhflab.engine.runtime import Runtime, peak_memory_mb
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.models.policy import PolicyWithValue, build_policy
from rlhflab.models.reward_model import load_reward_backbone
from rlhflab.ops.kl import kl_per_token
from rlhflab.rewards import RewardFunction, logits_to_reward
from rlhflab.rollout import sample, score_rollout
from rlhflab.stages.ppo import stop_token_ids


def host() -> str:
    """CPU model and the flags that decide which bf16 kernels run; threads; math libraries."""
    flags, model = set(), platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (f"host: {model or platform.machine()}; flags {' '.join(wanted) or '-'}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads ({torch.get_num_interop_threads()} inter-op), "
            f"oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}, MKL {'on' if torch.backends.mkl.is_available() else 'off'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m")
    parser.add_argument("--reward", default="minilm-l6")
    parser.add_argument("--trainable", default="-2,-1", help="block indices, 'all' or 'lora'")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--minibatch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "no"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trainable = args.trainable if args.trainable in ("all", "lora") else [int(i) for i in args.trainable.split(",")]

    runtime = Runtime.create("auto", args.precision)
    ppo = resolve_rl(PpoConfig(batch_size=args.batch, minibatch_size=args.minibatch, max_new_tokens=args.tokens,
                               kl_horizon=max(1000, args.batch)))
    model, tokenizer = load_causal_lm(args.policy)
    tokenizer.padding_side = "left"
    prompts = make_prompts(balanced_sample(load_reviews("imdb"), 400, seed=0), 3, 5, seed=0)
    probe = tokenizer(prompts[:2], return_tensors="pt", padding=True)
    policy = build_policy(model, trainable, LoraConfig(), probe=(probe.input_ids, probe.attention_mask))
    rm, rm_tokenizer = load_reward_backbone(args.reward)
    rm.eval()
    timings = {"reward": 0.0}

    @torch.no_grad()
    def score(prompts, responses):
        started = time.perf_counter()
        batch = rm_tokenizer(responses, padding=True, truncation=True, max_length=256, return_tensors="pt")
        out = logits_to_reward(rm(**batch).logits, 0, "logit")
        timings["reward"] += time.perf_counter() - started
        return out

    reward = RewardFunction(args.reward, score)
    stop_ids = stop_token_ids(tokenizer, None)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=ppo.learning_rate)
    module = PolicyWithValue(policy)
    algorithm = OnlineRL(runtime=runtime, module=module, prepared=module, optimizer=optimizer,
                         cfg=ppo, seed=0, prompts=prompts, rollout=None, evaluate=None, on_step=None)
    rows = []
    for step in range(args.steps + 1):  # step 0 warms up (allocations, kernel choice)
        batch_prompts = prompts[step * args.batch : (step + 1) * args.batch]
        timings["reward"] = 0.0
        t0 = time.perf_counter()
        sampled = sample(policy, tokenizer, batch_prompts, max_new_tokens=args.tokens, temperature=1.0, top_k=0,
                         top_p=1.0, stop_ids=stop_ids, autocast=runtime.autocast)
        t1 = time.perf_counter()
        exp = score_rollout(policy, tokenizer, reward, batch_prompts, sampled, temperature=1.0, stop_ids=stop_ids,
                            non_stop_penalty=None, autocast=runtime.autocast)
        t2 = time.perf_counter()
        kl = kl_per_token(exp.logprobs, exp.ref_logprobs) * exp.response_mask
        algorithm.update(exp, gae_targets(exp, kl, 0.1, None, ppo, runtime), 0.1, step)
        t3 = time.perf_counter()
        if step:
            rows.append((int(exp.response_mask.sum()), t1 - t0, t2 - t1 - timings["reward"], timings["reward"], t3 - t2))
    tokens = sum(r[0] for r in rows)
    generate, forward, rewarding, train = (sum(r[i] for r in rows) for i in (1, 2, 3, 4))
    per_step = (generate + forward + rewarding + train) / len(rows)
    print(host())
    print(f"policy {args.policy} (trainable {args.trainable}, reference: {policy.reference.description}), reward {args.reward}")
    print(f"batch {args.batch} x {args.tokens} new tokens, minibatch {args.minibatch}, {args.steps} timed steps; "
          f"dtype path: {'bf16 autocast (fp32 weights)' if runtime.precision == 'bf16' else 'fp32'}")
    print(f"{'phase':<38}{'tokens/s':>10}{'s/step':>9}{'share':>8}")
    for name, seconds, factor in (("sampling (KV cache)", generate, 1), ("policy + reference forward", forward, 1),
                                  ("reward model", rewarding, 1), (f"updates ({ppo.ppo_epochs} epochs)", train, ppo.ppo_epochs)):
        print(f"{name:<38}{tokens * factor / seconds:>10.0f}{seconds / len(rows):>9.2f}{seconds / len(rows) / per_step:>8.0%}")
    print(f"{'one step':<38}{'':>10}{per_step:>9.2f}")
    print(f"peak memory: {peak_memory_mb(runtime.device):.0f} MB (process RSS; budget 4096 MB)")


if __name__ == "__main__":
    main()
