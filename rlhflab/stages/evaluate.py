"""`rlhflab evaluate`: the same held-out prompts answered by each model, scored, compared.

For every model (SFT and PPO by default, or any `name: model` mapping) on the test split's
prompts: reward distribution, KL against the first (reference) model, perplexity of the
generated text under it, distinct-1/2, length, a breakdown by the prompt's own sentiment,
and samples side by side. Writes summary.json, samples.jsonl and figures/*.png.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from rlhflab.config import Config, check_evaluate
from rlhflab.data import make_prompts
from rlhflab.errors import RlhfLabError
from rlhflab.eval.gold import Judge, build_gold, build_judge, calibrate, gain_check
from rlhflab.eval.generate import generate, response_logprobs
from rlhflab.eval.generation_metrics import (
    SENTIMENTS,
    distinct_n,
    distribution,
    kl_and_perplexity,
    probability_stats,
    reward_shift,
    sentiment_of,
)
from rlhflab.io import RunDir, write_jsonl
from rlhflab.models.causal_lm import count_parameters, load_causal_lm, load_tokenizer
from rlhflab.ops.kl import kl_optimal_values
from rlhflab.rewards import build_reward, probability_reward
from rlhflab.engine.runtime import Runtime, run_facts
from rlhflab.stages.common import load_splits, on_main_process, open_run_dir
from rlhflab.summaries import EvaluateSummary

OPTIMUM_BUDGETS = (0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)  # nats: the KLs the frontier's methods land at


def model_sources(cfg: Config) -> dict[str, str]:
    """name -> model; by default this run's SFT (or pretrained, without SFT) model and those its rl, dpo
    and ilql stages tuned (RL when there is none of them), which must exist."""
    from rlhflab.stages.registry import policy_stage, stage_dir, tuned_stages

    if cfg.evaluate.models:
        return dict(cfg.evaluate.models)
    runs = Path(cfg.runs_dir) / cfg.name
    sources = {name: str(stage_dir(runs, name)) for name in (policy_stage(cfg), *tuned_stages(cfg))}
    for stage, path in sources.items():
        if not (Path(path) / "model").exists():
            raise RlhfLabError(f"{path}/model does not exist. Run `rlhflab {stage}` first, or name the models to "
                               f"compare with evaluate.models.<name>=<model or run directory>.")
    return sources


def eval_prompts(cfg: Config, tokenizer=None) -> tuple[list[str], list[int | None], dict[str, int]]:
    """Prompts from the test split (validation or train when it is empty) and their reviews' labels;
    at most data.prompt_max_tokens tokens of `tokenizer` (the reference model's). A data.eval_prompts
    file replaces them (its prompts have no review label); the third item counts what was left out."""
    if cfg.data.eval_prompts:
        from rlhflab.data.prompts import load_prompts

        prompts, _, blank = load_prompts(cfg.data.eval_prompts)
        prompts = prompts[: cfg.evaluate.prompts]
        return prompts, [None] * len(prompts), {"prompts left blank in data.eval_prompts": blank} if blank else {}
    splits = load_splits(cfg)
    reviews = splits.test or splits.validation or splits.train
    # A seed of its own, so these prompts differ from the ones PPO trained and evaluated on.
    prompts = make_prompts(reviews, cfg.data.prompt_min_words, cfg.data.prompt_max_words, cfg.seed + 2,
                           max_tokens=cfg.data.prompt_max_tokens, tokenizer=tokenizer)
    n = min(cfg.evaluate.prompts, len(prompts))
    if n < 1:
        raise RlhfLabError(f"evaluate.prompts must be at least 1, got {cfg.evaluate.prompts}.")
    return prompts[:n], [r.label for r in reviews[:n]], splits.left_out


def model_size(model) -> tuple[int, float]:
    """(parameters, megabytes) as the weights sit in memory."""
    _, total = count_parameters(model)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return total, size / 2**20


def run(cfg: Config, *, runtime: Runtime, resume: bool = False, overwrite: bool = False, progress: bool = True) -> RunDir:
    """Answer held-out prompts with every model of evaluate.models; write runs/<name>/evaluate.

    Under several processes the main one evaluates (generation for a report is small next to
    training) and the others wait for it."""
    final = Path(cfg.runs_dir) / cfg.name / "evaluate"
    return on_main_process(runtime, lambda: _run(cfg, runtime, overwrite or resume, progress), final)


def _run(cfg: Config, runtime: Runtime, overwrite: bool, progress: bool) -> RunDir:
    started = time.perf_counter()
    ev = cfg.evaluate
    check_evaluate(ev)
    runtime.seed(cfg.seed, per_rank=False)
    sources = model_sources(cfg)
    prompts, labels, left_out = eval_prompts(cfg, load_tokenizer(next(iter(sources.values()))))
    runs = Path(cfg.runs_dir) / cfg.name
    score_fn = build_reward(cfg.reward_fn, default_source=str(runs / "reward"), device=runtime.device)
    prob_fn = probability_reward(cfg.reward_fn, default_source=str(runs / "reward"), device=runtime.device)
    judges, calibration = gold_judges(cfg, runtime)
    # evaluate has no resumable state: a rerun starts again (resume is accepted for the pipeline's sake).
    run_dir = open_run_dir(cfg, "evaluate", resume=False, overwrite=overwrite)
    max_new = ev.max_new_tokens if ev.max_new_tokens is not None else cfg.generation.max_new_tokens
    sentiments = _prompt_sentiments(prompts, labels, prob_fn)
    rows: list[dict] = []
    facts: dict[str, dict] = {}  # name -> what its own pass measured (size, scores)
    reference_name = next(iter(sources))
    reference_tokenizer = None
    answered: dict[str, tuple[list, list]] = {}  # name -> (generations, their log-probs under the model)
    best_of = None
    bar = tqdm(total=len(sources), desc="evaluate", disable=not progress, dynamic_ncols=True)
    # One language model in memory at a time (each is 0.5 GB in fp32 for SmolLM2-135M, with its
    # bf16 autocast copies on top): every model answers and scores its own text in turn, and the
    # reference model is loaded again at the end for the log-probs of the others' text.
    for name, source in sources.items():
        model, tokenizer = load_causal_lm(source)
        model.to(runtime.device)
        reference_tokenizer = reference_tokenizer or tokenizer
        _check_same_vocab(tokenizer, reference_tokenizer, name, reference_name)
        generations = generate(model, tokenizer, prompts, max_new_tokens=max_new, temperature=ev.temperature,
                               seed=cfg.seed, batch_size=ev.batch_size, autocast=runtime.autocast)
        answered[name] = (generations, response_logprobs(model, generations, pad_token_id=tokenizer.pad_token_id,
                                                         batch_size=ev.batch_size, autocast=runtime.autocast))
        parameters, size_mb = model_size(model)
        if name == reference_name and ev.best_of:
            best_of = best_of_n(model, tokenizer, prompts[: ev.best_of_prompts], score_fn, prob_fn, judges, ev,
                                max_new_tokens=max_new, seed=cfg.seed, runtime=runtime)
            best_of["model"] = reference_name
        del model  # before the next one loads
        scored, model_rows = _score_responses(name, source, generations, prompts, sentiments, score_fn, prob_fn, judges)
        facts[name] = {"parameters": parameters, "size_mb": size_mb, **scored}
        rows += model_rows
        bar.update(1)
        bar.set_postfix(model=name, score=f"{facts[name]['score']['mean']:.2f}")
    bar.close()
    metrics = reference_metrics(sources[reference_name], answered, reference_name, ev, runtime)
    models = {name: {"source": source, "parameters": facts[name].pop("parameters"), "size_mb": facts[name].pop("size_mb"),
                     **metrics[name], **facts[name]} for name, source in sources.items()}
    first = [r["score"] for r in rows if r["model"] == reference_name]
    comparison = {name: {"vs": reference_name, **reward_shift(first, [r["score"] for r in rows if r["model"] == name])}
                  for name in list(sources)[1:]}
    write_jsonl(run_dir.path / "samples.jsonl", rows)
    summary = EvaluateSummary(
        prompts=len(prompts), reward=score_fn.description, reference=reference_name, max_new_tokens=max_new,
        temperature=ev.temperature, models=models, comparison=comparison, left_out=left_out,
        # prompts that crowd out the responses in the reward model's token budget
        reward_reads=score_fn.reads.summary() if score_fn.reads else None,
        judges=calibration if judges else None, gold_agreement=gold_agreement(models, reference_name) if judges else None,
        best_of=best_of or None)
    from rlhflab.eval.sections.evaluate import evaluation_figures  # matplotlib only now

    figures = evaluation_figures(rows, summary, run_dir.path / "figures")
    return run_dir.finish(replace(
        summary, figures={path.stem: str(path.relative_to(run_dir.path.resolve())) for path in figures},
        **run_facts(runtime, started)))


def _score_responses(name: str, source: str, generations, prompts: list[str], sentiments: list[str], score_fn, prob_fn,
                     judges: dict[str, Judge]) -> tuple[dict, list[dict]]:
    """(a model's scores: their distribution, P(positive), by prompt sentiment, the gold judges' means;
    one samples.jsonl row per response) for its `generations` of `prompts`."""
    responses = [g.response for g in generations]
    scores = score_fn(prompts, responses).tolist()
    probs = prob_fn(prompts, responses).tolist() if prob_fn is not None else None
    # The proxy judge is the reward model's probability, scored just above where it has one.
    gold = {judge: probs if judge == "proxy" and probs is not None and fn.reward.output == "probability"
            else fn(prompts, responses).tolist()
            for judge, fn in judges.items()}
    scored = {"score": distribution(scores),
              "positive_probability": probability_stats(probs) if probs is not None else None,
              "by_sentiment": _by_sentiment(sentiments, scores, probs),
              **({"judges": {judge: {"mean": sum(v) / len(v), "positive_rate": judges[judge].positive_rate(v)}
                             for judge, v in gold.items()}} if judges else {})}
    rows = [{"prompt_id": i, "prompt": prompts[i], "sentiment": sentiments[i], "model": name, "source": source,
             "response": response, "score": scores[i], "positive_probability": probs[i] if probs else None,
             **({"judges": {judge: v[i] for judge, v in gold.items()}} if judges else {})}
            for i, response in enumerate(responses)]
    return scored, rows


def best_of_n(model, tokenizer, prompts: list[str], score_fn, prob_fn, judges: dict[str, Judge], ev, *, max_new_tokens: int,
              seed: int, runtime: Runtime) -> dict:
    """Best-of-n baselines (Stiennon et al. 2020): max(ev.best_of) samples per prompt from `model`;
    for each n, the best of the first n by the proxy reward. Each row: the mean reward and
    P(positive) of the kept responses, each gold judge's positive rate on them, and the KL of the
    best-of-n policy to the model as the analytic bound log n − (n−1)/n nats. "optimum": for each
    KL budget of OPTIMUM_BUDGETS that the samples can measure, the most reward and P(positive) any
    policy reaches within it, estimated from the same samples (ops.kl.kl_optimal_values)."""
    from rlhflab.eval.side_by_side import best_of_n_kl, select_best

    drawn = max(ev.best_of)
    repeated = [p for p in prompts for _ in range(drawn)]
    responses = [g.response for g in generate(model, tokenizer, repeated, max_new_tokens=max_new_tokens,
                                              temperature=ev.temperature, seed=seed + 1, batch_size=ev.batch_size,
                                              autocast=runtime.autocast)]
    scores = score_fn(repeated, responses).view(len(prompts), drawn)
    probs = prob_fn(repeated, responses).view(len(prompts), drawn) if prob_fn is not None else None
    rows = []
    for n in sorted({1, *ev.best_of}):  # n = 1: the model alone on the same prompts, the baseline
        kept = [i * drawn + k % n for i, k in enumerate(select_best(scores[:, :n].flatten().tolist(), n))]  # flat rows
        row = {"n": n, "score": float(scores.flatten()[kept].mean()), "kl_bound": best_of_n_kl(n),
               "positive_probability": float(probs.flatten()[kept].mean()) if probs is not None else None}
        if judges:
            chosen = [responses[k] for k in kept]
            row["judges"] = {name: judge.positive_rate(judge(prompts, chosen).tolist())
                             for name, judge in judges.items() if name != "proxy"}
        rows.append(row)
    # What no policy can beat at each KL budget (a line on the frontier figure): the samples reweighted
    # by exp(value / λ), the optimum of KL-regularised RL, for the reward and for P(positive) alike.
    budgets = OPTIMUM_BUDGETS if drawn >= 2 else ()  # one sample a prompt: nothing to choose between
    most = {"score": kl_optimal_values(scores, budgets) if budgets else [],
            "positive_probability": kl_optimal_values(probs, budgets) if budgets and probs is not None else [None] * len(budgets)}
    optimum = [{"kl": budget, "score": most["score"][i], "positive_probability": most["positive_probability"][i]}
               for i, budget in enumerate(budgets) if most["score"][i] is not None]
    return {"prompts": len(prompts), "drawn": drawn, "rows": rows, "optimum": optimum}


def gold_judges(cfg: Config, runtime: Runtime) -> tuple[dict[str, Judge], dict[str, dict]]:
    """The training reward as the judge "proxy" and the judges of evaluate.gold, each with its
    accuracy on held-out labelled texts; ({}, {}) when evaluate.gold is empty."""
    if not cfg.evaluate.gold:
        return {}, {}
    default = str(Path(cfg.runs_dir) / cfg.name / "reward")
    judges = {"proxy": build_judge("proxy", cfg.reward_fn.source, cfg.reward_fn, device=runtime.device, default_source=default)}
    judges |= build_gold(cfg.evaluate.gold, cfg.reward_fn, device=runtime.device)
    texts, labels, prompts, where = calibration_set(cfg)
    return judges, {name: {"source": judge.source, "reward": judge.reward.description, "calibrated_on": where,
                           **calibrate(judge, texts, labels, prompts)} for name, judge in judges.items()}


def calibration_set(cfg: Config) -> tuple[list[str], list[int], list[str], str]:
    """(texts, labels, prompts, description): up to evaluate.gold_reviews labelled held-out texts,
    balanced by label where both labels are there; from evaluate.gold_data or this run's test split."""
    import random

    from rlhflab.data import load_reviews

    ev = cfg.evaluate
    if ev.gold_data:
        try:
            reviews, where = load_reviews(ev.gold_data), ev.gold_data
        except RlhfLabError as exc:  # the reader speaks of data.source; this is evaluate.gold_data
            raise RlhfLabError(f"evaluate.gold_data={ev.gold_data}: {exc}") from exc
    else:
        splits = load_splits(cfg)
        reviews, where = (splits.test, "the test split") if splits.test else (splits.validation, "the validation split")
    by_label = {label: [r for r in reviews if r.label == label] for label in (0, 1)}
    rng = random.Random(cfg.seed)
    picked = [r for members in by_label.values() for r in rng.sample(members, min(len(members), ev.gold_reviews // 2))]
    if not by_label[0] or not by_label[1]:
        raise RlhfLabError(f"Calibrating the gold judges needs positive and negative labelled texts; {where} has "
                           f"{len(by_label[1])} positive and {len(by_label[0])} negative. Set evaluate.gold_data to a labelled source.")
    rng.shuffle(picked)
    return [r.text for r in picked], [r.label for r in picked], [r.prompt for r in picked], f"{len(picked)} labelled texts of {where}"


def gold_agreement(models: dict[str, dict], reference: str) -> dict[str, dict]:
    """model -> gold judge -> gains in positive rate of the proxy and the judge over the reference model."""
    first = models[reference]["judges"]
    return {name: {judge: gain_check(first["proxy"]["positive_rate"], m["judges"]["proxy"]["positive_rate"],
                                     first[judge]["positive_rate"], value["positive_rate"])
                   for judge, value in m["judges"].items() if judge != "proxy"}
            for name, m in models.items() if name != reference}


def model_metrics(model, ref_model, generations, tokenizer, ref_tokenizer, ev, runtime: Runtime) -> dict:
    """KL to the reference and perplexity under it (log-probs at temperature 1: the models' own
    distributions, so the KL is exact when sampling at the default temperature 1), diversity, size."""
    own = response_logprobs(model, generations, pad_token_id=tokenizer.pad_token_id, batch_size=ev.batch_size,
                            autocast=runtime.autocast)
    ref = own if model is ref_model else response_logprobs(
        ref_model, generations, pad_token_id=ref_tokenizer.pad_token_id, batch_size=ev.batch_size, autocast=runtime.autocast)
    parameters, size_mb = model_size(model)
    return {"parameters": parameters, "size_mb": size_mb, **text_metrics(generations, own, ref)}


def text_metrics(generations, own: list, ref: list) -> dict:
    """KL to the reference and perplexity under it from each response's per-token log-probs under
    its own model (`own`) and the reference (`ref`), lists of (R_i,) fp32 tensors; diversity and length."""
    kl, perplexity = kl_and_perplexity([x.tolist() for x in own], [x.tolist() for x in ref])
    responses = [g.response for g in generations]
    return {"kl_to_reference": kl, "perplexity_under_reference": perplexity,
            "distinct_1": distinct_n(responses, 1), "distinct_2": distinct_n(responses, 2),
            "mean_length": sum(len(g.response_ids) for g in generations) / len(generations)}


def reference_metrics(reference_source: str, answered: dict[str, tuple[list, list]], reference_name: str, ev,
                      runtime: Runtime) -> dict[str, dict]:
    """name -> `text_metrics` of its generations against the reference model, given name ->
    (generations, their log-probs under their own model). The reference model is loaded once,
    and only when another model's text needs it (its own text is scored with its own log-probs)."""
    result = {reference_name: text_metrics(answered[reference_name][0], answered[reference_name][1],
                                           answered[reference_name][1])}
    others = [name for name in answered if name != reference_name]
    if others:
        model, tokenizer = load_causal_lm(reference_source)
        model.to(runtime.device)
        for name in others:
            generations, own = answered[name]
            ref = response_logprobs(model, generations, pad_token_id=tokenizer.pad_token_id, batch_size=ev.batch_size,
                                    autocast=runtime.autocast)
            result[name] = text_metrics(generations, own, ref)
    return result


def _prompt_sentiments(prompts: list[str], labels: list[int | None], prob_fn) -> list[str]:
    """Each prompt's own sentiment: the reward model's probability of the prompt text alone,
    or, for rewards without a probability, the label of the review it was cut from."""
    if prob_fn is not None:
        return [sentiment_of(p) for p in prob_fn([""] * len(prompts), prompts).tolist()]
    return ["positive" if label == 1 else "negative" if label == 0 else "neutral" for label in labels]


def _by_sentiment(sentiments: list[str], scores: list[float], probs: list[float] | None) -> dict:
    result = {}
    for sentiment in SENTIMENTS:
        idx = [i for i, s in enumerate(sentiments) if s == sentiment]
        if idx:
            result[sentiment] = {
                "n": len(idx),
                "score": sum(scores[i] for i in idx) / len(idx),
                "positive_probability": sum(probs[i] for i in idx) / len(idx) if probs is not None else None,
            }
    return result


def _check_same_vocab(tokenizer, ref_tokenizer, name: str, reference: str) -> None:
    if tokenizer.get_vocab() != ref_tokenizer.get_vocab():
        raise RlhfLabError(f"Model {name!r} uses a different tokenizer from the reference {reference!r}, so KL and "
                           f"perplexity against it are undefined. Compare models fine-tuned from the same base.")


def format_summary(summary: EvaluateSummary) -> str:
    lines = [f"{summary.prompts} held-out prompts; reward: {summary.reward}"]
    header = f"{'model':<10}{'score':>8}{'P(pos)':>8}{'>0.5':>7}{'KL':>7}{'ppl':>8}{'dist-2':>8}{'length':>8}"
    lines.append(header)
    for name, m in summary.models.items():
        prob = m["positive_probability"]
        p_mean = f"{prob['mean']:8.3f}" if prob else f"{'-':>8}"
        above = f"{prob['above_half']:7.2f}" if prob else f"{'-':>7}"
        lines.append(f"{name:<10}{m['score']['mean']:8.3f}{p_mean}{above}{m['kl_to_reference']:7.2f}"
                     f"{m['perplexity_under_reference']:8.1f}{m['distinct_2']:8.3f}{m['mean_length']:8.1f}")
    for name, c in summary.comparison.items():
        lines.append(f"{name} vs {c['vs']}: better on {c['better']:.0%} of prompts, worse on {c['worse']:.0%} "
                     f"(mean change {c['mean_delta']:+.3f})")
    return "\n".join(lines + format_judges(summary) + format_best_of(summary))


def format_best_of(summary: EvaluateSummary) -> list[str]:
    """Lines: best-of-n's mean reward, P(positive) and KL bound per n (empty without evaluate.best_of)."""
    best = summary.best_of
    if not best:
        return []
    lines = [f"best-of-n from {best['model']} on the first {best['prompts']} prompts ({best['drawn']} drawn each; "
             f"KL to {best['model']} at most log n - (n-1)/n)", f"{'n':>4}{'score':>8}{'P(pos)':>8}{'KL <=':>8}"]
    for row in best["rows"]:
        prob = row["positive_probability"]
        lines.append(f"{row['n']:>4}{row['score']:8.3f}{'-' if prob is None else f'{prob:.3f}':>8}{row['kl_bound']:8.2f}")
    if best.get("optimum"):
        lines.append("the most any policy reaches within a KL budget (the samples reweighted by exp(value/λ); an estimate)")
        for row in best["optimum"]:
            prob = row["positive_probability"]
            lines.append(f"{'':>4}{row['score']:8.3f}{'-' if prob is None else f'{prob:.3f}':>8}{row['kl']:8.2f}")
    return lines


def format_judges(summary: EvaluateSummary) -> list[str]:
    """Lines: each judge's calibration accuracy, each model's share judged positive, disagreements."""
    if not summary.judges:
        return []
    names = list(summary.judges)
    lines = ["judges (share of responses judged positive; accuracy on " + next(iter(summary.judges.values()))["calibrated_on"] + ")",
             f"{'model':<10}" + "".join(f"{n[:14]:>15}" for n in names),
             f"{'accuracy':<10}" + "".join(f"{summary.judges[n]['accuracy']:15.3f}" for n in names)]
    for model, m in summary.models.items():
        lines.append(f"{model:<10}" + "".join(f"{m['judges'][n]['positive_rate']:15.3f}" for n in names))
    for model, judges in (summary.gold_agreement or {}).items():
        for judge, g in judges.items():
            if g["disagree"]:
                lines.append(f"{model}: the proxy gained {g['proxy_gain']:+.3f} but {judge} only {g['gold_gain']:+.3f} "
                             f"(under half): the proxy gain may not be real")
    return lines
