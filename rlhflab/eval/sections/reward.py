"""The report section, overview rows and pipeline line of the reward stage (rlhflab/stages/reward.py)."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Table, para
from rlhflab.eval.sections.base import Figures, Stage, _facts, _num, _params, _seconds, _splits, _text, _unfinished
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import RewardSummary


def _confusion(summary: RewardSummary) -> tuple[str, list[list[int]]] | None:
    if summary.confusion_matrix_test is not None:
        return "test", summary.confusion_matrix_test
    for split in ("test", "validation", "train"):
        matrix = summary.metrics.get(split, {}).get("confusion_matrix")
        if matrix:
            return split, matrix
    return None


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["reward"].title, anchor="reward")]
    loss_figure = lambda caption: figures.draw(plots.loss_curves, "reward_loss", stage.rows, title="Reward model loss",
                                               caption=caption)
    if not stage.done:
        return blocks + _unfinished(stage, run_root, loss_figure, "Reward model train and validation loss so far.")
    s: RewardSummary = stage.summary
    if str(s.labels or "").startswith("weak"):
        blocks.append(para(f"Trained on {s.labels}: what a lexicon says, not what a reader would; its accuracy "
                           "below is agreement with the lexicon.", note=True))
    metrics = s.metrics
    names = _splits(metrics)
    pairs = s.objective == "pairs"
    if pairs:
        rows = [[n, _num(metrics[n].get("loss")), _num(metrics[n].get("pairwise_accuracy")),
                 _num(metrics[n].get("mean_margin")), _num(metrics[n].get("n"))] for n in names]
        blocks.append(Table(["split", "loss", "pairwise accuracy", "mean margin", "pairs"], rows,
                            caption="Preference pairs: how often the chosen response scores above the rejected "
                                    "one (ties count half), and the mean score gap chosen - rejected."))
    else:
        rows = [[n, *(_num(metrics[n].get(k)) for k in ("loss", "accuracy", "precision", "recall", "f1")),
                 _num(metrics[n].get("n"))] for n in names]
        blocks.append(Table(["split", "loss", "accuracy", "precision", "recall", "F1", "examples"], rows,
                            caption="Reward model metrics per split; precision, recall and F1 are macro averages "
                                    "over the two classes."))
        confusion = _confusion(s)
        if confusion:
            split, matrix = confusion
            labels = ["negative (0)", "positive (1)"] if len(matrix) == 2 else [str(i) for i in range(len(matrix))]
            blocks.append(Table(["true \\ predicted", *labels], [[labels[i], *map(str, row)] for i, row in enumerate(matrix)],
                                caption=f"Confusion matrix on {split}: rows are the true label, columns the "
                                        "predicted one."))
            blocks.append(figures.draw(plots.confusion_matrix_plot, "reward_confusion", matrix, labels,
                                       title=f"Reward model confusion matrix ({split})",
                                       caption=f"Confusion matrix on the {split} split."))
    if stage.rows:
        blocks.append(loss_figure("Reward model loss: train (mean over each log window) and validation."))
    norm = s.normalization or {}
    blocks.append(_facts([
        ("objective", _text(s.objective)),
        ("model", _text(s.model)),
        ("parameters", _params(s.parameters)),
        ("examples" if not pairs else "pairs", ", ".join(f"{k} {v}" for k, v in (s.examples or {}).items()) or "-"),
        ("optimizer steps", s.steps),
        ("score normalization", f"gain {_num(norm.get('gain'))}, bias {_num(norm.get('bias'))} "
                                f"({norm.get('reference', '-')})" if norm else "-"),
        ("train examples/s", _num(s.train_examples_per_s, 1)),
        ("peak memory", f"{_num(s.peak_memory_mb, 0)} MB"),
        ("wall time", _seconds(s.seconds)),
    ]))
    return blocks


def rows(reward: RewardSummary, name: str) -> list[list[str]]:
    test = reward.metrics.get("test") or {}
    key = "pairwise_accuracy" if reward.objective == "pairs" else "accuracy"
    return [["reward model", f"test {key.replace('_', ' ')}", "-", _num(test[key])]] if key in test else []


def line(summary: RewardSummary) -> str:
    metrics = summary.metrics
    split = "test" if "test" in metrics else next(iter(metrics))
    key = "pairwise_accuracy" if summary.objective == "pairs" else "accuracy"
    return f"{split} accuracy {metrics[split][key]:.3f}"
