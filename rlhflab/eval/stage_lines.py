"""Each stage's one line of numbers once it is done (`rlhflab pipeline` prints it): summary.json -> text.

The registry (rlhflab/stages/registry.py) names one function here per stage. A summary that
lacks a key raises KeyError (or another lookup error), which rlhflab.pipeline.headline turns
into a one-line note.
"""

from __future__ import annotations


def pretrain(summary: dict) -> str:
    base = summary["baselines"]
    return (f"validation perplexity {summary['after']['validation']['perplexity']:.1f} "
            f"(bigram {base['bigram']:.1f}, unigram {base['unigram']:.1f})")


def sft(summary: dict) -> str:
    before = summary.get("before", {}).get("validation", {}).get("perplexity")
    after = summary["after"].get("validation", summary["after"].get("train", {})).get("perplexity")
    return f"validation perplexity {before:.1f} -> {after:.1f}" if before else f"validation perplexity {after:.1f}"


def reward(summary: dict) -> str:
    metrics = summary["metrics"]
    split = "test" if "test" in metrics else next(iter(metrics))
    key = "pairwise_accuracy" if summary.get("objective") == "pairs" else "accuracy"
    return f"{split} accuracy {metrics[split][key]:.3f}"


def _held_out(summary: dict) -> list[str]:
    """The held-out prompts at the start and the end of a tuned stage: [score or P(positive), KL]."""
    start, end = summary["start"], summary["end"]
    key = next((k for k in ("positive_probability", "score") if k in start), None)
    parts = [f"{'P(positive)' if key == 'positive_probability' else 'score'} {start[key]:.3f} -> {end[key]:.3f}"] if key else []
    return parts + [f"KL {end['kl']:.2f}"]


def ppo(summary: dict) -> str:
    return ", ".join(_held_out(summary))


def dpo(summary: dict) -> str:
    validation = summary["after"].get("validation")
    return ", ".join(_held_out(summary) + ([f"validation pair accuracy {validation['pair_accuracy']:.3f}"] if validation else []))


def ilql(summary: dict) -> str:
    """At ILQL's default beta (the β its held-out numbers were measured at)."""
    parts = _held_out(summary)
    parts[0] += f" at beta {summary['beta']:g}"
    return ", ".join(parts)


def evaluate(summary: dict) -> str:
    parts = []
    for name, model in summary["models"].items():
        prob = model.get("positive_probability")
        value = f"P(positive) {prob['mean']:.3f}" if prob else f"score {model['score']['mean']:.3f}"
        parts.append(f"{name} {value}")
    return ", ".join(parts)


def overopt(summary: dict) -> str:
    verdict = summary["verdict"]
    return f"onset at {verdict['onset']} (KL {verdict['kl']:.2f}): {verdict['reason']}" if verdict["onset"] else verdict["reason"]
