"""`rlhflab overopt`: when did RL start hacking the reward? (Gao et al. 2022)

The RL run's starting model (the reference) and each of its per-epoch snapshots
(checkpoints/epoch-N) and final model answer the same held-out prompts. For each: the proxy
reward's and every gold judge's mean score and share of positive responses (evaluate.gold,
calibrated on labelled texts), KL to the reference and its square root, perplexity under the reference,
the separator ratio, distinct-1/2, and a few samples. A stated rule names the first
checkpoint that over-optimises, or says none did up to the largest KL seen
(rlhflab/eval/overoptimisation.py). Writes summary.json, samples.jsonl and figures/*.png.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

from tqdm.auto import tqdm

from rlhflab.config import Config, check_overopt, check_study_judges
from rlhflab.engine.runtime import Runtime, run_facts
from rlhflab.errors import RlhfLabError
from rlhflab.eval.generate import generate
from rlhflab.eval.overoptimisation import gold_peak, onset, separator_ratio
from rlhflab.io import RunDir, write_jsonl
from rlhflab.models.causal_lm import load_causal_lm, load_tokenizer
from rlhflab.stages.common import on_main_process, open_run_dir
from rlhflab.stages.evaluate import eval_prompts, gold_judges, model_metrics
from rlhflab.stages.registry import STAGES, stage_dir
from rlhflab.summaries import OveroptSummary


def rl_run(cfg: Config) -> Path:
    """The RL stage folder the study reads: overopt.run, else this run's rl."""
    return Path(cfg.overopt.run).expanduser() if cfg.overopt.run else stage_dir(Path(cfg.runs_dir) / cfg.name, "rl")


def study_models(rl: Path) -> dict[str, str]:
    """name -> model: the RL run's starting model ("start"), its snapshots in epoch order, its final model."""
    if not (rl / "summary.json").exists():
        raise RlhfLabError(f"{rl} is not a finished RL run (no summary.json). Run `rlhflab rl` to the end first, "
                           f"or set overopt.run to an RL stage folder.")
    summary = STAGES["rl"].read_summary(rl)
    snapshots = sorted((p for p in (rl / "checkpoints").glob("epoch-*") if re.fullmatch(r"epoch-\d+", p.name)),
                       key=lambda p: int(p.name.split("-")[1]))
    if not snapshots:
        raise RlhfLabError(f"{rl}/checkpoints holds no epoch-N snapshots, so there is nothing to study between the start "
                           f"and the end. Rerun RL with rl.snapshot_each_epoch=true and at least one pass over the prompts.")
    start = summary.policy
    if start is None:
        raise RlhfLabError(f"{rl}/summary.json names no policy (the model RL started from), so the study has no start. "
                           f"Set overopt.run to an RL stage folder written by rlhflab rl.")
    if not Path(start).expanduser().exists() and (rl.parent / Path(start).name).exists():
        start = str(rl.parent / Path(start).name)  # this run's sft stage, after the runs folder moved
    return {"start": start, **{p.name: str(p) for p in snapshots}, "final": str(rl)}


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """The study of `rl_run(cfg)`, written to runs/<name>/overopt (on the main process)."""
    final = Path(cfg.runs_dir) / cfg.name / "overopt"
    return on_main_process(runtime, lambda: _run(cfg, runtime, overwrite or resume, progress), final)


def _run(cfg: Config, runtime: Runtime, overwrite: bool, progress: bool) -> RunDir:
    started = time.perf_counter()
    ov = cfg.overopt
    check_overopt(ov)
    check_study_judges(cfg.evaluate)  # also when the stage runs on its own, outside a pipeline's stages
    runtime.seed(cfg.seed, per_rank=False)
    models = study_models(rl_run(cfg))
    judges, calibration = gold_judges(cfg, runtime)
    prompts = eval_prompts(cfg, load_tokenizer(models["start"]))[0][: ov.prompts]
    run_dir = open_run_dir(cfg, "overopt", resume=False, overwrite=overwrite)
    max_new = ov.max_new_tokens if ov.max_new_tokens is not None else cfg.generation.max_new_tokens
    reference, points, rows = None, [], []
    bar = tqdm(total=len(models), desc="overopt", disable=not progress, dynamic_ncols=True)
    for name, source in models.items():
        # Each point is the RL policy as trained: from its start's plain LM, unsteered even when that is an ILQL run.
        model, tokenizer = load_causal_lm(source, steering=False)
        model.to(runtime.device).eval()
        reference = reference or (model, tokenizer)
        generations = generate(model, tokenizer, prompts, max_new_tokens=max_new, temperature=ov.temperature,
                               seed=cfg.seed, batch_size=cfg.evaluate.batch_size, autocast=runtime.autocast)
        responses = [g.response for g in generations]
        metrics = model_metrics(model, reference[0], generations, tokenizer, reference[1], cfg.evaluate, runtime)
        scores = {judge: fn(prompts, responses).tolist() for judge, fn in judges.items()}
        rates = {judge: judges[judge].positive_rate(values) for judge, values in scores.items()}
        means = {judge: sum(values) / len(values) for judge, values in scores.items()}
        points.append({"name": name, "source": source, "kl": metrics["kl_to_reference"],
                       "sqrt_kl": math.sqrt(max(metrics["kl_to_reference"], 0.0)),
                       "proxy": means["proxy"], "gold": {j: m for j, m in means.items() if j != "proxy"},
                       "positive_rates": rates,
                       "separator_ratio": separator_ratio(responses, ov.separators),
                       "distinct_1": metrics["distinct_1"], "distinct_2": metrics["distinct_2"],
                       "perplexity_under_reference": metrics["perplexity_under_reference"],
                       "mean_length": metrics["mean_length"]})
        rows += [{"model": name, "prompt_id": i, "prompt": prompts[i], "response": r,
                  "scores": {j: v[i] for j, v in scores.items()}} for i, r in enumerate(responses)]
        bar.update(1)
        bar.set_postfix(model=name, kl=f"{metrics['kl_to_reference']:.2f}", proxy=f"{rates['proxy']:.2f}")
    bar.close()
    write_jsonl(run_dir.path / "samples.jsonl", rows)
    from rlhflab.eval.sections.overopt import overopt_figures  # matplotlib only now

    figures = overopt_figures(points, run_dir.path / "figures")
    return run_dir.finish(OveroptSummary(
        run=str(rl_run(cfg)), prompts=len(prompts), max_new_tokens=max_new, separators=ov.separators,
        judges=calibration, points=points,
        verdict=onset(points, gold_drop=ov.gold_drop, separator_drop=ov.separator_drop, diversity_drop=ov.diversity_drop),
        gold_peak=gold_peak(points), figures={path.stem: str(path.relative_to(run_dir.path.resolve())) for path in figures},
        **run_facts(runtime, started)))


def format_summary(summary: OveroptSummary) -> str:
    judges = list(summary.judges)
    lines = [f"{summary.prompts} held-out prompts; each judge's mean score (accuracy on labelled texts: "
             + ", ".join(f"{j} {summary.judges[j]['accuracy']:.3f}" for j in judges) + ")",
             f"{'checkpoint':<12}{'KL':>7}{'√KL':>6}" + "".join(f"{j[:12]:>13}" for j in judges)
             + f"{'separators':>11}{'dist-2':>8}{'ppl':>8}"]
    for p in summary.points:
        rates = {"proxy": p["proxy"], **p["gold"]}
        lines.append(f"{p['name']:<12}{p['kl']:7.2f}{p['sqrt_kl']:6.2f}" + "".join(f"{rates[j]:13.3f}" for j in judges)
                     + f"{p['separator_ratio']:11.3f}{p['distinct_2']:8.3f}{p['perplexity_under_reference']:8.1f}")
    verdict = summary.verdict
    lines.append(f"verdict: {verdict['onset'] + ' (KL ' + format(verdict['kl'], '.2f') + '): ' if verdict['onset'] else ''}"
                 f"{verdict['reason']}")
    lines.append(f"rule: {verdict['rule']}")
    return "\n".join(lines)
