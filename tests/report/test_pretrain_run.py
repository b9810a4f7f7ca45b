"""The report of a run without SFT (the Shakespeare preset: pretrain -> reward -> rl) speaks of
what that run did: its pretraining curve is titled as pretraining, and neither the overview nor
the RL section speaks of an SFT model it does not have."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.report import build_report
from tests.report.test_report import write_json, write_jsonl, write_rl


def write_pretrain(root: Path) -> None:
    folder = root / "pretrain"
    write_json(folder / "summary.json", {
        "after": {"train": {"loss": 2.1, "perplexity": 8.2}, "validation": {"loss": 2.3, "perplexity": 9.9}},
        "baselines": {"unigram": 30.1, "bigram": 14.2}, "epochs": [], "steps": 40, "seconds": 61.0,
        "corpus": {"source": "shakespeare.txt", "documents": 1}, "tokens": {"train": 9000, "validation": 1000},
        "tokenizer": {"kind": "char", "vocab_size": 65}, "model": {"architecture": "gpt2", "layers": 2}})
    write_jsonl(folder / "metrics.jsonl", [{"step": s, "split": "train", "loss": 3.0 - s / 40} for s in range(1, 41)]
                + [{"step": 40, "split": "validation", "loss": 2.3}])
    # a config from before the RL stage was renamed rl: its stages list says ppo
    (folder / "config.yaml").write_text("name: bard\nstages: [pretrain, reward, ppo]\n", encoding="utf-8")


def test_a_run_without_sft_is_reported_without_sft(tmp_path, monkeypatch):
    titles = []
    loss_curves_figure = plots.loss_curves_figure
    monkeypatch.setattr(plots, "loss_curves_figure", lambda rows, **kw: titles.append(kw["title"]) or
                        loss_curves_figure(rows, **kw))
    run = tmp_path / "runs" / "bard"
    write_pretrain(run)
    write_rl(run)
    _, md_path = build_report(run)
    markdown = md_path.read_text(encoding="utf-8")
    assert titles == ["Pretraining loss"]
    overview = markdown.split("## Pretraining")[0]
    assert "| Pretraining | done |" in overview and "| RL training | done |" in overview
    assert "Before → after: each tuned policy at its start against its end." in overview
    assert "SFT" not in markdown.split("## Configs")[0]  # the configs quote the handed config.yaml files as they are
