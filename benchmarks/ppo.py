"""PPO throughput and memory on this machine: rollout and training tokens/s, peak memory.

    python benchmarks/ppo.py [--policy smollm2-135m] [--reward minilm-l6] [--batch 32] [--tokens 24] [--steps 3]

Runs a few real PPO steps (sampling with the KV cache, scoring, reference log-probs, GAE and
PPO epochs) with the bundled SmolLM2 as policy and a MiniLM classifier as reward (untrained:
the throughput does not depend on what it has learned). Prints figures; not a pass/fail test.
Budget from issue 4: policy, reference, value head and reward model within 4 GB.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="smollm2-135m")
    parser.add_argument("--reward", default="minilm-l6")
    parser.add_argument("--trainable", default="-2,-1", help="block indices, 'all' or 'lora'")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--minibatch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    trainable = args.trainable if args.trainable in ("all", "lora") else [int(i) for i in args.trainable.split(",")]

    runtime = Runtime.create("auto", "auto")
    ppo = resolve_rl(PpoConfig(batch_size=args.batch, minibatch_size=args.minibatch, max_new_tokens=args.tokens))
    model, tokenizer = load_causal_lm(args.policy)
    tokenizer.padding_side = "left"
    prompts = make_prompts(balanced_sample(load_reviews("imdb"), 200, seed=0), 3, 5, seed=0)
    probe = tokenizer(prompts[:2], return_tensors="pt", padding=True)
    policy = build_policy(model, trainable, LoraConfig(), probe=(probe.input_ids, probe.attention_mask))
    rm, rm_tokenizer = load_reward_backbone(args.reward)
    rm.eval()

    @torch.no_grad()
    def score(prompts, responses):
        batch = rm_tokenizer(responses, padding=True, truncation=True, max_length=256, return_tensors="pt")
        return logits_to_reward(rm(**batch).logits, 0, "logit")

    reward = RewardFunction(args.reward, score)
    stop_ids = stop_token_ids(tokenizer, None)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=ppo.learning_rate)
    module = PolicyWithValue(policy)
    algorithm = OnlineRL(runtime=runtime, policy=policy, module=module, prepared=module, optimizer=optimizer,
                         tokenizer=tokenizer, cfg=ppo, seed=0, prompts=prompts, rollout=None, evaluate=None, on_step=None)
    rows = []
    for step in range(args.steps + 1):  # step 0 warms up
        batch_prompts = prompts[step * args.batch : (step + 1) * args.batch]
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
        tokens = int(exp.response_mask.sum())
        if step:
            rows.append((tokens, t1 - t0, t2 - t1, t3 - t2))
    tokens = sum(r[0] for r in rows)
    generate, scoring, train = (sum(r[i] for r in rows) for i in (1, 2, 3))
    print(f"policy {args.policy} (trainable {args.trainable}), reward {args.reward}, batch {args.batch} x {args.tokens} new tokens, "
          f"{args.steps} steps, {runtime.precision} autocast, {torch.get_num_threads()} threads")
    print(f"sampling (KV cache):                 {tokens / generate:8.0f} tokens/s")
    print(f"scoring (policy + reference + RM):   {tokens / scoring:8.0f} tokens/s")
    print(f"PPO updates ({ppo.ppo_epochs} epochs):              {tokens * ppo.ppo_epochs / train:8.0f} tokens/s")
    print(f"one PPO step:                        {(generate + scoring + train) / len(rows):8.1f} s")
    print(f"peak memory: {peak_memory_mb(runtime.device):.0f} MB (process RSS; budget 4096 MB)")


if __name__ == "__main__":
    main()
