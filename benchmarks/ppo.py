"""RL-step throughput and memory on this machine, with what it takes to explain the figures.

    python benchmarks/ppo.py [--policy smollm2-135m] [--reward minilm-l6] [--batch 64] [--minibatch 16]
                             [--tokens 24] [--steps 3] [--precision auto|bf16|no] [--threads N]

Runs a few real PPO steps (sampling with the KV cache, scoring, reference log-probs, GAE and
clipped updates through the same code as `rlhflab ppo`) with the bundled SmolLM2 as policy and
an untrained MiniLM classifier as reward (throughput does not depend on what it has learned).
Prints the host (CPU flags, threads, oneDNN/MKL), the dtype path, each phase's time and tokens/s,
peak memory, and each phase as a fraction of the GEMM rate measured at the model's own shapes
and that phase's row count in the same run (benchmarks/ceiling.py); not a pass/fail test. Compare `--precision bf16` and `--precision no` on a
host to see whether its bf16 kernels help or hurt small-batch decoding.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ceiling import (Phase, causal_keys, ceiling_header, ceiling_table, encoder_keys, flops_per_token, gemm_ceiling,
                     pass_factors, phase_line, run_dtype, work)
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
from rlhflab.stages.rl import stop_token_ids


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
    timings = {"reward": 0.0, "rm_lengths": [], "rm_rows": 0}

    @torch.no_grad()
    def score(prompts, responses):
        started = time.perf_counter()
        batch = rm_tokenizer(responses, padding=True, truncation=True, max_length=256, return_tensors="pt")
        timings["rm_lengths"] = batch.attention_mask.sum(dim=1).tolist()
        timings["rm_rows"] = batch.attention_mask.numel()
        out = logits_to_reward(rm(**batch).logits, 0, "logit")
        timings["reward"] += time.perf_counter() - started
        return out

    reward = RewardFunction(args.reward, score)
    stop_ids = stop_token_ids(tokenizer, None)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=ppo.learning_rate)
    module = PolicyWithValue(policy)
    algorithm = OnlineRL(runtime=runtime, module=module, prepared=module, optimizer=optimizer,
                         cfg=ppo, seed=0, prompts=prompts, rollout=None, evaluate=None, on_step=None)
    rows, shapes = [], []
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
            shapes.append((sampled.prompt_mask.sum(dim=1).tolist(), exp.response_mask.sum(dim=1).tolist(),
                           sampled.sequences.shape[1], sampled.width, exp.lower is not None,
                           timings["rm_lengths"], timings["rm_rows"]))
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
    print_ceiling(args, runtime, policy, rm, ppo, shapes, tokens, (generate, forward, rewarding, train), per_step)


def print_ceiling(args, runtime, policy, rm, ppo, shapes, tokens, seconds, per_step) -> None:
    """Each phase's work (real tokens only) against GEMM rates measured now at its own row count."""
    steps, dtype, device = len(shapes), run_dtype(runtime.precision), runtime.device
    lm_config, rm_config = policy.lm.config, rm.config
    lm, rmf = flops_per_token(lm_config), flops_per_token(rm_config)
    mean = lambda values: max(1, round(sum(values) / steps))  # noqa: E731
    # Rows per GEMM: a decode step has one row per sequence; every other forward has its tokens.
    decode_rows, prefill_rows = args.batch, mean([args.batch * s[3] for s in shapes])
    score_rows, rm_rows = mean([args.batch * s[2] for s in shapes]), mean([s[6] for s in shapes])
    update_rows = mean([args.minibatch * s[2] for s in shapes])
    measured = {rows: gemm_ceiling(lm_config, rows, dtype, device) for rows in (decode_rows, prefill_rows, score_rows, update_rows)}
    rm_ceiling = gemm_ceiling(rm_config, rm_rows, dtype, device)

    skip = policy.first  # blocks below it are shared from sampling, not run again (None: all run)
    forward = pass_factors(policy.lm, train=False, skip_below=None)
    scoring = pass_factors(policy.lm, train=False, skip_below=skip)
    update = pass_factors(policy.lm, train=True, skip_below=skip)
    sample_w = prefill_w = score_w = rm_w = update_w = 0.0
    sample_s = score_s = rm_s = update_s = 0.0
    for prompt, response, total, width, cached, rm_lengths, _ in shapes:
        fed = [max(r - 1, 0) for r in response]  # the last sampled token is never fed back
        # Prefill: the real prompt tokens through every block, the lm_head once per row.
        pb, ph = work(lm, forward, tokens=sum(prompt), head_tokens=len(prompt), attention_keys=causal_keys(prompt))
        # Decode: each fed-back token through every block (keys: the prompt and the response so far) and the lm_head.
        keys = sum(f * p + f * (f + 1) / 2 for p, f in zip(prompt, fed))
        db, dh = work(lm, forward, tokens=sum(fed), head_tokens=sum(fed), attention_keys=keys)
        prefill_w += pb + ph
        sample_w += pb + ph + db + dh
        sample_s += measured[prefill_rows].seconds(pb, ph) + measured[decode_rows].seconds(db, dh)
        # Scoring: policy and reference, each the blocks from the first trainable one (all when nothing is
        # shared) over the real tokens, the lm_head at the response tokens.
        lengths = [p + r for p, r in zip(prompt, response)]
        factors = scoring if cached else forward
        sb, sh = work(lm, factors, tokens=sum(lengths), head_tokens=sum(response), attention_keys=causal_keys(lengths))
        score_w += 2 * (sb + sh)
        score_s += 2 * measured[score_rows].seconds(sb, sh)
        rb, _ = work(rmf, pass_factors(rm, train=False), tokens=sum(rm_lengths), head_tokens=0,
                     attention_keys=encoder_keys(rm_lengths))
        rm_w += rb
        rm_s += rm_ceiling.seconds(rb)
        factors = update if cached else pass_factors(policy.lm, train=True)
        ub, uh = work(lm, factors, tokens=sum(lengths), head_tokens=sum(response), attention_keys=causal_keys(lengths))
        update_w += ppo.ppo_epochs * (ub + uh)
        update_s += ppo.ppo_epochs * measured[update_rows].seconds(ub, uh)
    generate, scored, rewarding, train = seconds
    label = measured[decode_rows].label.split(" at ")[0]
    print(f"\nagainst this host's GEMM rates, measured in this run at each phase's rows ({label}; work counts real tokens "
          f"only, backward GEMMs at the forward rate; benchmarks/ceiling.py):")
    print(ceiling_header(lm, f"policy {args.policy}"))
    print(ceiling_header(rmf, f"reward {args.reward}"))
    print(*ceiling_table([*sorted(measured.values(), key=lambda c: c.rows)]), sep="\n")
    print(*[f"{line} [reward model]" for line in ceiling_table([rm_ceiling])], sep="\n")
    print(f"passes per token: scoring {(scoring if skip is not None else forward).describe()}; "
          f"update {(update if skip is not None else pass_factors(policy.lm, train=True)).describe()}")
    rm_note = "" if dtype == torch.float32 else " (fp32)"  # score() above runs it without autocast, as rewards.py does
    for phase in (
        Phase("sampling (KV cache)", tokens, generate, sample_w, sample_s,
              f"{label} at {decode_rows} rows decode, {prefill_rows} prefill", steps, per_step),
        Phase("policy + reference forward", tokens, scored, score_w, score_s, f"{label} at {score_rows} rows", steps, per_step),
        Phase("reward model" + rm_note, tokens, rewarding, rm_w, rm_s, f"{label} at {rm_rows} rows", steps, per_step),
        Phase(f"updates ({ppo.ppo_epochs} epochs)", tokens * ppo.ppo_epochs, train, update_w, update_s,
              f"{label} at {update_rows} rows", steps, per_step),
    ):
        print(phase_line(phase))
    whole = Phase("one step", tokens, sum(seconds), sample_w + score_w + rm_w + update_w,
                  sample_s + score_s + rm_s + update_s, "each phase at its own rows", steps, per_step)
    print(phase_line(whole))
    print(f"(sampling's work includes the prompts' prefill: {prefill_w / sample_w:.0%} of its FLOPs)")


if __name__ == "__main__":
    main()
