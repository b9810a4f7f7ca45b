"""`rlhflab report`: report.md and a self-contained report.html from a run directory written
here by hand in the stages' real formats (summary.json, metrics.jsonl, samples.jsonl,
config.yaml), so no model is trained or loaded."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhflab.cli import main
from rlhflab.errors import RlhfLabError
from rlhflab.eval import report as report_module
from rlhflab.eval.document import md_text
from rlhflab.eval.report import build_report
from tests.helpers import assert_user_error

SECTIONS = ["Overview", "Supervised fine-tuning", "Reward model", "RL training", "Evaluation", "Human ratings", "Configs"]
EVIL = "<script>alert('x')</script> | `tick` *bold*"
SENTIMENTS = ("positive", "neutral", "negative")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def config(name: str, stage: str) -> str:
    return f"name: {name}\nseed: 0\nruns_dir: runs\n{stage}:\n  learning_rate: 0.0002\n  marker: {stage}-config\n"


def classification(loss, accuracy, matrix):
    return {"loss": loss, "accuracy": accuracy, "precision": accuracy, "recall": accuracy, "f1": accuracy,
            "precision_positive": accuracy, "recall_positive": accuracy, "f1_positive": accuracy,
            "confusion_matrix": matrix, "n": sum(map(sum, matrix))}


def write_sft(root: Path) -> None:
    folder = root / "sft"
    write_json(folder / "summary.json", {
        "model": "smollm2-135m", "trainable": [-2, -1], "parameters": {"trainable": 7080192, "total": 134515008},
        "examples": {"train": 1200, "validation": 400, "test": 400}, "steps": 150, "epochs_completed": 2,
        "stopped_early": False,
        "before": {"validation": {"loss": 4.2139, "perplexity": 67.6204, "tokens": 25119}},
        "after": {"train": {"loss": 3.8895, "perplexity": 48.8878, "tokens": 75301},
                  "validation": {"loss": 3.9959, "perplexity": 54.3748, "tokens": 25119},
                  "test": {"loss": 3.9944, "perplexity": 54.2918, "tokens": 25087}},
        "frozen_cache": {"used": True, "first_trainable_block": 28, "seconds": 48.4},
        "train_tokens_per_s": 1045.2, "peak_memory_mb": 2801.0, "device": "cpu", "mixed_precision": "bf16",
        "seconds": 271.1})
    rows = [{"step": s, "epoch": s // 80, "split": "train", "loss": 4.2 - s / 500, "perplexity": 60.0, "lr": 1e-4,
             "tokens_per_s": 1000.0} for s in range(10, 160, 10)]
    rows += [{"step": 75, "epoch": 1, "split": "validation", "loss": 4.01, "perplexity": 55.1, "tokens": 25119},
             {"step": 150, "epoch": 2, "split": "validation", "loss": 3.9959, "perplexity": 54.3748, "tokens": 25119}]
    write_jsonl(folder / "metrics.jsonl", rows)
    (folder / "config.yaml").write_text(config(root.name, "sft"), encoding="utf-8")


def write_reward(root: Path, objective: str = "labels") -> None:
    folder = root / "reward"
    if objective == "pairs":
        metrics = {split: {"loss": 0.5, "pairwise_accuracy": acc, "mean_margin": 0.75, "n": 100}
                   for split, acc in (("train", 0.91), ("validation", 0.8123), ("test", 0.7877))}
    else:
        metrics = {"train": classification(0.2128, 0.9293, [[1398, 102], [110, 1390]]),
                   "validation": classification(0.3608, 0.855, [[433, 67], [78, 422]]),
                   "test": classification(0.3058, 0.882, [[453, 47], [71, 429]])}
    summary = {"objective": objective, "model": "minilm-l6", "trainable": "all",
               "parameters": {"trainable": 22713601, "total": 22713601},
               "examples": {"train": 3000, "validation": 1000, "test": 1000}, "metrics": metrics,
               "normalization": {"objective": objective, "gain": 0.419, "bias": 0.028, "reference": "validation split",
                                 "base_model": "minilm-l6"},
               "steps": 188, "epochs_completed": 2, "stopped_early": False,
               "frozen_cache": {"used": False, "first_trainable_block": None, "seconds": 0.0},
               "train_examples_per_s": 17.1, "peak_memory_mb": 2122.0, "device": "cpu", "mixed_precision": "bf16",
               "seconds": 466.9}
    if objective == "labels":
        summary["confusion_matrix_test"] = metrics["test"]["confusion_matrix"]
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "metrics.jsonl", [{"step": s, "epoch": 0, "split": "train", "loss": 0.7 - s / 400, "lr": 1e-5,
                                            "examples_per_s": 17.0} for s in range(10, 190, 10)]
                + [{"step": 188, "epoch": 2, "split": "validation", **metrics["validation"]}])
    (folder / "config.yaml").write_text(config(root.name, "reward"), encoding="utf-8")


def write_rl(root: Path) -> None:
    folder = root / "rl"
    evaluations = [{"step": 0, "kl": 0.0, "score": 0.1421, "positive_probability": 0.5489},
                   {"step": 20, "kl": 4.1657, "score": 0.6405, "positive_probability": 0.7461},
                   {"step": 40, "kl": 7.7305, "score": 1.0556, "positive_probability": 0.9}]
    write_json(folder / "summary.json", {
        "policy": "runs/demo/sft", "reward": "runs/demo/reward (reward_model, score)", "trainable": [-2, -1],
        "parameters": {"trainable": 7080192, "total": 134515008},
        "reference": "shared frozen blocks + copy of the trainable top", "steps": 40,
        "start": evaluations[0], "end": evaluations[-1], "evaluations": evaluations, "final_beta": 0.0405,
        "rollout_tokens_per_s": 268.9, "train_tokens_per_s": 944.4, "peak_memory_mb": 2105.2, "device": "cpu",
        "mixed_precision": "bf16", "seconds": 640.6})
    rows = []
    for step in range(1, 41):
        rows.append({"step": step, "split": "train", "score_mean": step / 40, "score_std": 0.5, "kl": step / 5,
                     "beta": 0.04, "non_score_reward": -0.01, "response_length": 24.0, "stopped_fraction": 0.0,
                     "policy_loss": -0.05, "value_loss": 0.05, "entropy": 4.0, "explained_variance": 0.1,
                     "clip_fraction": 0.17, "approx_kl": 0.03, "ratio_mean": 1.03, "value_clip_fraction": 0.0,
                     "rollout_tokens_per_s": 300.0, "train_tokens_per_s": 900.0})
        if step % 20 == 0:
            rows.append({"split": "eval", **evaluations[step // 20]})
    write_jsonl(folder / "metrics.jsonl", [{"step": 0, "split": "eval", **evaluations[0]}] + rows)
    early = [{"step": 20, "prompt": f"early prompt {i}", "response": f" early reply {i} " + "and on " * 40 + "to the end",
              "score": 0.1 * i, "kl": 2.0} for i in range(4)]  # responses longer than a table cell shows
    write_jsonl(folder / "samples.jsonl", early + [{"step": 40, "prompt": f"training prompt {i}", "response": f" reply {i}",
                                                    "score": 0.9, "kl": 5.5} for i in range(6)])
    (folder / "config.yaml").write_text(config(root.name, "ppo"), encoding="utf-8")


def model_summary(name: str, mean: float, above: float) -> dict:
    return {"source": f"runs/demo/{name}", "parameters": 134515008, "size_mb": 513.1 if name == "sft" else 513.4,
            "score": {"mean": mean, "median": mean + 0.01, "std": 0.4},
            "positive_probability": {"mean": 0.55 if name == "sft" else 0.9, "median": 0.6, "above_half": above},
            "kl_to_reference": 0.0 if name == "sft" else 7.7305, "perplexity_under_reference": 18.25 if name == "sft" else 31.4,
            "distinct_1": 0.612, "distinct_2": 0.934, "mean_length": 23.9,
            "by_sentiment": {s: {"n": 4, "score": mean + k / 10, "positive_probability": 0.5 + k / 10}
                             for k, s in enumerate(SENTIMENTS)}}


def write_evaluate(root: Path, best_of: dict | None = None) -> None:
    folder = root / "evaluate"
    samples = []
    for pid in range(12):
        sentiment = SENTIMENTS[pid % 3]
        for model, score in (("sft", -0.5 + pid / 12), ("ppo", 0.5 + pid / 20 if pid != 3 else -0.9)):
            response = EVIL if (pid, model) == (0, "ppo") else f" {model} answer to prompt {pid}"
            samples.append({"prompt_id": pid, "prompt": f"{sentiment} prompt {pid}", "sentiment": sentiment,
                            "model": model, "source": f"runs/demo/{model}", "response": response, "score": score,
                            "positive_probability": 0.5 + score / 3})
    write_jsonl(folder / "samples.jsonl", samples)
    write_json(folder / "summary.json", {
        "prompts": 12, "reward": "runs/demo/reward (reward_model, score)", "reference": "sft",
        "models": {"sft": model_summary("sft", -0.0417, 0.4167), "ppo": model_summary("ppo", 0.7012, 0.9167)},
        "comparison": {"ppo": {"vs": "sft", "better": 11 / 12, "worse": 1 / 12, "same": 0.0, "mean_delta": 0.7429}},
        "figures": {"reward_histograms": "figures/reward_histograms.png"}, "seconds": 95.2,
        **({"best_of": best_of} if best_of else {})})
    (folder / "config.yaml").write_text(config(root.name, "evaluate"), encoding="utf-8")


BEST_OF = {"model": "sft", "prompts": 64, "drawn": 16, "rows": [
    {"n": 1, "score": 0.1, "positive_probability": 0.55, "kl_bound": 0.0, "judges": {"vader": 0.61}},
    {"n": 4, "score": 0.5432, "positive_probability": 0.7321, "kl_bound": 0.636294, "judges": {"vader": 0.7344}},
    {"n": 16, "score": 0.9876, "positive_probability": 0.8771, "kl_bound": 1.830084, "judges": {"vader": 0.8125}}],
    "optimum": [{"kl": 0.5, "score": 0.7, "positive_probability": 0.8012}, {"kl": 2.0, "score": 1.2, "positive_probability": 0.9104}]}


def pair_metrics(loss, accuracy, chosen, rejected, pairs):
    return {"loss": loss, "pair_accuracy": accuracy, "chosen_reward": chosen, "rejected_reward": rejected,
            "margin": chosen - rejected, "pairs": pairs}


def write_dpo(root: Path, *, probability: bool = True, pairs: bool = True) -> dict:
    folder = root / "dpo"
    start = {"kl": 0.0, "score": 0.1234, "positive_probability": 0.7012}
    end = {"kl": 0.4817, "score": 0.3456, "positive_probability": 0.7523}
    if not probability:
        start, end = ({k: v for k, v in x.items() if k != "positive_probability"} for x in (start, end))
    counts = {"train": 96, "validation": 12, "test": 12}
    summary = {
        "algorithm": "dpo", "loss": "ipo", "beta": 0.1, "policy": "runs/tuned/sft", "reward": "runs/tuned/reward (reward_model, score)",
        "pairs": {"source": "on-policy", "prompts": 128, "samples_per_prompt": 4, "left_out": {"all samples scored the same": 8},
                  **counts},
        "trainable": [-2, -1], "parameters": {"trainable": 7080192, "total": 134515008}, "left_out": {},
        "before": {split: pair_metrics(0.6931, 0.0, 0.0, 0.0, n) for split, n in counts.items()},
        "after": {"train": pair_metrics(0.5123, 0.8125, 0.2311, -0.1422, 96),
                  "validation": pair_metrics(0.6402, 0.5833, 0.0411, -0.0201, 12),
                  "test": pair_metrics(0.6511, 0.5417, 0.0388, -0.0152, 12)},
        "start": start, "end": end, "steps": 24, "epochs_completed": 2, "stopped_early": False, "train_pairs_per_s": 7.31,
        "frozen_cache": {"used": False, "first_trainable_block": None, "seconds": 0.0},
        "peak_memory_mb": 1834.0, "device": "cpu", "processes": 1, "mixed_precision": "no", "seconds": 312.4}
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "metrics.jsonl",
                [{"step": s, "split": "train", "epoch": s // 12, "loss": 0.69 - s / 200, "lr": 5e-6, "pairs_per_s": 7.0}
                 for s in range(4, 28, 4)]
                + [{"step": s, "split": "validation", "epoch": s // 12, **pair_metrics(0.66, 0.5 + s / 300, 0.02, -0.01, 12)}
                   for s in (12, 24)])
    if pairs:
        write_jsonl(folder / "pairs.jsonl", [{"prompt": f"pair prompt {i}", "chosen": f" great reply {i}", "rejected": f" awful reply {i}",
                                              "chosen_score": 0.9 + i / 100, "rejected_score": -0.8} for i in range(6)])
    (folder / "config.yaml").write_text(config(root.name, "dpo"), encoding="utf-8")
    return summary


def write_ilql(root: Path, *, probability: bool = True) -> dict:
    folder = root / "ilql"
    by_beta = {"0.0": {"kl": 0.1203, "score": 0.0934, "positive_probability": 0.6011},
               "1.0": {"kl": 0.5521, "score": 0.2187, "positive_probability": 0.6412},
               "4.0": {"kl": 2.1043, "score": 0.4561, "positive_probability": 0.7788}}
    start = {"kl": 0.0, "score": 0.0812, "positive_probability": 0.5934}
    rows = [{"beta": float(b), "prompt": f"ilql prompt {i}", "response": f" beta {b} reply {i}", "kl": 0.5, "score": 0.25,
             "positive_probability": 0.625} for b in by_beta for i in range(5)]
    if not probability:
        start, by_beta, rows = ({k: v for k, v in start.items() if k != "positive_probability"},
                                {b: {k: v for k, v in m.items() if k != "positive_probability"} for b, m in by_beta.items()},
                                [{k: v for k, v in r.items() if k != "positive_probability"} for r in rows])
    terms = lambda scale, actions: {"loss": 2.3456 * scale, "q": 0.1234, "v": 0.0456, "cql": 3.2109, "awac": 3.0123, "actions": actions}
    summary = {
        "algorithm": "ilql", "policy": "runs/tuned/sft",
        "samples": {"source": "imdb reviews, label as reward", "train": 900, "validation": 100, "reward_mean": 0.5011,
                    "reward_std": 0.5002},
        "reward": "runs/tuned/reward (reward_model, score)", "beta": 1.0, "trainable": [-2, -1],
        "parameters": {"trainable": 7700000, "total": 135000000}, "left_out": {},
        "after": {"train": terms(1.0, 45000), "validation": terms(1.1, 5012)},
        "start": start, "end": by_beta["1.0"], "by_beta": by_beta, "steps": 30, "epochs_completed": 1,
        "stopped_early": False, "train_tokens_per_s": 2345.6,
        "frozen_cache": {"used": False, "first_trainable_block": None, "seconds": 0.0},
        "peak_memory_mb": 2210.0, "device": "cpu", "processes": 1, "mixed_precision": "no", "seconds": 200.1}
    write_json(folder / "summary.json", summary)
    write_jsonl(folder / "metrics.jsonl",
                [{"step": s, "split": "train", "epoch": 0, "loss": 3.0 - s / 60, "lr": 1e-4, "tokens_per_s": 2300.0}
                 for s in range(5, 35, 5)] + [{"step": 30, "split": "validation", "epoch": 0, **terms(1.1, 5012)}])
    write_jsonl(folder / "eval_after.jsonl", rows)
    (folder / "config.yaml").write_text(config(root.name, "ilql"), encoding="utf-8")
    return summary


def write_ratings(root: Path) -> None:
    """The run's own ratings, where `rlhflab rate summary` writes them (<run>/human/<task>/)."""
    write_json(root / "human" / "rating-sft-vs-ppo" / "rating_summary.json", {
        "task": "rating-sft-vs-ppo", "created_at": "2025-11-21T06:00:00Z", "prompts": 20, "items": 40, "raters": 2,
        "ratings": 80, "alpha": 0.05,
        "models": [{"model": m, "source": f"runs/demo/{m}", "responses": 20, "ratings": 40,
                    "reward": {"mean": r, "std": 0.5, "n": 20}, "positivity": {"mean": p, "std": 1.0, "n": 40},
                    "sense": {"mean": 3.4, "std": 0.8, "n": 40}} for m, r, p in (("sft", -0.1, 2.9), ("ppo", 1.0, 4.17))],
        "comparisons": [{"model": "ppo", "baseline": "sft", "metric": "positivity", "test": "wilcoxon", "paired": True,
                         "n": 20, "mean_difference": 1.27, "statistic": 12.0, "p_value": 0.003, "significant": True}]})


def full_run(runs: Path) -> Path:
    root = runs / "demo"
    write_sft(root)
    write_reward(root)
    write_rl(root)
    write_evaluate(root)
    write_ratings(root)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str, str]:
    """One full report shared by the tests that only read it (a build draws nine figures, ~1 s)."""
    root = full_run(tmp_path_factory.mktemp("full") / "runs")
    html_path, md_path = build_report(root)
    return root, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


KEY_NUMBERS = [
    "67.620", "54.375", "54.292", "3.996",           # SFT perplexity before/after, test, validation loss
    "0.882", "0.855", "453", "429",                  # reward accuracy (test, validation), confusion counts
    "0.142", "1.056", "7.731", "+0.914", "0.0405",   # PPO start/end reward, end KL, change, final beta
    "-0.042", "0.701", "91.7%", "8.3%", "+0.743",    # evaluation means, better/worse shares, mean change
    "41.7%", "31.40", "0.934", "513.4",              # share above 0.5, perplexity, distinct-2, size in MB
    "271 s", "467 s", "641 s", "95 s",               # wall time per stage
    "sft-config", "ppo-config", "evaluate-config",   # each stage's config.yaml
    "rating-sft-vs-ppo", "4.17",                     # human ratings
]


def test_report_has_every_section_and_the_key_numbers_in_both_files(built):
    _, html, md = built
    for section in SECTIONS:
        assert f"## {section}\n" in md
        assert re.search(rf"<h2 id=\"[a-z]+\">{re.escape(section)}</h2>", html), section
    for number in KEY_NUMBERS:
        assert number in md, number
        assert number in html, number
    for heading in ("By prompt sentiment", "Samples side by side"):
        assert f"### {heading}" in md and f"<h3>{heading}</h3>" in html
    assert "not run" not in md.lower()


def test_html_is_one_self_contained_file(built):
    root, html, _ = built
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "<script" not in html  # no scripts at all, and the sample's is escaped
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', html)
    figures = sorted((root / "report" / "figures").glob("*.png"))
    assert len(images) == len(figures) == html.count("<img")
    assert {base64.b64decode(data) for data in images} == {p.read_bytes() for p in figures}
    assert '<details><summary>rl/config.yaml</summary><pre>' in html


def test_the_rl_section_shows_entropy_length_and_value_panels_and_every_sample(built):
    _, html, md = built
    assert "](figures/ppo_diagnostics.png)" in md
    for panel in ("policy entropy", "response length", "value loss", "explained variance"):
        assert panel in md.split("](figures/ppo_diagnostics.png)")[0].rsplit("![", 1)[1]
    assert "### All 10 samples" in md and "<h3>All 10 samples</h3>" in html
    # one collapsible table per sampled step, each response whole (the last step's short table cuts them)
    assert "<details><summary>step 20: 4 samples, mean reward 0.150</summary><table" in html
    assert "<details><summary>step 40: 6 samples, mean reward 0.900</summary><table" in html
    for i in range(4):
        assert f" early reply {i} " + "and on " * 40 + "to the end" in html
    assert "**step 20: 4 samples, mean reward 0.150**" in md


def test_rl_algorithms_are_named_as_their_papers_write_them(tmp_path):
    root = tmp_path / "runs" / "demo"
    write_rl(root)
    for algorithm, shown in (("reinforce_pp", "REINFORCE++"), ("dr_grpo", "Dr. GRPO")):
        summary = json.loads((root / "rl" / "summary.json").read_text())
        write_json(root / "rl" / "summary.json", {**summary, "algorithm": algorithm})
        md = build_report(root)[1].read_text(encoding="utf-8")
        assert f"before and after {shown}." in md and f"| {md_text(shown)} |" in md
        assert algorithm.upper() not in md and md_text(algorithm.upper()) not in md


def test_the_report_draws_the_evaluation_figures_from_the_samples(built):
    root, _, md = built
    names = {p.name for p in (root / "report" / "figures").glob("*.png")}
    assert names == {"sft_loss.png", "reward_confusion.png", "reward_loss.png", "ppo_training.png", "ppo_diagnostics.png",
                     "eval_reward_histograms.png", "eval_reward_overlay.png", "eval_positive_probability.png",
                     "eval_reward_map_ppo.png", "eval_sentiment.png"}
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"figures/{n}" for n in names)  # relative links that resolve
    assert all((root / "report" / link).is_file() for link in links)


def test_model_text_is_escaped_in_both_files(built):
    _, html, md = built
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; | `tick` *bold*" in html
    assert r"&lt;script&gt;alert('x')&lt;/script&gt; \| \`tick\` \*bold\*" in md
    assert "<script>" not in md


def test_samples_side_by_side_show_a_handful_per_sentiment(built):
    _, html, md = built
    for sentiment in SENTIMENTS:
        assert f"{sentiment} prompts: the first 3 of 4." in md
    assert "positive prompt 0" in md and "positive prompt 9" not in md  # 3 of 4 positive prompts shown
    assert "reward -0.900" in html  # prompt 3, the one PPO made worse, is the second positive prompt
    assert "ppo answer to prompt 1" in md and "sft answer to prompt 1" in md


def test_missing_stages_say_not_run_and_name_the_command(tmp_path):
    root = tmp_path / "runs" / "only-ppo"
    write_rl(root)
    html_path, md_path = build_report(root)
    md, html = md_path.read_text(), html_path.read_text()
    for stage in ("sft", "reward", "evaluate"):
        assert f"Not run: {root / stage} does not exist. Produce it with <code>rlhflab {stage} name=only-ppo runs_dir=" in html
        assert f"does not exist. Produce it with `rlhflab {stage} name=only-ppo runs_dir=" in md
    assert "No human ratings" in md and "1.056" in md
    assert {p.name for p in (root / "report" / "figures").iterdir()} == {"ppo_training.png", "ppo_diagnostics.png"}


def test_an_interrupted_stage_points_at_resume_and_still_plots_its_curves(tmp_path):
    root = tmp_path / "runs" / "cut"
    write_reward(root)
    (root / "reward" / "summary.json").unlink()
    _, md_path = build_report(root)
    md = md_path.read_text()
    assert "reward has no summary.json" in md and "`rlhflab reward name=cut runs_dir=" in md and "--resume`" in md
    assert "figures/reward_loss.png" in md


def test_a_figure_the_data_cannot_make_becomes_a_note(tmp_path):
    root = tmp_path / "runs" / "odd"
    write_reward(root)
    summary = json.loads((root / "reward" / "summary.json").read_text())
    write_json(root / "reward" / "summary.json", {**summary, "confusion_matrix_test": [[1, 2, 3]]})
    _, md_path = build_report(root)
    md = md_path.read_text()
    assert "Figure reward\\_confusion was not drawn: A confusion matrix for 1 labels must be 1x1" in md
    assert "figures/reward_loss.png" in md  # the rest of the section is still there


def test_samples_without_scores_still_give_the_tables(tmp_path):
    root = tmp_path / "runs" / "odd"
    write_evaluate(root)
    rows = [json.loads(line) for line in (root / "evaluate" / "samples.jsonl").read_text().splitlines()]
    write_jsonl(root / "evaluate" / "samples.jsonl", [{**r, "score": None} for r in rows])  # no usable scores
    _, md_path = build_report(root)
    md = md_path.read_text()
    assert "figures/eval_positive_probability.png" in md and "eval_reward_histograms" not in md
    assert "## Evaluation" in md and "0.701" in md  # the tables still come from summary.json


def test_pairwise_reward_model_gets_its_own_table(tmp_path):
    root = tmp_path / "runs" / "pairs"
    write_reward(root, objective="pairs")
    _, md_path = build_report(root)
    md = md_path.read_text()
    assert "| split | loss | pairwise accuracy | mean margin | pairs |" in md
    assert "0.788" in md and "0.812" in md and "test pairwise accuracy" in md
    assert not (root / "report" / "figures" / "reward_confusion.png").exists()


def test_ratings_use_the_rating_apps_table(built):
    pytest.importorskip("rlhflab.human.summary")
    _, html, md = built
    assert "Blind rating `rating-sft-vs-ppo`" in md
    assert "| ppo vs sft | positivity | +1.27 |" in md and "<td>+1.27</td>" in html


def test_ratings_fall_back_to_generic_tables(tmp_path, monkeypatch):
    """Without the rating app (or with a summary it cannot format) the JSON shows as tables."""
    monkeypatch.setattr(report_module, "_rating_formatter", lambda: None)
    root = tmp_path / "runs" / "rated"
    (root / "rl").mkdir(parents=True)  # a stage folder, so there is a run to report
    write_json(root / "human" / "some-task" / "rating_summary.json",
               {"raters": 3, "note": "<b>hi</b>", "models": {"sft": {"mean": 2.5, "n": 9}, "ppo": {"mean": 4.25, "n": 9}},
                "pairs": [{"a": "sft", "b": "ppo", "b_wins": 7}]})
    html_path, md_path = build_report(root)
    md, html = md_path.read_text(), html_path.read_text()
    assert "| raters | 3 |" in md and "| ppo | 4.250 | 9 |" in md and "| sft | ppo | 7 |" in md
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi" not in html


def test_rebuilding_drops_stale_figures_but_not_foreign_files(tmp_path):
    run_root = tmp_path / "runs" / "demo"
    write_evaluate(run_root)
    write_rl(run_root)
    build_report(run_root)
    figures = run_root / "report" / "figures"
    (figures / "mine.png").write_bytes(b"not ours")
    for path in (run_root / "evaluate").iterdir():
        path.unlink()
    (run_root / "evaluate").rmdir()
    html_path, _ = build_report(run_root)
    assert not list(figures.glob("eval_*.png")) and (figures / "mine.png").exists()
    assert (figures / "ppo_training.png").exists()
    assert "Not run:" in html_path.read_text()


def test_out_dir_leaves_the_run_untouched(tmp_path):
    run_root = tmp_path / "runs" / "demo"
    write_rl(run_root)
    out = tmp_path / "elsewhere"
    html_path, md_path = build_report(run_root, out)
    assert (html_path, md_path) == (out / "report.html", out / "report.md")
    assert (out / "figures" / "ppo_training.png").exists() and not (run_root / "report").exists()


def test_a_missing_or_empty_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(RlhfLabError, match="is not a folder"):
        build_report(tmp_path / "nope")
    runs = tmp_path / "runs"
    write_rl(runs / "demo")
    with pytest.raises(RlhfLabError, match=r"none of the stage folders.*pass one of them"):
        build_report(runs)  # runs/ itself instead of runs/demo


def test_cli_prints_both_paths_with_the_html_last(tmp_path, capsys):
    run_root = tmp_path / "runs" / "demo"
    write_sft(run_root)
    assert main(["report", str(run_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(run_root / "report" / "report.md"), str(run_root / "report" / "report.html")]
    assert main(["report", str(run_root), "--out", str(run_root / "r2")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(run_root / "r2" / "report.html")


def test_cli_exit_code_2_for_a_bad_run_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "none of the stage folders" in capsys.readouterr().err


def test_cli_import_stays_light_and_errors_have_no_traceback(tmp_path):
    code = "import sys, rlhflab.cli; print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    result = subprocess.run([sys.executable, "-m", "rlhflab.cli", "report", str(tmp_path / "missing")],
                            capture_output=True, text=True, check=False)
    assert_user_error(result, "is not a folder")


def test_dpo_ilql_and_best_of_n_get_their_sections_tables_and_headlines(tmp_path):
    root = tmp_path / "runs" / "tuned"
    write_sft(root)
    write_dpo(root)
    write_ilql(root)
    write_evaluate(root, best_of=BEST_OF)
    html_path, md_path = build_report(root)
    md, html = md_path.read_text(), html_path.read_text()
    for section in ("Direct preference optimisation", "Offline RL (ILQL)"):
        assert f"## {section}\n" in md and f">{section}</h2>" in html
    dpo, ilql = md.split("## Direct preference optimisation")[1].split("## Offline RL (ILQL)")
    ilql = ilql.split("## Evaluation")[0]
    # DPO: held-out start/end, pair metrics before -> after, facts, example pairs
    assert "| held-out prompts | start | end (step 24) | change |" in dpo
    assert "| P(positive) | 0.701 | 0.752 | +0.051 |" in dpo and "| KL to the starting model (nats / response) | 0.000 | 0.482 | +0.482 |" in dpo
    assert "| validation | 12 | 0.693 → 0.640 | 0.000 → 0.583 | 0.000 → 0.061 |" in dpo
    for fact in ("IPO (Azar et al. 2023)", "| β | 0.100 |", "4 samples of the starting policy for each of 128 training prompts",
                 "train 96 / validation 12 / test 12", "8 (all samples scored the same)", "| train pairs/s | 7.3 |",
                 "1834 MB", "312 s (5.2 min)", "figures/dpo_training.png"):
        assert fact in dpo, fact
    assert "The first 4 of 6 pairs" in dpo and "AI feedback" in dpo
    assert "| pair prompt 3 | great reply 3 | awful reply 3 | 0.930 | -0.800 |" in dpo and "pair prompt 4" not in dpo
    # ILQL: every beta beside the start, the loss terms, facts, samples at the default beta
    assert "| held-out prompts | start | β = 0 | β = 1 | β = 4 |" in ilql
    assert "| P(positive) | 0.593 | 0.601 | 0.641 | 0.779 |" in ilql and "| KL to the starting model (nats / response) | 0.000 | 0.120 | 0.552 | 2.104 |" in ilql
    assert "logits + β(Q − V)" in ilql and "β = 0 is the AWAC-trained language model alone" in ilql
    assert "| validation | 2.580 | 0.123 | 0.046 | 3.211 | 3.012 | 5012 |" in ilql
    for fact in ("imdb reviews, label as reward; train 900 / validation 100", "mean 0.501, std 0.500", "| generation β (default) | 1 |",
                 "| train tokens/s | 2346 |", "2210 MB", "200 s (3.3 min)", "figures/ilql_training.png"):
        assert fact in ilql, fact
    assert "### Held-out samples at β = 1" in ilql and "| ilql prompt 3 | beta 1.0 reply 3 | 0.250 | 0.625 | 0.500 |" in ilql
    assert "beta 4.0 reply" not in ilql and "ilql prompt 4" not in ilql
    # best-of-n in the evaluation, after the per-model table
    evaluation = md.split("## Evaluation")[1]
    assert "| n | mean reward | P(positive) | KL bound (nats) | positive: vader |" in evaluation
    assert "| 4 | 0.543 | 0.732 | 0.636 | 73.4% |" in evaluation and "| 16 | 0.988 | 0.877 | 1.830 | 81.2% |" in evaluation
    assert "first 64 evaluation prompts, 16 samples each" in evaluation and "Stiennon et al. 2020" in evaluation
    assert evaluation.index("| metric | sft | ppo |") < evaluation.index("| n | mean reward |")
    assert "| KL budget (nats) | most mean reward | most P(positive) |" in evaluation and "| 2.000 | 1.200 | 0.910 |" in evaluation
    assert "the same 16 samples a prompt reweighted by exp(value / λ)" in evaluation
    # the overview's headline
    assert "| DPO | held-out P(positive) | 0.701 | 0.752 |" in md and "| DPO | KL to the starting model | 0.000 | 0.482 |" in md
    assert "| ILQL at β = 1 | held-out P(positive) | 0.593 | 0.641 |" in md and "| ILQL at β = 1 | KL to the starting model | 0.000 | 0.552 |" in md
    assert {"dpo_training.png", "ilql_training.png"} <= {p.name for p in (root / "report" / "figures").iterdir()}


def test_dpo_ilql_and_best_of_n_without_the_optional_keys(tmp_path):
    """No P(positive), no judges, no pairs.jsonl; then an unfinished DPO run with its curves so far."""
    root = tmp_path / "runs" / "sparse"
    write_dpo(root, probability=False, pairs=False)
    write_ilql(root, probability=False)
    write_evaluate(root, best_of={**BEST_OF, "rows": [{"n": 2, "score": 0.25, "positive_probability": None, "kl_bound": 0.193147}]})
    _, md_path = build_report(root)
    md = md_path.read_text()
    dpo = md.split("## Direct preference optimisation")[1].split("## Offline RL (ILQL)")[0]
    assert "| reward (score) | 0.123 | 0.346 | +0.222 |" in dpo and "P(positive)" not in dpo and "Example pairs" not in dpo
    assert "| ilql prompt 0 | beta 1.0 reply 0 | 0.250 | 0.500 |" in md
    assert "| n | mean reward | P(positive) | KL bound (nats) |\n" in md and "| 2 | 0.250 | - | 0.193 |" in md
    (root / "dpo" / "summary.json").unlink()
    _, md_path = build_report(root)
    md = md_path.read_text()
    assert "dpo has no summary.json" in md and "`rlhflab dpo name=sparse runs_dir=" in md
    assert "Training curves so far." in md and "figures/dpo_training.png" in md
    write_jsonl(root / "dpo" / "metrics.jsonl", [{"step": 1, "split": "train", "pairs_per_s": 7.0}])  # nothing to draw
    md = build_report(root)[1].read_text()
    assert "Figure dpo\\_training was not drawn: None of loss, pair\\_accuracy" in md and "dpo_training.png" not in md


def test_pipeline_headlines_for_dpo_and_ilql(tmp_path):
    from rlhflab.pipeline import headline

    dpo, ilql = write_dpo(tmp_path), write_ilql(tmp_path)
    assert headline("dpo", dpo) == "P(positive) 0.701 -> 0.752, KL 0.48, validation pair accuracy 0.583"
    assert headline("ilql", ilql) == "P(positive) 0.593 -> 0.641 at beta 1, KL 0.55"
    sparse = write_dpo(tmp_path / "b", probability=False)
    del sparse["after"]["validation"]
    assert headline("dpo", sparse) == "score 0.123 -> 0.346, KL 0.48"
    no_reward = {**ilql, "start": {"kl": 0.0}, "end": {"kl": 0.5521}, "beta": 4.0}
    assert headline("ilql", no_reward) == "KL 0.55 at beta 4"
