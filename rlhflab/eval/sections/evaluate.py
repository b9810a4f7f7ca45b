"""The report section, overview rows and pipeline line of the evaluate stage
(rlhflab/stages/evaluate.py), and the figures that stage draws into its own folder with the
same code (`evaluation_figures`)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Cell, Heading, Table, para
from rlhflab.eval.sections.base import (
    SAMPLES_PER_SENTIMENT,
    Figures,
    Stage,
    _listed_images,
    _not_run,
    _num,
    _params,
    _pct,
    _short,
    _signed,
    _slug,
    _text,
)
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import EvaluateSummary


def _eval_models(summary: EvaluateSummary, samples: list[dict]) -> list[str]:
    """Models in the summary's order (the first is the reference), then any only in samples."""
    names = list(summary.models.keys())
    return names + [m for m in dict.fromkeys(r.get("model") for r in samples) if m and m not in names]


def _scores_by_model(samples: list[dict], models: list[str], key: str) -> dict[str, list[float]]:
    out = {m: [] for m in models}
    for row in samples:
        value = row.get(key)
        if row.get("model") in out and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[row["model"]].append(float(value))
    return out


def _by_prompt(samples: list[dict]) -> dict[Any, dict[str, dict]]:
    prompts: dict[Any, dict[str, dict]] = {}
    for row in samples:
        prompts.setdefault(row.get("prompt_id", row.get("prompt")), {})[row.get("model")] = row
    return prompts


def _eval_metric_table(models: dict[str, dict]) -> Table:
    names = list(models)

    def get(model: dict, *path: str) -> Any:
        value: Any = model
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    rows_spec = [
        ("source", lambda m: str(m.get("source", "-"))),
        ("mean reward", lambda m: _num(get(m, "score", "mean"))),
        ("median reward", lambda m: _num(get(m, "score", "median"))),
        ("reward std", lambda m: _num(get(m, "score", "std"))),
        ("mean P(positive)", lambda m: _num(get(m, "positive_probability", "mean"))),
        ("median P(positive)", lambda m: _num(get(m, "positive_probability", "median"))),
        ("share with P(positive) > 0.5", lambda m: _pct(get(m, "positive_probability", "above_half"))),
        ("KL to reference (nats / response)", lambda m: _num(m.get("kl_to_reference"))),
        ("perplexity under reference", lambda m: _num(m.get("perplexity_under_reference"), 2)),
        ("distinct-1", lambda m: _num(m.get("distinct_1"))),
        ("distinct-2", lambda m: _num(m.get("distinct_2"))),
        ("mean length (tokens)", lambda m: _num(m.get("mean_length"), 1)),
        ("parameters", lambda m: _params(m.get("parameters")) if m.get("parameters") is not None else "-"),
        ("size (MB)", lambda m: _num(m.get("size_mb"), 1)),
    ]
    rows = [[label, *(fn(models[n]) for n in names)] for label, fn in rows_spec]
    return Table(["metric", *names], rows,
                 caption=f"Per-model metrics on the evaluation prompts; {names[0]} is the reference for KL and "
                         "perplexity. Model sizes as saved.")


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["evaluate"].title, anchor="evaluate")]
    if not stage.done:
        return blocks + _not_run(stage, run_root)
    s: EvaluateSummary = stage.summary
    models = s.models
    names = _eval_models(s, stage.samples)
    reference = s.reference or (names[0] if names else "-")
    sampling = ""
    if s.temperature is not None or s.max_new_tokens is not None:
        sampling = f" Sampling at temperature {_text(s.temperature)}, up to {_text(s.max_new_tokens)} new tokens."
    blocks.append(para(f"{_text(s.prompts)} held-out prompts, one response per model, scored by "
                       f"{_text(s.reward, 'the reward function')}. Reference model: {reference}.{sampling}"))
    if models:
        blocks.append(_eval_metric_table(models))
    comparison = s.comparison or {}
    if comparison:
        blocks.append(Table(["model", "compared with", "prompts better", "prompts worse", "same", "mean reward change"],
                            [[m, str(c.get("vs", reference)), _pct(c.get("better")), _pct(c.get("worse")),
                              _pct(c.get("same")), _signed(c.get("mean_delta"))] for m, c in comparison.items()],
                            caption="Per prompt: the share of prompts whose reward went up or down against the "
                                    "reference model's response to the same prompt."))
    blocks += _judges_blocks(s)
    blocks += _best_of_blocks(s)
    blocks += _eval_figures(stage, s, names, reference, figures)
    blocks += _sentiment_blocks(models, stage.samples, names, figures)
    blocks += _side_by_side(stage.samples, names)
    return blocks


def _judges_blocks(summary: EvaluateSummary) -> list[Block]:
    """Gold judges beside the proxy: each one's calibration and each model's share judged positive,
    and a note wherever the proxy's gain is not matched by a gold judge's."""
    judges, models = summary.judges or {}, summary.models
    if not judges:
        return []
    names = list(judges)
    rows = [[n, str(judges[n].get("source", "-")), _num(judges[n].get("accuracy")), _num(judges[n].get("threshold"), 2),
             *(_pct(((models[m].get("judges") or {}).get(n) or {}).get("positive_rate")) for m in models)] for n in names]
    blocks: list[Block] = [Table(["judge", "source", "accuracy", "positive at ≥", *(f"positive: {m}" for m in models)], rows, left=2,
                                 caption="The proxy (the reward RL optimised) and the gold judges it never saw: accuracy on "
                                         f"{next(iter(judges.values())).get('calibrated_on', 'held-out labelled texts')} at each "
                                         "judge's threshold, and the share of each model's responses the judge calls positive.")]
    for model, per_judge in (summary.gold_agreement or {}).items():
        for judge, g in per_judge.items():
            if g.get("disagree"):
                blocks.append(para(f"The proxy and {judge} disagree on {model}: the proxy's share of positive responses "
                                   f"rose by {_signed(g['proxy_gain'])}, {judge}'s by {_signed(g['gold_gain'])}, under half "
                                   "of it. Part of the proxy's gain may be the policy exploiting the proxy.", note=True))
    return blocks


def _best_of_blocks(summary: EvaluateSummary) -> list[Block]:
    """The best-of-n baselines of the evaluate stage (evaluate.best_of), when it drew them."""
    best = summary.best_of
    if not best:
        return []
    rows = best.get("rows") or []
    judges = list(dict.fromkeys(j for r in rows for j in (r.get("judges") or {})))
    model = best.get("model", "the reference model")
    return [Heading("Best of n", level=3), Table(
        ["n", "mean reward", "P(positive)", "KL bound (nats)", *(f"positive: {j}" for j in judges)],
        [[str(r.get("n")), _num(r.get("score")), _num(r.get("positive_probability")), _num(r.get("kl_bound")),
          *(_pct((r.get("judges") or {}).get(j)) for j in judges)] for r in rows],
        caption=f"Best-of-n from the reference model {model} on the first {best.get('prompts', '-')} evaluation prompts, "
                f"{best.get('drawn', '-')} samples each: for each n the best of the first n by the proxy reward is kept. "
                f"Its KL to {model} is the analytic bound log n − (n−1)/n (Stiennon et al. 2020), to read beside the "
                "tuned models' measured KL in the table above; a judge's column is the share it calls positive."),
        *_optimum_blocks(best)]


def _optimum_blocks(best: dict) -> list[Block]:
    """The most reward any policy reaches within each KL budget, estimated from the best-of-n samples."""
    optimum = [o for o in best.get("optimum") or [] if isinstance(o, dict)]
    if not optimum:
        return []
    return [Table(["KL budget (nats)", "most mean reward", "most P(positive)"],
                  [[_num(o.get("kl")), _num(o.get("score")), _num(o.get("positive_probability"))] for o in optimum],
                  caption=f"The most any policy reaches within each KL budget to {best.get('model', 'the reference')}, "
                          f"estimated from the same {best.get('drawn', '-')} samples a prompt reweighted by exp(value / λ), "
                          "the optimum of KL-regularised RL (one λ for all prompts; each column reweighted by its own "
                          "value). A tuned model's distance below this line at its KL is what its training left on the "
                          "table; budgets the samples cannot measure (near log n) are left out, and near them the "
                          "estimate understates the optimum.")]


def _eval_figures(stage: Stage, summary: EvaluateSummary, names: list[str], reference: str, figures: Figures) -> list[Block]:
    """Redraw the distribution figures from samples.jsonl; without it fall back to the PNGs
    the evaluate stage listed in its summary."""
    if not stage.samples:
        listed = [(str(v), str(k).replace("_", " ")) for k, v in (summary.figures or {}).items()]
        note = para(f"{stage.path / 'samples.jsonl'} is missing, so the figures could not be redrawn.", note=True)
        return [note, *_listed_images(stage.path.parent, stage.path.name, listed)]
    blocks: list[Block] = []
    scores = {m: v for m, v in _scores_by_model(stage.samples, names, "score").items() if v}
    if scores:
        blocks.append(figures.draw(plots.reward_histograms, "eval_reward_histograms", scores,
                                   caption="Reward per response for each model, same bins; the dashed line is the "
                                           "mean."))
        blocks.append(figures.draw(plots.reward_overlay, "eval_reward_overlay", scores,
                                   caption="The same rewards overlaid, and as box plots."))
    probs = {m: v for m, v in _scores_by_model(stage.samples, names, "positive_probability").items() if v}
    if probs:
        blocks.append(figures.draw(plots.reward_histograms, "eval_positive_probability", probs, xlabel="P(positive)",
                                   title="Probability of positive sentiment per model",
                                   caption="The reward model's probability that each response is positive."))
    prompts = _by_prompt(stage.samples)
    for model in names:
        if model == reference:
            continue
        pairs = [(r[reference]["score"], r[model]["score"]) for r in prompts.values()
                 if reference in r and model in r and isinstance(r[reference].get("score"), (int, float))
                 and isinstance(r[model].get("score"), (int, float))]
        if pairs:
            blocks.append(figures.draw(plots.reward_map, f"eval_reward_map_{_slug(model)}", [p[0] for p in pairs],
                                       [p[1] for p in pairs], x_name=reference, y_name=model,
                                       caption=f"Reward map: each point is one prompt, {reference}'s reward across, "
                                               f"{model}'s up; above the diagonal {model} did better."))
    return blocks


def evaluation_figures(samples: list[dict], summary: EvaluateSummary, out: Path) -> list[Path]:
    """The evaluation's figures (distributions, reward maps, sentiment bars) drawn from its samples
    into `out`: the evaluate stage writes its own PNGs with the same code the report uses."""
    figures = Figures(out)
    stage = Stage("evaluate", out, summary=summary, samples=samples)
    names = _eval_models(summary, samples)
    reference = summary.reference or names[0]
    _eval_figures(stage, summary, names, reference, figures)
    _sentiment_blocks(summary.models, samples, names, figures)
    return sorted(figures.written)


def _sentiment_blocks(models: dict, samples: list[dict], names: list[str], figures: Figures) -> list[Block]:
    by = {m: (models.get(m) or {}).get("by_sentiment") or {} for m in names}
    if not any(by.values()) and samples:  # no breakdown in the summary: compute it from the samples
        for m in names:
            groups: dict[str, list[float]] = {}
            for r in samples:
                if r.get("model") == m and r.get("sentiment") and isinstance(r.get("score"), (int, float)):
                    groups.setdefault(r["sentiment"], []).append(float(r["score"]))
            by[m] = {k: {"n": len(v), "score": statistics.fmean(v), "positive_probability": None} for k, v in groups.items()}
    if not any(by.values()):
        return []
    sentiments = [x for x in plots.SENTIMENT_ORDER if any(x in b for b in by.values())]
    sentiments += sorted({x for b in by.values() for x in b} - set(sentiments))
    has_prob = any((b.get(x) or {}).get("positive_probability") is not None for b in by.values() for x in b)
    header = ["prompt sentiment", "prompts", *(f"{m} reward" for m in names)]
    if has_prob:
        header += [f"{m} P(positive)" for m in names]
    rows = []
    for x in sentiments:
        n = next((b[x].get("n") for b in by.values() if x in b), None)
        row = [x, _num(n), *(_num((by[m].get(x) or {}).get("score")) for m in names)]
        if has_prob:
            row += [_num((by[m].get(x) or {}).get("positive_probability")) for m in names]
        rows.append(row)
    values = {m: {x: (by[m].get(x) or {}).get("score") for x in sentiments} for m in names if by[m]}
    return [
        Heading("By prompt sentiment", level=3),
        Table(header, rows, caption="Mean reward by the sentiment of the prompt the response continues."),
        figures.draw(plots.sentiment_breakdown, "eval_sentiment", values,
                     caption="Mean reward per model for positive, neutral and negative prompts."),
    ]


def _side_by_side(samples: list[dict], names: list[str]) -> list[Block]:
    if not samples:
        return []
    prompts = _by_prompt(samples)
    blocks: list[Block] = [Heading("Samples side by side", level=3)]
    groups: dict[str, list[dict[str, dict]]] = {}
    for rows in prompts.values():
        first = next(iter(rows.values()))
        groups.setdefault(str(first.get("sentiment") or "unlabelled"), []).append(rows)
    order = [x for x in plots.SENTIMENT_ORDER if x in groups] + sorted(set(groups) - set(plots.SENTIMENT_ORDER))
    for sentiment in order:
        table_rows = []
        for rows in groups[sentiment][:SAMPLES_PER_SENTIMENT]:
            first = next(iter(rows.values()))
            cells: list[str | Cell] = [_short(first.get("prompt", ""))]
            for m in names:
                r = rows.get(m)
                if r is None:
                    cells.append("-")
                    continue
                note = f"reward {_num(r.get('score'))}"
                if r.get("positive_probability") is not None:
                    note += f", P(positive) {_num(r.get('positive_probability'))}"
                cells.append(Cell(_short(r.get("response", "")), note))
            table_rows.append(cells)
        blocks.append(Table(["prompt", *names], table_rows, numeric=False,
                            caption=f"{sentiment} prompts: the first {len(table_rows)} of {len(groups[sentiment])}."))
    return blocks


def rows(ev: EvaluateSummary, name: str) -> list[list[str]]:
    rows = []
    models = ev.models
    names = list(models)
    if names:
        ref = ev.reference or names[0]
        for m in names:
            if m == ref or ref not in models:
                continue
            rows.append(["evaluation", f"mean reward, {ref} → {m}", _num((models[ref].get("score") or {}).get("mean")),
                         _num((models[m].get("score") or {}).get("mean"))])
            ref_prob, prob = models[ref].get("positive_probability"), models[m].get("positive_probability")
            if ref_prob and prob:
                rows.append(["evaluation", f"mean P(positive), {ref} → {m}", _num(ref_prob.get("mean")), _num(prob.get("mean"))])
            if models[m].get("kl_to_reference") is not None:
                rows.append(["evaluation", f"KL of {m} to {ref} (nats / response)", "-", _num(models[m]["kl_to_reference"])])
            better = (ev.comparison or {}).get(m, {}).get("better")
            if better is not None:
                rows.append(["evaluation", f"prompts where {m} beats {ref}", "-", _pct(better)])
    return rows


def line(summary: EvaluateSummary) -> str:
    parts = []
    for name, model in summary.models.items():
        prob = model.get("positive_probability")
        value = f"P(positive) {prob['mean']:.3f}" if prob else f"score {model['score']['mean']:.3f}"
        parts.append(f"{name} {value}")
    return ", ".join(parts)
