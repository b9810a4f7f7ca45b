"""How far an RL run stands from the optimum its own β defines.

    python examples/optimum_gap.py runs/NAME/rl [runs/OTHER/rl runs/NAME/dpo ...] [--beta B] [--samples 64]
                                   [--plot gap.png] [--per-prompt prompts.csv]

PPO, RLOO, ... maximise J = E[reward] − β · KL(π || π_ref). Whatever a policy is, its J is at most
J* = β log E_π_ref[exp(reward / β)], reached by π* ∝ π_ref exp(reward / β). This script draws
`--samples` responses of the run's starting model to each of the run's held-out prompts, scores
them with the run's reward (and its P(positive) where the reward model has one), estimates J*,
π*'s KL, reward and P(positive) (rlhflab.ops.kl.kl_regularised_optimum), and prints the J of every
held-out evaluation of the run beside it. β is the run's fixed rl.kl_coef; with the adaptive
controller, the β it ended at (or --beta). Further runs from the same starting model, seed, held-out
prompts and reward (another seed of the config draws other prompts: refused) reuse the samples; --plot
draws each run's J against its step, its J* dashed; --per-prompt writes each prompt's optimum (KL, reward) beside
each run's last answer to it, prints their means over the harder and the easier half of the prompts and
draws them by quarter of the prompts (the .csv's name with .png).

A DPO stage folder (runs/NAME/dpo) is read the same way, one point a round: its β is dpo.beta, the KL
coefficient whose optimum distilled DPO (dpo.loss: distill) regresses onto, in the reward's units.

Cost: samples × prompts responses of 24 tokens (64 × 64 on 2 CPU cores: about 3 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from rlhflab.config import load_config
from rlhflab.engine.runtime import Runtime
from rlhflab.eval.generate import sample_and_score
from rlhflab.io import atomic_open
from rlhflab.models.causal_lm import load_causal_lm
from rlhflab.ops.kl import kl_regularised_optimum, tilt
from rlhflab.rewards import build_reward, probability_reward
from rlhflab.stages.common import load_splits
from rlhflab.stages.rl import prompt_sets, starting_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage_dirs", type=Path, nargs="+", help="finished RL or DPO stage folders, e.g. runs/default/rl")
    parser.add_argument("--beta", type=float, help="the KL coefficient (default: each run's, where it ended)")
    parser.add_argument("--samples", type=int, default=64, help="responses of the starting model per prompt (default 64)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="draw J against the step for every run, J* dashed")
    parser.add_argument("--per-prompt", type=Path, metavar="CSV",
                        help="write each prompt's optimum (KL, reward) beside each run's last held-out answer")
    args = parser.parse_args(argv)
    runs = []
    for folder in args.stage_dirs:
        if folder.name not in STAGES or not (folder / "summary.json").is_file() or not (folder / "config.yaml").is_file():
            print(f"error: {folder} is not a finished RL or DPO stage folder (rl/ or dpo/ with summary.json and "
                  f"config.yaml)", file=sys.stderr)
            return 2
        cfg = load_config(folder / "config.yaml")
        runs.append((folder, cfg, stage_points(folder, cfg, json.loads((folder / "summary.json").read_text()))))
    cfg = runs[0][1]
    # What the samples depend on: the held-out prompts themselves (a seed, or data.eval_prompts), not how they were set.
    keys = [(starting(folder, c), c.seed, c.reward_fn,
             prompt_sets(c, load_splits(c), getattr(c, folder.name).eval_prompts).held_out) for folder, c, _ in runs]
    prompts = keys[0][3]
    if any(key != keys[0] for key in keys[1:]):
        print("error: the runs differ in starting model, seed, held-out prompts or reward_fn; give one at a time",
              file=sys.stderr)
        return 2
    runtime = Runtime.create(cfg.runtime.device, cfg.runtime.mixed_precision)
    model, tokenizer = load_causal_lm(keys[0][0], steering=False)
    default = str(Path(cfg.runs_dir) / cfg.name / "reward")
    score_fn = build_reward(cfg.reward_fn, default_source=default, device=runtime.device)
    _, drawn, scores = sample_and_score(model.to(runtime.device), tokenizer, prompts, score_fn, k=args.samples,
                                        max_new_tokens=cfg.generation.max_new_tokens, temperature=1.0, seed=cfg.seed + 1,
                                        batch_size=256, runtime=runtime)
    prob_fn = probability_reward(cfg.reward_fn, default_source=default, device=runtime.device)
    probs = (prob_fn([g.prompt for g in drawn], [g.response for g in drawn]).view(scores.shape).double()
             if prob_fn is not None else None)
    curves = {}
    for folder, _, (run_beta, evaluations) in runs:
        beta = args.beta if args.beta is not None else run_beta
        optimum = kl_regularised_optimum(scores, beta)
        line = f"{folder}: optimum at β {beta:.4g}: J* {optimum['objective']:.3f} (reward {optimum['value']:.3f}, KL {optimum['kl']:.2f} nats"
        if probs is not None:
            line += f", P(positive) {float((tilt(scores.double(), beta)[0] * probs).sum(1).mean()):.3f}"
        print(line + f"); {args.samples} samples of each of {len(prompts)} held-out prompts")
        steps, objectives = [], []
        for point in evaluations:
            p = f", P(positive) {point['positive_probability']:.3f}" if point.get("positive_probability") is not None else ""
            steps.append(point["step"])
            objectives.append(point["score"] - beta * point["kl"])
            print(f"step {point['step']:>4}: J {objectives[-1]:.3f} (reward {point['score']:.3f}, KL {point['kl']:.2f}{p})")
        curves[str(folder)] = (steps, objectives, optimum["objective"], beta)
    if args.plot:
        print(f"wrote {plot(curves, args.plot)}")
    if args.per_prompt:
        print(f"wrote {per_prompt(runs, prompts, scores, probs, args.beta, args.per_prompt)}")
    return 0


STAGES = ("rl", "dpo")


def starting(folder: Path, cfg) -> str:
    """The model the stage in `folder` started from (and measured its KL to)."""
    return starting_policy(cfg, getattr(cfg, folder.name).policy, f"{folder.name}.policy")


def stage_points(folder: Path, cfg, summary: dict) -> tuple[float, list[dict]]:
    """(β, held-out evaluations, each with a `step`): an RL stage's β where it ended and its evaluations
    by step; a DPO stage's dpo.beta and its rounds' evaluations, numbered by round (the start is round 0)."""
    if folder.name == "rl":
        return summary["final_beta"], summary["evaluations"]
    return cfg.dpo.beta, [{**summary["start"], "step": 0}] + [{**r["end"], "step": r["round"]} for r in summary["by_round"]]


def last_answers(folder: Path) -> dict[str, dict]:
    """The stage's last held-out answers by prompt: eval_after.json (RL) or eval_after.jsonl (DPO's last round)."""
    path = folder / "eval_after.json"
    rows = (json.loads(path.read_text()) if path.is_file() else
            [json.loads(line) for line in (folder / "eval_after.jsonl").read_text().splitlines() if line.strip()])
    return {row["prompt"]: row for row in rows}


def per_prompt(runs: list, prompts: list[str], scores: torch.Tensor, probs: torch.Tensor | None, beta: float | None,
               path: Path) -> Path:
    """One row a held-out prompt: the starting model's mean reward (and P(positive)), the optimum's KL
    and reward (and P) at the first run's β (its samples reweighted by softmax(score / β)), and the same
    of each run's last held-out answer (eval_after.json: one sample a prompt). Prints the means over the
    harder and the easier half of the prompts (by the starting model's reward): where each spends its KL."""
    beta = beta if beta is not None else runs[0][2][0]
    weights, kl = tilt(scores.double(), beta)
    columns = {"reward": scores.double()} | ({"p": probs} if probs is not None else {})
    table = {"prompt": prompts} | {f"start:{k}": v.mean(1).tolist() for k, v in columns.items()}
    table["optimum:kl"] = kl.tolist()
    table |= {f"optimum:{k}": (weights * v).sum(1).tolist() for k, v in columns.items()}
    for folder, _, _ in runs:
        answers = last_answers(folder)
        for key, field in {"kl": "kl", "reward": "score", "p": "positive_probability"}.items():
            if key == "kl" or key in columns:
                table[f"{folder}:{key}"] = [answers[p][field] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: table["start:reward"][i])  # hardest first
    halves = {"harder": order[: len(order) // 2], "easier": order[len(order) // 2 :]}
    for name in ["optimum"] + [str(folder) for folder, _, _ in runs]:
        print(f"{name}: " + "; ".join(f"{half} half " + ", ".join(
            f"{key} {sum(table[f'{name}:{key}'][i] for i in rows) / len(rows):.3f}" for key in ["kl", *columns])
            for half, rows in halves.items()))
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(table)
        writer.writerows(zip(*table.values()))
    print(f"wrote {plot_quartiles(table, order, [str(folder) for folder, _, _ in runs], path.with_suffix('.png'))}")
    return path


def plot_quartiles(table: dict, order: list[int], runs: list[str], path: Path) -> Path:
    """KL and reward (P(positive) where there is one) against the quarter of the prompts in `order`
    (row indices by the starting model's reward, hardest first): the optimum and each run, a line
    through the quarters' means."""
    from matplotlib.figure import Figure

    from rlhflab.eval.plots import PALETTE, save_figure

    quarters = [q for q in (order[i * len(order) // 4 : (i + 1) * len(order) // 4] for i in range(4)) if q]
    value = "p" if "start:p" in table else "reward"
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for colour, name in zip(PALETTE, ["optimum", *runs]):
        for ax, key in zip(axes, ["kl", value]):
            means = [sum(table[f"{name}:{key}"][i] for i in q) / len(q) for q in quarters]
            ax.plot(range(1, len(quarters) + 1), means, marker="o", color=colour, label=name,
                    linestyle="--" if name == "optimum" else "-")
    axes[0].set_ylabel("KL to the reference (nats)")
    axes[1].set_ylabel("P(positive)" if value == "p" else "reward")
    for ax in axes:
        ax.set_xticks(range(1, len(quarters) + 1))
    fig.supxlabel("quarter of the held-out prompts by the starting model's reward (1: hardest)", fontsize=10)
    axes[1].legend(fontsize=7)
    fig.suptitle("Where each spends its KL: the optimum at β, dashed, against each run's last answers")
    return save_figure(fig, path)


def plot(curves: dict, path: Path) -> Path:
    """J against the step for each run (name -> (steps, J, J*, β)), each run's J* a dashed line of its colour."""
    from matplotlib.figure import Figure

    from rlhflab.eval.plots import PALETTE, save_figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for colour, (name, (steps, objectives, best, beta)) in zip(PALETTE, curves.items()):
        ax.plot(steps, objectives, marker="o", color=colour, label=f"{name} (β {beta:.3g})")
        ax.axhline(best, color=colour, linestyle="--", linewidth=1)
    ax.set_xlabel("RL step, or DPO round")
    ax.set_ylabel("J = reward − β·KL (held-out)")
    ax.set_title("Each run's regularised objective; dashed: the optimum J* at its β")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
