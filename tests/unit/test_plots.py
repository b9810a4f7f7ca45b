"""The report's figures: each writes a PNG atomically and is readable (title, axis labels,
a legend where several series share an axes). Checked on the Figure objects the `*_figure`
builders return, so no image comparison is needed."""

from __future__ import annotations

import stat
import statistics

import pytest

from rlhflab.errors import RlhfLabError
from rlhflab.eval import plots

PNG = b"\x89PNG\r\n\x1a\n"
SCORES = {"sft": [-0.9, -0.3, 0.1, 0.4, 0.6], "ppo": [0.5, 0.9, 1.0, 1.1, 1.2]}


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def legend_labels(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def figure_legend_labels(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def assert_png(path, folder) -> None:
    assert path.read_bytes()[:8] == PNG
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize("draw", [
    lambda p: plots.reward_histograms(SCORES, p),
    lambda p: plots.reward_overlay(SCORES, p),
    lambda p: plots.reward_map(SCORES["sft"], SCORES["ppo"], p),
    lambda p: plots.sentiment_breakdown({"sft": {"positive": 0.2, "negative": -0.1}}, p),
    lambda p: plots.training_curves([{"step": 1, "split": "train", "score_mean": 0.1, "kl": 0.0, "beta": 0.04,
                                      "clip_fraction": 0.2}], p),
    lambda p: plots.sft_curves([{"step": 10, "split": "train", "loss": 4.0}], p),
    lambda p: plots.confusion_matrix_plot([[5, 1], [2, 4]], ["negative", "positive"], p),
], ids=["histograms", "overlay", "map", "sentiment", "training", "sft", "confusion"])
def test_every_plot_writes_a_png_atomically_and_returns_its_path(tmp_path, draw):
    folder = tmp_path / "figures"
    path = draw(folder / "figure.png")
    assert path == folder / "figure.png"
    assert_png(path, folder)
    before = path.read_bytes()
    assert draw(path) == path  # drawing again replaces the file in place
    assert_png(path, folder)
    assert len(before) > 2000


def test_reward_histograms_share_bins_and_mark_each_mean():
    fig = plots.reward_histograms_figure(SCORES, xlabel="reward model score", title="Rewards")
    left, right = fig.axes
    assert fig.get_suptitle() == "Rewards"
    assert [left.get_title(), right.get_title()] == ["sft (n = 5)", "ppo (n = 5)"]
    assert left.get_xlabel() == right.get_xlabel() == "reward model score"
    assert left.get_ylabel() == "responses"
    assert left.get_xlim() == right.get_xlim()
    edges = lambda ax: [round(p.get_x(), 9) for p in ax.patches]
    assert edges(left) == edges(right) and len(edges(left)) == 20  # same bins in both panels
    assert f"mean = {statistics.fmean(SCORES['sft']):.3f}" in legend_labels(left)
    assert f"mean = {statistics.fmean(SCORES['ppo']):.3f}" in legend_labels(right)


def test_reward_histograms_reject_empty_input_and_mark_an_empty_model():
    with pytest.raises(RlhfLabError, match="no models"):
        plots.reward_histograms_figure({})
    with pytest.raises(RlhfLabError, match="no scores"):
        plots.reward_histograms_figure({"sft": []})
    with pytest.raises(RlhfLabError, match="finite"):
        plots.reward_histograms_figure({"sft": [float("nan")]})
    fig = plots.reward_histograms_figure({"sft": [0.5, 0.5], "ppo": []})  # equal scores: one bar, still drawn
    assert "no scores" in texts(fig)


def test_reward_overlay_has_both_models_in_the_legend_and_the_box_plot():
    fig = plots.reward_overlay_figure(SCORES, xlabel="P(positive)")
    hist, box = fig.axes
    assert hist.get_title() and box.get_title() and fig.get_suptitle() == "Distributions of P(positive) compared"
    assert hist.get_xlabel() == "P(positive)" and hist.get_ylabel() == "responses"
    assert box.get_ylabel() == "P(positive)" and box.get_xlabel() == "model"
    labels = legend_labels(hist)
    assert any(label.startswith("sft") for label in labels) and any(label.startswith("ppo") for label in labels)
    assert [t.get_text() for t in box.get_xticklabels()] == ["sft", "ppo"]


def test_reward_map_counts_better_and_worse_prompts_in_the_legend():
    fig = plots.reward_map_figure([0.0, 0.0, 0.5, 1.0], [1.0, 0.2, 0.1, 1.0], x_name="SFT", y_name="PPO")
    ax = fig.axes[0]
    assert ax.get_title() == "Reward map: SFT vs PPO, per prompt"
    assert ax.get_xlabel() == "SFT reward" and ax.get_ylabel() == "PPO reward"
    labels = figure_legend_labels(fig)
    assert "PPO = SFT" in labels
    assert "PPO higher: 50.0% (2/4)" in labels
    assert "PPO lower: 25.0% (1/4)" in labels
    assert "PPO equal: 25.0% (1/4)" in labels
    assert ax.get_xlim() == ax.get_ylim()  # square, so the diagonal is y = x


def test_reward_map_rejects_unpaired_or_empty_input():
    with pytest.raises(RlhfLabError, match="one PPO reward per SFT reward"):
        plots.reward_map_figure([0.1, 0.2], [0.3])
    with pytest.raises(RlhfLabError, match="no prompts"):
        plots.reward_map_figure([], [])


def test_sentiment_breakdown_orders_sentiments_and_skips_missing_values():
    fig = plots.sentiment_breakdown_figure({
        "sft": {"negative": -0.3, "positive": 0.4, "neutral": 0.1},
        "ppo": {"positive": 1.1, "neutral": None, "negative": 0.7},
    })
    ax = fig.axes[0]
    assert ax.get_title() == "Mean reward by prompt sentiment"
    assert ax.get_xlabel() == "prompt sentiment" and ax.get_ylabel() == "mean reward"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["positive prompts", "neutral prompts", "negative prompts"]
    assert legend_labels(ax) == ["sft", "ppo"]
    heights = [p.get_height() for p in ax.patches]
    assert heights[:3] == pytest.approx([0.4, 0.1, -0.3])
    assert heights[4] != heights[4]  # NaN: ppo has no neutral value, so no bar
    with pytest.raises(RlhfLabError):
        plots.sentiment_breakdown_figure({})


def ppo_rows(steps: int = 30) -> list[dict]:
    rows = [{"step": 0, "split": "eval", "kl": 0.0, "score": 0.1, "positive_probability": 0.55}]
    for step in range(1, steps + 1):
        rows.append({"step": step, "split": "train", "score_mean": step / steps, "kl": step * 0.2,
                     "beta": 0.04 + step * 1e-4, "clip_fraction": 0.2})
    rows.append({"step": steps, "split": "eval", "kl": 6.0, "score": 1.0, "positive_probability": 0.9})
    return rows


def test_training_curves_show_reward_kl_beta_and_clip_fraction():
    fig = plots.training_curves_figure(ppo_rows())
    score, kl, beta, clip, probability = fig.axes  # the last is the P(positive) twin axis
    assert [ax.get_title() for ax in (score, kl, beta, clip)] == [
        "Mean reward", "KL to the reference (SFT) model", "KL coefficient β", "Clip fraction"]
    assert all(ax.get_xlabel() == "PPO step" and ax.get_ylabel() for ax in (score, kl, beta, clip))
    assert probability.get_ylabel() == "P(positive)"
    assert legend_labels(score) == ["train batch mean", "rolling mean (6 steps)", "eval (held-out prompts)",
                                    "eval P(positive)"]
    assert "eval (held-out prompts)" in legend_labels(kl)
    eval_line = next(line for line in score.lines if line.get_label() == "eval (held-out prompts)")
    assert list(eval_line.get_xdata()) == [0.0, 30.0] and list(eval_line.get_ydata()) == [0.1, 1.0]


def test_training_curves_say_what_was_not_logged():
    rows = [{"step": s, "split": "train", "score_mean": 0.1 * s, "kl": 0.0, "beta": 0.04} for s in range(1, 4)]
    fig = plots.training_curves_figure(rows)
    assert "clip_fraction was not logged" in texts(fig)
    assert len(fig.axes) == 4  # no P(positive) axis without evaluations


def test_sft_curves_plot_train_and_validation_loss():
    rows = [{"step": 10, "split": "train", "loss": 4.1}, {"step": 20, "split": "train", "loss": 3.9},
            {"step": 20, "split": "validation", "loss": 4.0}]
    fig = plots.loss_curves_figure(rows, title="SFT loss", ylabel="loss (nats / token)")
    ax = fig.axes[0]
    assert ax.get_title() == "SFT loss" and ax.get_xlabel() == "optimizer step" and ax.get_ylabel()
    assert legend_labels(ax) == ["train (mean over each log window)", "validation"]
    assert "loss was not logged" in texts(plots.loss_curves_figure([]))


def test_confusion_matrix_annotates_counts_and_row_shares():
    fig = plots.confusion_matrix_figure([[453, 47], [71, 429]], ["negative (0)", "positive (1)"], title="Test")
    ax = fig.axes[0]
    assert fig.get_suptitle() == "Test"
    assert ax.get_xlabel() == "predicted label" and ax.get_ylabel() == "true label"
    assert "453\n90.6% of row" in texts(fig) and "71\n14.2% of row" in texts(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["negative (0)", "positive (1)"]
    with pytest.raises(RlhfLabError, match="2x2"):
        plots.confusion_matrix_figure([[1, 2, 3]], ["a", "b"])
