"""The report section of the pretrain stage (rlhflab/stages/pretrain.py), and its line in the pipeline."""

from __future__ import annotations

from pathlib import Path

from rlhflab.eval import plots
from rlhflab.eval.document import Block, Heading, Preformatted, Table
from rlhflab.eval.sections.base import Figures, Stage, _facts, _num, _params, _pct, _seconds, _text, _unfinished
from rlhflab.stages.registry import STAGES
from rlhflab.summaries import PretrainSummary


def section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    """Pretraining: loss and perplexity beside n-gram baselines, per-epoch table, curves, samples."""
    blocks: list[Block] = [Heading(STAGES["pretrain"].title, anchor="pretrain")]
    curves = lambda caption: figures.draw(plots.loss_curves, "pretrain_loss", stage.rows, title="Pretraining loss",
                                          ylabel="loss (nats / token)", caption=caption)
    if not stage.done:
        return blocks + _unfinished(stage, run_root, curves, "Pretraining loss so far.")
    s: PretrainSummary = stage.summary
    after, base = s.after, s.baselines or {}
    rows = [[split, _num(after[split].get("loss")), _num(after[split].get("perplexity"), 2)] for split in after]
    rows += [[f"{name} model (validation)", "-", _num(base.get(name), 2)] for name in ("unigram", "bigram") if name in base]
    blocks.append(Table(["", "loss", "perplexity"], rows,
                        caption="The pretrained model on train and validation (nats per token), beside smoothed unigram "
                                "and bigram models of the same tokens: what the transformer learned beyond counts."))
    epochs = s.epochs or []
    if epochs:
        blocks.append(Table(["epoch", "train loss", "train perplexity", "validation loss", "validation perplexity"],
                            [[str(e.get("epoch")), _num(e.get("train_loss")), _num(e.get("train_perplexity"), 2),
                              _num(e.get("validation_loss")), _num(e.get("validation_perplexity"), 2)] for e in epochs],
                            caption="Per epoch: mean train loss logged during it and validation loss at its end."))
    if stage.rows:
        blocks.append(curves("Pretraining loss: train (mean over each log window) and validation."))
    corpus, tokens, tok, model = s.corpus or {}, s.tokens or {}, s.tokenizer or {}, s.model or {}
    blocks.append(_facts([
        ("corpus", f"{corpus.get('source', '-')}: {corpus.get('documents', '-')} document{'s' * (corpus.get('documents') != 1)}"),
        ("removed in cleaning", ", ".join(f"{v} {k}" for k, v in (corpus.get("removed") or {}).items()) or "-"),
        ("tokens (train / validation)", f"{tokens.get('train', 0):,} / {tokens.get('validation', 0):,}"),
        ("tokenizer", f"{tok.get('kind', '-')}, {tok.get('vocab_size', '-')} entries, "
                      f"{_pct(tok.get('unknown_share_validation'))} unknown in validation"),
        ("model", f"{model.get('architecture', '-')}: {model.get('layers')} layer{'s' * (model.get('layers') != 1)}, "
                  f"width {model.get('width')}, {model.get('heads')} head{'s' * (model.get('heads') != 1)}, "
                  f"context {model.get('context')}"),
        ("parameters", _params(model.get("parameters"))),
        ("optimizer steps", s.steps),
        ("epochs completed", s.epochs_completed),
        ("stopped early", _text(s.stopped_early)),
        ("train tokens/s", _num(s.train_tokens_per_s, 0)),
        ("wall time", _seconds(s.seconds)),
    ]))
    samples = s.samples or []
    if samples:
        blocks.append(Heading("Samples from the pretrained model (unedited)", level=3))
        blocks += [Preformatted(f"{r.get('prompt', '')}{r.get('response', '')}") for r in samples]
    return blocks


def line(summary: PretrainSummary) -> str:
    base = summary.baselines
    return (f"validation perplexity {summary.after['validation']['perplexity']:.1f} "
            f"(bigram {base['bigram']:.1f}, unigram {base['unigram']:.1f})")
