"""How far an RL run stands from the optimum its own β defines.

    python examples/optimum_gap.py runs/NAME/rl [--beta B] [--samples 64]

PPO, RLOO, ... maximise J = E[reward] − β · KL(π || π_ref). Whatever a policy is, its J is at most
J* = β log E_π_ref[exp(reward / β)], reached by π* ∝ π_ref exp(reward / β). This script draws
`--samples` responses of the run's starting model to each of the run's held-out prompts, scores
them with the run's reward (and its P(positive) where the reward model has one), estimates J*,
π*'s KL, reward and P(positive) (rlhflab.ops.kl.kl_regularised_optimum), and prints the J of every
held-out evaluation of the run beside it. β is the run's fixed rl.kl_coef; with the adaptive
controller, the β it ended at (or --beta).

Cost: samples × prompts responses of 24 tokens (64 × 64 on 2 CPU cores: about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rlhflab.config import load_config
from rlhflab.engine.runtime import Runtime
from rlhflab.eval.generate import generate
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.ops.kl import kl_regularised_optimum
from rlhflab.rewards import build_reward, probability_reward
from rlhflab.stages.common import load_splits
from rlhflab.stages.rl import prompt_sets, starting_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage_dir", type=Path, help="a finished RL stage folder, e.g. runs/default/rl")
    parser.add_argument("--beta", type=float, help="the KL coefficient (default: the run's, where it ended)")
    parser.add_argument("--samples", type=int, default=64, help="responses of the starting model per prompt (default 64)")
    args = parser.parse_args(argv)
    summary_file, config_file = args.stage_dir / "summary.json", args.stage_dir / "config.yaml"
    if not summary_file.is_file() or not config_file.is_file():
        print(f"error: {args.stage_dir} is not a finished RL stage folder (no summary.json and config.yaml)", file=sys.stderr)
        return 2
    summary = json.loads(summary_file.read_text())
    cfg = load_config(config_file)
    beta = args.beta if args.beta is not None else summary["final_beta"]
    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
    prompts = prompt_sets(cfg, load_splits(cfg), cfg.rl.eval_prompts).held_out
    model, tokenizer = load_causal_lm(starting_policy(cfg, cfg.rl.policy, "rl.policy"), steering=False)
    repeated = [p for p in prompts for _ in range(args.samples)]
    drawn = generate(model.to(runtime.device), tokenizer, repeated, max_new_tokens=cfg.generation.max_new_tokens,
                     seed=cfg.seed + 1, batch_size=256, autocast=runtime.autocast)
    responses = [g.response for g in drawn]
    default = str(Path(cfg.runs_dir) / cfg.name / "reward")
    shape = (len(prompts), args.samples)
    scores = build_reward(cfg.reward_fn, default_source=default, device=runtime.device)(repeated, responses).view(shape)
    prob_fn = probability_reward(cfg.reward_fn, default_source=default, device=runtime.device)
    optimum = kl_regularised_optimum(scores, beta)
    line = f"optimum at β {beta:.4g}: J* {optimum['objective']:.3f} (reward {optimum['value']:.3f}, KL {optimum['kl']:.2f} nats"
    if prob_fn is not None:
        weights = torch.softmax(scores.double() / beta, dim=1)
        line += f", P(positive) {float((weights * prob_fn(repeated, responses).view(shape).double()).sum(1).mean()):.3f}"
    print(line + f"); {args.samples} samples of each of {len(prompts)} held-out prompts")
    for point in summary["evaluations"]:
        p = f", P(positive) {point['positive_probability']:.3f}" if point.get("positive_probability") is not None else ""
        print(f"step {point['step']:>4}: J {point['score'] - beta * point['kl']:.3f} (reward {point['score']:.3f}, "
              f"KL {point['kl']:.2f}{p})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
