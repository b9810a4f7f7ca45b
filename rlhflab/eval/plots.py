"""Figures for the evaluation and the run report (matplotlib, PNG files).

Each public function takes plain data (lists, dicts of lists) and an output path, writes a
PNG atomically and returns the path. The `*_figure` builders return the matplotlib Figure
instead, for notebooks and for tests that check titles, labels and legends.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`), never pyplot:
no GUI backend is chosen, no global figure list fills up in long runs, and nothing needs
closing. matplotlib is imported inside the functions so `import rlhflab` stays light.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from rlhflab.errors import RlhfLabError
from rlhflab.io import atomic_open

DPI = 110
SENTIMENT_ORDER = ("positive", "neutral", "negative")
# tab10 colours; the first model (the reference, usually SFT) is always blue, the next orange.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
BETTER, WORSE, SAME = "#2ca02c", "#d62728", "#7f7f7f"


def _figure(width: float, height: float, *, rows: int = 1, cols: int = 1, **kwargs):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kwargs)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write `fig` as PNG via a temp file in the same folder and rename: a reader (or a
    report being built at the same time) never sees half an image."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    fig.clear()  # drop the artists now rather than at garbage collection
    return path


def _floats(values: Sequence[float], name: str) -> list[float]:
    out = []
    for v in values:
        if v is None or isinstance(v, bool):
            raise RlhfLabError(f"{name} must hold numbers, got {v!r}.")
        f = float(v)
        if not math.isfinite(f):
            raise RlhfLabError(f"{name} must hold finite numbers, got {v!r}.")
        out.append(f)
    return out


def _score_lists(scores: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    if not scores:
        raise RlhfLabError("There are no models to plot: the scores mapping is empty.")
    lists = {str(name): _floats(values, f"scores[{name!r}]") for name, values in scores.items()}
    if not any(lists.values()):
        raise RlhfLabError("There are no scores to plot: every model's list is empty.")
    return lists


def _bin_edges(lists: Sequence[Sequence[float]], bins: int):
    """One set of edges for all models, so bars are comparable across panels."""
    import numpy as np

    values = [v for vs in lists for v in vs]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:  # every score equal: give the single bar some width
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _no_data(ax, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666")


# -- reward distributions (histograms side by side; overlaid with a box plot) ---------------


def reward_histograms_figure(scores: Mapping[str, Sequence[float]], *, xlabel: str = "reward",
                             title: str | None = None, bins: int = 20):
    # The default title names what was measured (the evaluate stage plots P(positive) when it has one).
    title = title or ("Reward distribution per model" if xlabel == "reward" else f"Distribution of {xlabel} per model")
    lists = _score_lists(scores)
    edges = _bin_edges(list(lists.values()), bins)
    fig, axes = _figure(min(4.2 * len(lists), 13), 3.6, cols=len(lists), sharex=True, sharey=True)
    for i, (ax, (name, values)) in enumerate(zip(axes[0], lists.items())):
        ax.set_title(f"{name} (n = {len(values)})")
        ax.set_xlabel(xlabel)
        if i == 0:
            ax.set_ylabel("responses")
        ax.grid(axis="y", alpha=0.3)
        if not values:
            _no_data(ax, "no scores")
            continue
        ax.hist(values, bins=edges, color=_color(i), alpha=0.85, edgecolor="white", label=name)
        mean = sum(values) / len(values)
        ax.axvline(mean, color="black", linestyle="--", linewidth=1.2, label=f"mean = {mean:.3f}")
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    return fig


def reward_histograms(scores: Mapping[str, Sequence[float]], path: str | os.PathLike, *, xlabel: str = "reward",
                      title: str | None = None, bins: int = 20) -> Path:
    """Side-by-side histograms, one panel per model, shared x-axis and bins, mean marked."""
    return save_figure(reward_histograms_figure(scores, xlabel=xlabel, title=title, bins=bins), path)


def reward_overlay_figure(scores: Mapping[str, Sequence[float]], *, xlabel: str = "reward",
                          title: str | None = None, bins: int = 25):
    title = title or ("Reward distributions compared" if xlabel == "reward" else f"Distributions of {xlabel} compared")
    lists = _score_lists(scores)
    present = {name: values for name, values in lists.items() if values}
    colors = {name: _color(i) for i, name in enumerate(lists)}
    edges = _bin_edges(list(present.values()), bins)
    fig, axes = _figure(11, 4.0, cols=2, width_ratios=[3, 2])
    hist_ax, box_ax = axes[0]
    for name, values in present.items():
        hist_ax.hist(values, bins=edges, color=colors[name], alpha=0.45, edgecolor=colors[name],
                     linewidth=0.8, label=f"{name} (mean {sum(values) / len(values):.3f})")
    hist_ax.set_title("Histogram (overlaid)")
    hist_ax.set_xlabel(xlabel)
    hist_ax.set_ylabel("responses")
    hist_ax.grid(axis="y", alpha=0.3)
    hist_ax.legend(loc="best", fontsize="small")

    names = list(present)
    boxes = box_ax.boxplot([present[n] for n in names], patch_artist=True, widths=0.55,
                           medianprops={"color": "black", "linewidth": 1.5})
    for patch, name in zip(boxes["boxes"], names):
        patch.set_facecolor(colors[name])
        patch.set_alpha(0.6)
    # set_xticks(labels=...) works on every matplotlib >= 3.5 (boxplot's labels= was renamed).
    box_ax.set_xticks(range(1, len(names) + 1), labels=names)
    box_ax.set_title("Box plot (median, quartiles, 1.5 IQR)")
    box_ax.set_xlabel("model")
    box_ax.set_ylabel(xlabel)
    box_ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return fig


def reward_overlay(scores: Mapping[str, Sequence[float]], path: str | os.PathLike, *, xlabel: str = "reward",
                   title: str | None = None, bins: int = 25) -> Path:
    """Overlaid translucent histograms beside a box plot per model."""
    return save_figure(reward_overlay_figure(scores, xlabel=xlabel, title=title, bins=bins), path)


# -- per-prompt reward map -------------------------------------------


def reward_map_figure(x: Sequence[float], y: Sequence[float], *, x_name: str = "SFT", y_name: str = "PPO",
                      label: str = "reward", title: str | None = None, tolerance: float = 0.0):
    xs, ys = _floats(x, "x"), _floats(y, "y")
    if len(xs) != len(ys):
        raise RlhfLabError(f"The reward map needs one {y_name} reward per {x_name} reward, got {len(xs)} and {len(ys)}.")
    if not xs:
        raise RlhfLabError("The reward map has no prompts to plot.")
    groups = {"better": ([], [], BETTER), "worse": ([], [], WORSE), "same": ([], [], SAME)}
    for a, b in zip(xs, ys):
        key = "better" if b > a + tolerance else "worse" if b < a - tolerance else "same"
        groups[key][0].append(a)
        groups[key][1].append(b)
    fig, axes = _figure(5.6, 5.4)
    ax = axes[0][0]
    lo, hi = min(xs + ys), max(xs + ys)
    pad = max((hi - lo) * 0.05, 0.05)
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="black", linestyle="--", linewidth=1, label=f"{y_name} = {x_name}")
    n = len(xs)
    for key, (gx, gy, color) in groups.items():
        if not gx and key == "same":
            continue  # "same" is rare with continuous scores; no empty legend entry for it
        verb = {"better": "higher", "worse": "lower", "same": "equal"}[key]
        ax.scatter(gx, gy, s=22, color=color, alpha=0.75, edgecolors="none",
                   label=f"{y_name} {verb}: {len(gx) / n:.1%} ({len(gx)}/{n})")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{x_name} {label}")
    ax.set_ylabel(f"{y_name} {label}")
    ax.grid(alpha=0.3)
    # Below the axes: inside, it would hide points in whichever corner the data fills.
    fig.legend(loc="outside lower center", ncols=1, fontsize="small", frameon=False)
    ax.set_title(title or f"Reward map: {x_name} vs {y_name}, per prompt")
    return fig


def reward_map(x: Sequence[float], y: Sequence[float], path: str | os.PathLike, *, x_name: str = "SFT",
               y_name: str = "PPO", label: str = "reward", title: str | None = None, tolerance: float = 0.0) -> Path:
    """Scatter of per-prompt rewards (x: one model, y: another) with the y = x diagonal;
    points above it improved. Shares of better/worse prompts are in the legend."""
    fig = reward_map_figure(x, y, x_name=x_name, y_name=y_name, label=label, title=title, tolerance=tolerance)
    return save_figure(fig, path)


# -- prompt sentiment breakdown ----------------------------------------------------------


def _sentiments(by_sentiment: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    seen = {s for values in by_sentiment.values() for s in values}
    return [s for s in SENTIMENT_ORDER if s in seen] + sorted(seen - set(SENTIMENT_ORDER))


def sentiment_breakdown_figure(by_sentiment: Mapping[str, Mapping[str, float | None]], *, ylabel: str = "mean reward",
                               title: str | None = None):
    title = title or f"{ylabel[:1].upper()}{ylabel[1:]} by prompt sentiment"
    if not by_sentiment:
        raise RlhfLabError("There are no models to plot: by_sentiment is empty.")
    sentiments = _sentiments(by_sentiment)
    if not sentiments:
        raise RlhfLabError("There are no sentiment groups to plot.")
    models = list(by_sentiment)
    width = 0.8 / len(models)
    fig, axes = _figure(max(5.5, 1.6 * len(sentiments) * max(1, len(models) / 2)), 3.8)
    ax = axes[0][0]
    for i, model in enumerate(models):
        offsets = [k + (i - (len(models) - 1) / 2) * width for k in range(len(sentiments))]
        values = [by_sentiment[model].get(s) for s in sentiments]
        heights = [float("nan") if v is None else float(v) for v in values]
        bars = ax.bar(offsets, heights, width=width * 0.95, color=_color(i), label=model)
        ax.bar_label(bars, labels=["" if v is None else f"{float(v):.2f}" for v in values], fontsize="x-small", padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(sentiments)), labels=[f"{s} prompts" for s in sentiments])
    ax.set_xlabel("prompt sentiment")
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)  # room for the value labels above the bars
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    return fig


def sentiment_breakdown(by_sentiment: Mapping[str, Mapping[str, float | None]], path: str | os.PathLike, *,
                        ylabel: str = "mean reward", title: str | None = None) -> Path:
    """Grouped bars: one group per prompt sentiment, one bar per model (None = no bar)."""
    return save_figure(sentiment_breakdown_figure(by_sentiment, ylabel=ylabel, title=title), path)


# -- training curves ------------------------------------------------


def _series(rows: Sequence[Mapping], key: str, split: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        # Rows without a split are train rows; NaN/inf (a diverged step) would break the axis limits.
        if (row.get("split", "train") == split and "step" in row and isinstance(value, (int, float))
                and math.isfinite(float(value))):
            steps.append(float(row["step"]))
            values.append(float(value))
    return steps, values


def _rolling(steps: list[float], values: list[float], window: int) -> tuple[list[float], list[float]]:
    """Trailing mean over `window` logged points, drawn at each window's last step."""
    if window <= 1 or len(values) < window:
        return [], []
    sums, out = 0.0, []
    for i, v in enumerate(values):
        sums += v
        if i >= window:
            sums -= values[i - window]
        if i >= window - 1:
            out.append(sums / window)
    return steps[window - 1:], out


def _integer_steps(ax) -> None:
    """Steps are whole numbers: no 1.25-step ticks on a short run."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _window(n: int) -> int:
    return max(1, min(10, n // 5))


def _train_panel(ax, rows, key: str, *, title: str, ylabel: str, label: str, color: str, eval_key: str | None = None,
                 rolling: bool = True) -> None:
    steps, values = _series(rows, key, "train")
    eval_steps, eval_values = _series(rows, eval_key, "eval") if eval_key else ([], [])
    ax.set_title(title)
    ax.set_xlabel("PPO step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    _integer_steps(ax)
    if not values and not eval_values:
        _no_data(ax, f"{key} was not logged")
        return
    window = _window(len(values)) if rolling else 1
    smooth = _rolling(steps, values, window)
    if values:
        ax.plot(steps, values, color=color, alpha=0.35 if smooth[0] else 1.0, linewidth=1, label=label)
    if smooth[0]:
        ax.plot(*smooth, color=color, linewidth=2, label=f"rolling mean ({window} steps)")
    if eval_values:
        ax.plot(eval_steps, eval_values, "o", color="black", markersize=5, label="eval (held-out prompts)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def training_curves_figure(rows: Sequence[Mapping], *, title: str = "PPO training"):
    fig, axes = _figure(11, 7.2, rows=2, cols=2)
    (score_ax, kl_ax), (beta_ax, clip_ax) = axes
    _train_panel(score_ax, rows, "score_mean", title="Mean reward", ylabel="reward", label="train batch mean",
                 color=PALETTE[0], eval_key="score")
    prob_steps, probs = _series(rows, "positive_probability", "eval")
    if probs:  # a probability is on another scale than the raw score: its own axis on the right
        right = score_ax.twinx()
        right.plot(prob_steps, probs, "s--", color=PALETTE[1], markersize=5, linewidth=1, label="eval P(positive)")
        right.set_ylim(0, 1)
        right.set_ylabel("P(positive)")
        handles, labels = score_ax.get_legend_handles_labels()
        extra = right.get_legend_handles_labels()
        score_ax.legend(handles + extra[0], labels + extra[1], fontsize="small", loc="lower right")
    _train_panel(kl_ax, rows, "kl", title="KL to the reference (SFT) model", ylabel="KL (nats / response)",
                 label="train batch", color=PALETTE[3], eval_key="kl")
    _train_panel(beta_ax, rows, "beta", title="KL coefficient β", ylabel="β", label="β", color=PALETTE[2], rolling=False)
    _train_panel(clip_ax, rows, "clip_fraction", title="Clip fraction", ylabel="share of tokens clipped",
                 label="per step", color=PALETTE[4])
    fig.suptitle(title)
    return fig


def training_curves(rows: Sequence[Mapping], path: str | os.PathLike, *, title: str = "PPO training") -> Path:
    """2x2 PPO curves from metrics.jsonl rows: mean reward (train batches with a rolling mean,
    eval score and P(positive) as markers), KL, β and clip fraction against the step."""
    return save_figure(training_curves_figure(rows, title=title), path)


def loss_curves_figure(rows: Sequence[Mapping], *, title: str = "SFT loss", ylabel: str = "loss (nats / token)",
                       key: str = "loss"):
    steps, values = _series(rows, key, "train")
    val_steps, val_values = _series(rows, key, "validation")
    fig, axes = _figure(7, 4)
    ax = axes[0][0]
    if values:
        ax.plot(steps, values, color=PALETTE[0], linewidth=1.5, label="train (mean over each log window)")
    if val_values:
        ax.plot(val_steps, val_values, "o-", color=PALETTE[1], linewidth=1.5, markersize=6, label="validation")
    if not values and not val_values:
        _no_data(ax, f"{key} was not logged")
    else:
        ax.legend(fontsize="small")
    ax.set_xlabel("optimizer step")
    _integer_steps(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig


def loss_curves(rows: Sequence[Mapping], path: str | os.PathLike, *, title: str = "Training loss",
                ylabel: str = "loss", key: str = "loss") -> Path:
    """Train and validation `key` against the step, from metrics.jsonl rows (any stage)."""
    return save_figure(loss_curves_figure(rows, title=title, ylabel=ylabel, key=key), path)


def sft_curves(rows: Sequence[Mapping], path: str | os.PathLike, *, title: str = "SFT loss") -> Path:
    """SFT train/validation loss (nats per token) against the step."""
    return loss_curves(rows, path, title=title, ylabel="loss (nats / token)")


def metric_panels_figure(rows: Sequence[Mapping], panels: Sequence[tuple[str, Sequence[str]]], *, title: str):
    """One panel per (panel title, keys), two to a row: each key's train rows as a line and its
    validation rows as markers, against the optimizer step."""
    n_rows = -(-len(panels) // 2)
    fig, axes = _figure(11, 3.4 * n_rows + 0.4, rows=n_rows, cols=2)
    flat = [ax for row in axes for ax in row]
    drawn = 0
    for ax, (name, keys) in zip(flat, panels):
        for i, key in enumerate(keys):
            for split, style in (("train", "-"), ("validation", "o-")):
                steps, values = _series(rows, key, split)
                if values:
                    ax.plot(steps, values, style, color=_color(i), linewidth=1.5, markersize=5, label=f"{key} ({split})")
                    drawn += 1
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        else:
            _no_data(ax, f"{', '.join(keys)} not logged")
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        _integer_steps(ax)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if not drawn:
        raise RlhfLabError(f"None of {', '.join(k for _, keys in panels for k in keys)} was logged.")
    fig.suptitle(title)
    return fig


def metric_panels(rows: Sequence[Mapping], path: str | os.PathLike, panels: Sequence[tuple[str, Sequence[str]]], *,
                  title: str) -> Path:
    """Training curves of any stage from metrics.jsonl rows (see metric_panels_figure)."""
    return save_figure(metric_panels_figure(rows, panels, title=title), path)


# -- reward model confusion matrix ------------------------------------------------------


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], labels: Sequence[str], *,
                            title: str = "Confusion matrix"):
    cells = [[int(v) for v in row] for row in matrix]
    k = len(labels)
    if len(cells) != k or any(len(row) != k for row in cells):
        raise RlhfLabError(f"A confusion matrix for {k} labels must be {k}x{k}, got {matrix!r}.")
    fig, axes = _figure(5.0, 3.7)
    ax = axes[0][0]
    image = ax.imshow(cells, cmap="Blues", vmin=0)
    top = max(max(row) for row in cells) or 1
    for i, row in enumerate(cells):
        total = sum(row) or 1
        for j, value in enumerate(row):
            ax.text(j, i, f"{value}\n{value / total:.1%} of row", ha="center", va="center", fontsize="medium",
                    color="white" if value > top * 0.6 else "black")
    ax.set_xticks(range(k), labels=list(labels))
    ax.set_yticks(range(k), labels=list(labels))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    fig.colorbar(image, ax=ax, shrink=0.85, label="examples")
    fig.suptitle(title)  # over the whole figure: an axes title would run under the colour bar
    return fig


def confusion_matrix_plot(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike, *,
                          title: str = "Confusion matrix") -> Path:
    """Counts (and share of each true-label row) per cell: rows true label, columns predicted."""
    return save_figure(confusion_matrix_figure(matrix, labels, title=title), path)


def overoptimisation_figure(points: Sequence[Mapping], *, title: str = "Proxy and gold rewards against KL"):
    """Gao et al. (2022) style: each judge's mean score against √KL to the reference, one
    marker per checkpoint; the proxy solid, the gold judges dashed."""
    if not points:
        raise RlhfLabError("No checkpoints to plot.")
    fig, axes = _figure(6.6, 4.2)
    ax = axes[0][0]
    x = _floats([p["sqrt_kl"] for p in points], "sqrt_kl")
    ax.plot(x, _floats([p["proxy"] for p in points], "proxy"), marker="o", color=PALETTE[0], label="proxy (optimised)")
    for i, judge in enumerate(points[0]["gold"]):
        ax.plot(x, _floats([p["gold"][judge] for p in points], judge), marker="s", linestyle="--", color=_color(i + 1),
                label=f"gold: {judge}")
    span = (max(x) - min(x)) or 1.0
    labelled: list[float] = []
    for p, xi in zip(points, x):  # a label where it does not sit on another (late checkpoints bunch up)
        if all(abs(xi - other) > 0.06 * span for other in labelled):
            ax.annotate(str(p["name"]), (xi, p["proxy"]), fontsize=7, textcoords="offset points", xytext=(3, 4))
            labelled.append(xi)
    ax.set_xlabel("√KL to the reference model (√nats per response)")
    ax.set_ylabel("mean score of the judge")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return fig


def overoptimisation(points: Sequence[Mapping], path: str | os.PathLike, **kwargs) -> Path:
    return save_figure(overoptimisation_figure(points, **kwargs), path)


def text_signals_figure(points: Sequence[Mapping], *, title: str = "Separator ratio and diversity per checkpoint"):
    """The separator ratio and distinct-1/2 of the samples, one point per checkpoint."""
    if not points:
        raise RlhfLabError("No checkpoints to plot.")
    fig, axes = _figure(6.6, 3.8)
    ax = axes[0][0]
    x = list(range(len(points)))
    for i, (key, label) in enumerate((("separator_ratio", "separator ratio"), ("distinct_1", "distinct-1"),
                                      ("distinct_2", "distinct-2"))):
        ax.plot(x, _floats([p[key] for p in points], key), marker="o", color=_color(i), label=label)
    ax.set_xticks(x, [str(p["name"]) for p in points], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return fig


def text_signals(points: Sequence[Mapping], path: str | os.PathLike, **kwargs) -> Path:
    return save_figure(text_signals_figure(points, **kwargs), path)


# -- several RL runs side by side (rlhflab compare) -------------------------------------


def runs_metric_figure(runs: Mapping[str, Sequence[Mapping]], key: str, *, title: str | None = None,
                       ylabel: str | None = None):
    """One curve per run of train metric `key` against the step, on shared axes."""
    fig, axes = _figure(8.5, 4.6)
    ax = axes[0][0]
    drawn = 0
    for i, (name, rows) in enumerate(runs.items()):
        steps, values = _series(rows, key, "train")
        if not values:
            continue
        color, window = _color(i), _window(len(values))
        smooth = _rolling(steps, values, window)
        if smooth[0]:  # the raw steps faintly, the rolling mean as the run's line
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(*smooth, color=color, linewidth=2, label=name)
        else:
            ax.plot(steps, values, color=color, linewidth=1.5, marker="o" if len(values) <= 20 else None,
                    markersize=3, label=name)
        drawn += 1
    if not drawn:
        raise RlhfLabError(f"No run logged {key}.")
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel or key)
    ax.grid(alpha=0.3)
    _integer_steps(ax)
    ax.legend(fontsize="x-small", ncols=2 if drawn > 6 else 1)
    ax.set_title(title or key)
    return fig


def runs_metric(runs: Mapping[str, Sequence[Mapping]], key: str, path: str | os.PathLike, *, title: str | None = None,
                ylabel: str | None = None) -> Path:
    """`key` from each run's metrics.jsonl train rows against the step, one colour per run."""
    return save_figure(runs_metric_figure(runs, key, title=title, ylabel=ylabel), path)


def reward_kl_frontier_figure(runs: Mapping[str, Sequence[tuple[float, float]]], *, ylabel: str = "held-out reward",
                              title: str = "Held-out reward against KL"):
    """One line per run through its evaluations (KL, reward) in step order; a star marks the last."""
    from matplotlib.lines import Line2D

    fig, axes = _figure(7.5, 4.8)
    ax = axes[0][0]
    drawn = 0
    for i, (name, pairs) in enumerate(runs.items()):
        if not pairs:
            continue
        kl, reward = _floats([p[0] for p in pairs], f"{name} KL"), _floats([p[1] for p in pairs], f"{name} reward")
        ax.plot(kl, reward, "-o", color=_color(i), markersize=3.5, linewidth=1.3, alpha=0.85, label=name)
        ax.plot(kl[-1], reward[-1], marker="*", markersize=14, color=_color(i), markeredgecolor="black", linestyle="none")
        drawn += 1
    if not drawn:
        raise RlhfLabError("No run has a held-out evaluation to plot.")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", markersize=11, color="white", markerfacecolor="#999999",
                          markeredgecolor="black", linestyle="none"))
    labels.append("last evaluation")
    ax.legend(handles, labels, fontsize="x-small", ncols=2 if drawn > 6 else 1)
    ax.set_xlabel("KL to the reference model (nats / response)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return fig


def reward_kl_frontier(runs: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike, *,
                       ylabel: str = "held-out reward", title: str = "Held-out reward against KL") -> Path:
    """The reward-KL frontier of several RL runs (see reward_kl_frontier_figure)."""
    return save_figure(reward_kl_frontier_figure(runs, ylabel=ylabel, title=title), path)
