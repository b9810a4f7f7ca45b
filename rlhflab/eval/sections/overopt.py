"""The report section, overview rows and pipeline line of the over-optimisation study
(rlhflab/stages/overopt.py), and the figures that stage draws into its own folder (`overopt_figures`)."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Table, para
from rlhflab.eval.sections.base import Figures, Stage, _not_run, _num, _short, _text, yaml_config
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import OveroptSummary


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    """The over-optimisation study with Gao et al.'s proxy-versus-gold view."""
    blocks: list[Block] = [Heading(STAGES["overopt"].title, anchor="overopt")]
    if not stage.done:
        return blocks + _not_run(stage, run_root)
    s: OveroptSummary = stage.summary
    points, judges, verdict = s.points, list(s.judges or {}), s.verdict or {}
    found = f"Onset: {verdict['onset']} at KL {_num(verdict.get('kl'), 2)} nats: " if verdict.get("onset") else "Verdict: "
    blocks.append(para(f"The RL run {_text(s.run)}: its starting model and every per-epoch snapshot answer the same "
                       f"{_text(s.prompts)} held-out prompts. {found}{verdict.get('reason', '-')}."))
    blocks.append(para(f"Rule: {verdict.get('rule', '-')}.", note=True))
    peaks = s.gold_peak or {}
    if peaks:
        blocks.append(para("Gold peaks: " + "; ".join(f"{j} highest at {p['name']} (KL {_num(p['kl'], 2)}, mean "
                                                      f"{_num(p['value'])})" for j, p in peaks.items()) + "."))
    rows = [[str(p["name"]), _num(p["kl"], 2), _num(p["sqrt_kl"], 2), _num(p["proxy"]),
             *(_num(p["gold"].get(j)) for j in judges if j != "proxy"), _num(p["separator_ratio"]), _num(p["distinct_2"]),
             _num(p["perplexity_under_reference"], 1)] for p in points]
    blocks.append(Table(["checkpoint", "KL", "√KL", "proxy", *(j for j in judges if j != "proxy"), "separator ratio",
                         "distinct-2", "perplexity under start"], rows,
                        caption="Each judge's mean score (probabilities in 0..1; VADER's compound in -1..1), KL to the "
                                "starting model (nats per response), the separator ratio and diversity, per "
                                "checkpoint. Judge accuracy on "
                                "labelled texts: " + ", ".join(f"{j} {_num(c.get('accuracy'))}" for j, c in (s.judges or {}).items()) + "."))
    if points:
        blocks.append(figures.draw(plots.overoptimisation, "overopt_proxy_gold", points,
                                   caption="Proxy and gold judges against √KL (Gao et al. 2022): over-optimisation shows "
                                           "as the proxy still rising while a gold judge falls."))
        blocks.append(figures.draw(plots.text_signals, "overopt_text_signals", points,
                                   caption="The separator ratio (\\n, space, comma, full stop among words and "
                                           "characters) and distinct-1/2 per checkpoint."))
    shown = (yaml_config(stage) or {}).get("overopt", {}).get("samples", 3)
    for p in points:
        rows = [[_short(r.get("prompt", "")), _short(r.get("response", "")),
                 *(_num((r.get("scores") or {}).get(j)) for j in judges)]
                for r in stage.samples if r.get("model") == p["name"]][:shown]
        if rows:
            blocks.append(Heading(f"Samples: {p['name']}", level=3))
            blocks.append(Table(["prompt", "response", *judges], rows, numeric=False))
    return blocks


def overopt_figures(points: list[dict], out: Path) -> list[Path]:
    """The study's two figures, drawn by the stage into its own folder with the report's code."""
    figures = Figures(out)
    figures.draw(plots.overoptimisation, "overopt_proxy_gold", points, caption="")
    figures.draw(plots.text_signals, "overopt_text_signals", points, caption="")
    return sorted(figures.written)


def rows(study: OveroptSummary, name: str) -> list[list[str]]:
    verdict = study.verdict or {}
    onset = f"{verdict['onset']} (KL {_num(verdict.get('kl'), 2)})" if verdict.get("onset") else \
        f"none up to KL {_num(verdict.get('max_kl'), 2)}"
    return [["over-optimisation", "onset (the rule is in its section)", "-", onset]]


def line(summary: OveroptSummary) -> str:
    verdict = summary.verdict
    return f"onset at {verdict['onset']} (KL {verdict['kl']:.2f}): {verdict['reason']}" if verdict["onset"] else verdict["reason"]
