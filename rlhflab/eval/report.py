"""`rlhflab report RUN_DIR`: report.md and one self-contained report.html from a run's stage folders.

Reads only the run directory contract (DESIGN.md): each stage's summary.json, metrics.jsonl,
samples.jsonl and config.yaml (and dpo's pairs.jsonl and ilql's eval_after.jsonl), plus
the run's own human ratings (`human/<task>/rating_summary.json`). No model is loaded, so a
report of any run builds in seconds on a laptop. Any stage may be missing; its section then
says so and names the command that produces it.

A run folder may come from someone else, so it is read as data (rlhflab/eval/run_files.py): only
regular files inside it are read or embedded, never a symbolic link or a figure path that is
absolute or climbs out with `..`. The rule for a file that cannot be used (such a path, JSON or
YAML that does not parse, a YAML tag such as `!!python/object`, a list where an object goes, a
string where a number goes): what it feeds is shown as missing, with a note naming the file and
why, and the rest of the report still builds (exit 0). Only a run folder that is no run at all, or
an output folder that is a link, is an error (RlhfLabError).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

from rlhflab.config import Config
from rlhflab.errors import RlhfLabError
from rlhflab.eval import plots
from rlhflab.eval.document import (
    Block,
    Cell,
    Code,
    Document,
    Heading,
    Image,
    Preformatted,
    Table,
    para,
    to_html,
    to_markdown,
)
from rlhflab.eval.run_files import (
    SHAPE_ERRORS,
    HandedFileError,
    debug,
    first_line,
    read_json_lines,
    read_json_object,
    read_yaml_mapping,
    run_file,
    writable_folder,
)
from rlhflab.io import atomic_write_text
from rlhflab.stages.registry import STAGES  # each stage's title, overview rows and section

SPLITS = ("train", "validation", "test")
SAMPLES_PER_SENTIMENT = 3
SAMPLE_CHARS = 400  # responses longer than this are cut in the side-by-side tables
HELD_OUT = {"score": "reward (score)", "positive_probability": "P(positive)", "kl": "KL to the starting model (nats / response)"}


# -- reading the run directory ------------------------------------------------------------


@dataclass
class Stage:
    name: str
    path: Path
    summary: dict | None = None
    rows: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    config: str | None = None
    config_data: dict | None = None
    problems: list[str] = field(default_factory=list)  # files of this stage that were not used, and why

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def done(self) -> bool:
        return self.summary is not None


def load_stage(run_root: Path, name: str) -> Stage:
    """A stage's files, each through run_files; one that cannot be used is left out and said in
    `problems` (a summary.json left out makes the stage not done)."""
    stage = Stage(name, run_root / name)
    if not stage.exists:
        return stage
    try:
        run_file(run_root, name, folder=True)
    except HandedFileError as exc:
        stage.problems.append(str(exc))
        return stage
    try:
        stage.summary = read_json_object(run_root, f"{name}/summary.json")
    except HandedFileError as exc:
        stage.problems.append(str(exc))
    for attribute, file in (("rows", "metrics.jsonl"), ("samples", "samples.jsonl")):
        try:
            setattr(stage, attribute, read_json_lines(run_root, f"{name}/{file}"))
        except HandedFileError as exc:
            stage.problems.append(str(exc))
    try:
        stage.config, stage.config_data = read_yaml_mapping(run_root, f"{name}/config.yaml") or (None, None)
    except HandedFileError as exc:
        stage.problems.append(str(exc))
    return stage


# -- formatting ---------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int):
        return str(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _signed(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:+.3f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _number(value: Any) -> float | None:
    """A finite number from a handed summary, else None (a string, a list, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.0f} s" if value < 90 else f"{value:.0f} s ({value / 60:.1f} min)"


def _params(parameters: Any) -> str:
    """`{"trainable": t, "total": n}` or a bare count."""
    if isinstance(parameters, dict):
        total, trainable = parameters.get("total"), parameters.get("trainable")
        if total and trainable is not None:
            return f"{trainable:,} trainable of {total:,} ({trainable / total:.1%})"
        return "-"
    return "-" if parameters is None else f"{parameters:,} ({parameters / 1e6:.1f} M)"


def _short(text: Any, limit: int = SAMPLE_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _command(stage: str, run_root: Path) -> str:
    """The command that (re)creates a stage folder of this run."""
    command = f"rlhflab {stage} name={run_root.name}"
    runs_dir = run_root.parent
    if runs_dir.as_posix() not in ("runs", "./runs"):
        command += f" runs_dir={runs_dir.as_posix()}"
    return command


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "model"


# -- sections -----------------------------------------------------------------------------


class Figures:
    """Draws PNGs into one folder and remembers which it wrote (the rest are stale)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: set[Path] = set()

    def draw(self, function, name: str, *args, caption: str, **kwargs) -> Block:
        """The figure as an Image block; data a plot refuses (nothing to draw) becomes a note
        instead of costing the whole report."""
        try:
            path = function(*args, self.folder / f"{name}.png", **kwargs)
        except RlhfLabError as exc:
            return para(f"Figure {name} was not drawn: {exc}", note=True)
        self.written.add(path.resolve())
        return Image(path, caption)

    def remove_stale(self) -> None:
        """Delete figures an earlier build drew that this one did not (a stage since removed);
        only names this module writes, in case --out points at a folder holding other PNGs."""
        for old in self.folder.glob("*.png"):
            if old.name.startswith(tuple(stage.figure_prefix for stage in STAGES.values())) and \
                    old.resolve() not in self.written:
                old.unlink(missing_ok=True)


def _stage_lines(stage: Stage, file: str) -> list[dict]:
    """The rows of another JSON-lines file of the stage ([] and a note when it may not be read)."""
    try:
        return read_json_lines(stage.path.parent, f"{stage.name}/{file}")
    except HandedFileError as exc:
        stage.problems.append(str(exc))
        return []


def _problems(stage: Stage) -> list[Block]:
    return [para(f"Left out: {problem}", note=True) for problem in stage.problems]


def _not_run(stage: Stage, run_root: Path) -> list[Block]:
    """What to say for a stage without a usable summary.json."""
    command = _command(stage.name, run_root)
    if stage.path.is_symlink() or os.path.lexists(stage.path / "summary.json"):
        return []  # there but not used: the notes at the top of the section say why
    if not stage.exists:
        return [para(f"Not run: {stage.path} does not exist. Produce it with ", Code(command), ".", note=True)]
    return [para(f"Not run to the end: {stage.path} has no summary.json (the run was interrupted or is still "
                 "going). Continue it with ", Code(command + " --resume"), ".", note=True)]


def _facts(pairs: list[tuple[str, Any]]) -> Table:
    return Table(["fact", "value"], [[k, v if isinstance(v, str) else _num(v)] for k, v in pairs if v is not None],
                 numeric=False)


def pretrain_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    """Pretraining: loss and perplexity beside n-gram baselines, per-epoch table, curves, samples."""
    blocks: list[Block] = [Heading(STAGES["pretrain"].title, anchor="pretrain")]
    curves = lambda caption: figures.draw(plots.sft_curves, "pretrain_loss", stage.rows, caption=caption)
    if not stage.done:
        blocks += _not_run(stage, run_root)
        if stage.rows:
            blocks.append(curves("Pretraining loss so far."))
        return blocks
    s = stage.summary
    after, base = s.get("after", {}), s.get("baselines", {})
    rows = [[split, _num(after[split].get("loss")), _num(after[split].get("perplexity"), 2)] for split in after]
    rows += [[f"{name} model (validation)", "-", _num(base.get(name), 2)] for name in ("unigram", "bigram") if name in base]
    blocks.append(Table(["", "loss", "perplexity"], rows,
                        caption="The pretrained model on train and validation (nats per token), beside smoothed unigram "
                                "and bigram models of the same tokens: what the transformer learned beyond counts."))
    epochs = s.get("epochs") or []
    if epochs:
        blocks.append(Table(["epoch", "train loss", "train perplexity", "validation loss", "validation perplexity"],
                            [[str(e.get("epoch")), _num(e.get("train_loss")), _num(e.get("train_perplexity"), 2),
                              _num(e.get("validation_loss")), _num(e.get("validation_perplexity"), 2)] for e in epochs],
                            caption="Per epoch: mean train loss logged during it and validation loss at its end."))
    if stage.rows:
        blocks.append(curves("Pretraining loss: train (mean over each log window) and validation."))
    corpus, tokens, tok, model = s.get("corpus", {}), s.get("tokens", {}), s.get("tokenizer", {}), s.get("model", {})
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
        ("optimizer steps", s.get("steps")),
        ("epochs completed", s.get("epochs_completed")),
        ("stopped early", str(s.get("stopped_early", "-"))),
        ("train tokens/s", _num(s.get("train_tokens_per_s"), 0)),
        ("wall time", _seconds(s.get("seconds"))),
    ]))
    samples = s.get("samples") or []
    if samples:
        blocks.append(Heading("Samples from the pretrained model (unedited)", level=3))
        blocks += [Preformatted(f"{r.get('prompt', '')}{r.get('response', '')}") for r in samples]
    return blocks


def sft_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["sft"].title, anchor="sft")]
    if not stage.done:
        blocks += _not_run(stage, run_root)
        if stage.rows:
            blocks.append(figures.draw(plots.sft_curves, "sft_loss", stage.rows,
                                       caption="SFT train and validation loss so far."))
        return blocks
    s = stage.summary
    before, after = s.get("before", {}), s.get("after", {})
    rows = []
    for split in _splits(after):
        b = before.get(split, {})
        rows.append([split, _num(after[split].get("loss")), _num(after[split].get("perplexity")),
                     _num(b.get("loss")), _num(b.get("perplexity"))])
    blocks.append(Table(["split", "loss", "perplexity", "loss before SFT", "perplexity before SFT"], rows,
                        caption="Loss (nats per token) and perplexity per split after SFT, and before it where "
                                "measured."))
    if stage.rows:
        blocks.append(figures.draw(plots.sft_curves, "sft_loss", stage.rows,
                                   caption="SFT loss: train (mean over each log window) and validation."))
    examples = s.get("examples") or {}
    blocks.append(_facts([
        ("model", str(s.get("model", "-"))),
        ("trainable blocks", json.dumps(s.get("trainable"))),
        ("parameters", _params(s.get("parameters"))),
        ("examples", ", ".join(f"{k} {v}" for k, v in examples.items()) or "-"),
        ("optimizer steps", s.get("steps")),
        ("epochs completed", s.get("epochs_completed")),
        ("stopped early", str(s.get("stopped_early", "-"))),
        ("train tokens/s", _num(s.get("train_tokens_per_s"), 0)),
        ("peak memory", f"{_num(s.get('peak_memory_mb'), 0)} MB"),
        ("device / precision", f"{s.get('device', '-')} / {s.get('mixed_precision', '-')}"),
        ("wall time", _seconds(s.get("seconds"))),
    ]))
    return blocks


def _confusion(summary: dict) -> tuple[str, list[list[int]]] | None:
    if "confusion_matrix_test" in summary:
        return "test", summary["confusion_matrix_test"]
    for split in ("test", "validation", "train"):
        matrix = summary.get("metrics", {}).get(split, {}).get("confusion_matrix")
        if matrix:
            return split, matrix
    return None


def reward_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["reward"].title, anchor="reward")]
    loss_figure = lambda caption: figures.draw(plots.loss_curves, "reward_loss", stage.rows, title="Reward model loss",
                                               caption=caption)
    if not stage.done:
        blocks += _not_run(stage, run_root)
        if stage.rows:
            blocks.append(loss_figure("Reward model train and validation loss so far."))
        return blocks
    s = stage.summary
    if str(s.get("labels", "")).startswith("weak"):
        blocks.append(para(f"Trained on {s['labels']}: what a lexicon says, not what a reader would; its accuracy "
                           "below is agreement with the lexicon.", note=True))
    metrics = s.get("metrics", {})
    names = _splits(metrics)
    pairs = s.get("objective") == "pairs"
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
    norm = s.get("normalization") or {}
    blocks.append(_facts([
        ("objective", str(s.get("objective", "-"))),
        ("model", str(s.get("model", "-"))),
        ("parameters", _params(s.get("parameters"))),
        ("examples" if not pairs else "pairs", ", ".join(f"{k} {v}" for k, v in (s.get("examples") or {}).items()) or "-"),
        ("optimizer steps", s.get("steps")),
        ("score normalization", f"gain {_num(norm.get('gain'))}, bias {_num(norm.get('bias'))} "
                                f"({norm.get('reference', '-')})" if norm else "-"),
        ("train examples/s", _num(s.get("train_examples_per_s"), 1)),
        ("peak memory", f"{_num(s.get('peak_memory_mb'), 0)} MB"),
        ("wall time", _seconds(s.get("seconds"))),
    ]))
    return blocks


def _algorithm(summary: dict) -> str:
    return str(summary.get("algorithm", "ppo")).upper()


def _beta(value: Any) -> str:
    """A generation β as written in the report ("1" for 1.0)."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def _splits(by_split: dict) -> list[str]:
    """The keys of a per-split dict, train / validation / test first."""
    return [x for x in SPLITS if x in by_split] + [x for x in by_split if x not in SPLITS]


def _split_table(by_split: dict, header: list[str], cells, caption: str) -> Table:
    """A row per split of `by_split` (train / validation / test first): its name, then cells(split, its metrics)."""
    return Table(["split", *header], [[n, *cells(n, by_split[n])] for n in _splits(by_split)], caption=caption)


def _counts(by_split: dict) -> str:
    return " / ".join(f"{split} {by_split[split]}" for split in SPLITS if split in by_split) or "-"


def _change(a: Any, b: Any) -> str:
    return _signed(b - a) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"


def _held_out_table(columns: dict[str, dict], caption: str, change: bool = True) -> Table:
    """Mean reward, P(positive) and KL on the held-out prompts: a column per (title, metrics), the
    first the start; with `change`, a last column of the last minus the first."""
    values = list(columns.values())
    rows = [[label, *(_num(v.get(key)) for v in values), *([_change(values[0].get(key), values[-1].get(key))] if change else [])]
            for key, label in HELD_OUT.items() if any(key in v for v in values)]
    return Table(["held-out prompts", *columns, *(["change"] if change else [])], rows, caption=caption)


def _samples_table(rows: list[dict]) -> Table:
    """Prompt, response, reward (P(positive) where scored) and KL of the first four samples."""
    rows = rows[:4]
    prob = any(r.get("positive_probability") is not None for r in rows)
    return Table(["prompt", "response", "reward", *(["P(positive)"] if prob else []), "KL"],
                 [[_short(r.get("prompt", "")), _short(r.get("response", "")), _num(r.get("score")),
                   *([_num(r.get("positive_probability"))] if prob else []), _num(r.get("kl"))] for r in rows], numeric=False)


def _tuning_section(stage: Stage, run_root: Path, curves, body) -> list[Block]:
    """The section of a stage that tunes the policy: its heading, then body(stage, curves) when it
    finished, else how to finish it and its training curves so far. `curves(caption)` draws them."""
    blocks: list[Block] = [Heading(STAGES[stage.name].title, anchor=stage.name)]
    if not stage.done:
        return blocks + _not_run(stage, run_root) + ([curves("Training curves so far.")] if stage.rows else [])
    return blocks + body(stage, curves)


def _panel_curves(stage: Stage, figures: Figures, panels: tuple):
    return lambda caption: figures.draw(plots.metric_panels, f"{stage.name}_training", stage.rows, panels=panels,
                                        title=STAGES[stage.name].title, caption=caption)


def _run_facts(s: dict) -> list[tuple[str, Any]]:
    return [("peak memory", f"{_num(s.get('peak_memory_mb'), 0)} MB"), ("wall time", _seconds(s.get("seconds")))]


def _training_facts(s: dict, unit: str, digits: int) -> list[tuple[str, Any]]:
    """The closing facts of a stage trained by the Supervised algorithm (dpo, ilql)."""
    return [("parameters", _params(s.get("parameters"))), ("steps", s.get("steps")),
            ("epochs completed", s.get("epochs_completed")),
            (f"train {unit}/s", _num(s.get(f"train_{unit}_per_s"), digits)), *_run_facts(s)]


def ppo_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    curves = lambda caption: figures.draw(plots.training_curves, "ppo_training", stage.rows, caption=caption)
    return _tuning_section(stage, run_root, curves, _ppo_blocks)


def _ppo_blocks(stage: Stage, curves) -> list[Block]:
    s = stage.summary
    start, end = s.get("start") or {}, s.get("end") or {}
    blocks: list[Block] = [_held_out_table(
        {f"start (step {start.get('step', 0)})": start, f"end (step {end.get('step', s.get('steps', '?'))})": end},
        caption="Mean reward, probability of positive sentiment and KL to the SFT model on the held-out evaluation "
                f"prompts, before and after {_algorithm(s)}.")]
    if stage.rows:
        blocks.append(curves(f"{_algorithm(s)} training: mean reward per step with a rolling mean and the held-out evaluations"
                             ", KL to the SFT model, the KL coefficient β and the clip fraction."))
    evaluations = s.get("evaluations") or []
    keys = [k for k in HELD_OUT if k in start or k in end]
    if len(evaluations) > 2:
        blocks.append(Table(["step", *(HELD_OUT[k] for k in keys)],
                            [[str(e.get("step")), *(_num(e.get(k)) for k in keys)] for e in evaluations],
                            caption="Every held-out evaluation during training."))
    blocks.append(_facts([
        ("algorithm", _algorithm(s) + (f", {s['samples_per_prompt']} samples per prompt" if s.get("samples_per_prompt", 1) > 1 else "")),
        ("KL penalty", {"reward": "-β·KL in the reward", "loss": "β·KL (k3) in the loss"}.get(s.get("kl_penalty", "reward"), "-")),
        ("processes", s.get("processes", 1)),
        ("policy (start)", str(s.get("policy", "-"))),
        ("reward", str(s.get("reward", "-"))),
        ("reference", str(s.get("reference", "-"))),
        ("parameters", _params(s.get("parameters"))),
        ("steps", s.get("steps")),
        ("final β", _num(s.get("final_beta"), 4)),
        ("rollout tokens/s", _num(s.get("rollout_tokens_per_s"), 0)),
        ("train tokens/s", _num(s.get("train_tokens_per_s"), 0)),
        *_run_facts(s),
    ]))
    if stage.samples:
        last = max(r.get("step", 0) for r in stage.samples)
        blocks.append(Heading(f"Samples at training step {last}", level=3))
        blocks.append(_samples_table([r for r in stage.samples if r.get("step", 0) == last]))
    return blocks


DPO_PANELS = (("Loss", ("loss",)), ("Pair accuracy", ("pair_accuracy",)),
              ("Implicit rewards β·log(π/π_ref)", ("chosen_reward", "rejected_reward", "margin")), ("Learning rate", ("lr",)))
DPO_LOSSES = {"sigmoid": "sigmoid (DPO, Rafailov et al. 2023)", "ipo": "IPO (Azar et al. 2023)"}


def dpo_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    return _tuning_section(stage, run_root, _panel_curves(stage, figures, DPO_PANELS), _dpo_blocks)


def _dpo_blocks(stage: Stage, curves) -> list[Block]:
    s = stage.summary
    blocks: list[Block] = [_held_out_table(
        {"start": s.get("start") or {}, f"end (step {s.get('steps', '?')})": s.get("end") or {}},
        caption="Mean reward, probability of positive sentiment and KL to the starting model on the held-out "
                "evaluation prompts, before and after DPO (measured as for RL training).")]
    before, after = s.get("before") or {}, s.get("after") or {}
    keys = ("loss", "pair_accuracy", "margin", "chosen_reward", "rejected_reward")
    blocks.append(_split_table(
        after, ["pairs", *(k.replace("_", " ") for k in keys)],
        lambda n, m: [_num(m.get("pairs")), *(f"{_num((before.get(n) or {}).get(k))} → {_num(m.get(k))}" for k in keys)],
        caption="Preference pairs per split, before → after DPO: the loss; pair accuracy, the share of pairs whose chosen "
                "response has the higher implicit reward β·log(π/π_ref); the mean margin between the two; and each side's "
                "mean implicit reward. Before training the policy is its own reference, so every implicit reward is 0."))
    if stage.rows:
        blocks.append(curves("DPO training: the loss (train, mean over each log window, and validation), validation pair "
                             "accuracy, implicit rewards and margin, and the learning rate."))
    pairs = s.get("pairs") or {}
    on_policy = pairs.get("source") == "on-policy"
    source = (f"on-policy (AI feedback): {pairs.get('samples_per_prompt', '-')} samples of the starting policy for each of "
              f"{pairs.get('prompts', '-')} training prompts, the reward's best against its worst") if on_policy \
        else str(pairs.get("source", "-"))
    blocks.append(_facts([
        ("loss", DPO_LOSSES.get(s.get("loss"), str(s.get("loss", "-")))),
        ("β", _num(s.get("beta"))),
        ("pairs", f"{source}; {_counts(pairs)}"),
        ("pairs left out", ", ".join(f"{v} ({k})" for k, v in (pairs.get("left_out") or {}).items()) or "none"),
        ("responses cut to max_length", pairs.get("responses_cut_to_max_length")),
        ("policy (start and reference)", str(s.get("policy", "-"))),
        ("reward", str(s.get("reward") or "-")),
        *_training_facts(s, "pairs", 1),
    ]))
    examples = _stage_lines(stage, "pairs.jsonl")
    if examples:
        blocks.append(Heading("Example pairs", level=3))
        blocks.append(Table(["prompt", "chosen", "rejected", "chosen reward", "rejected reward"],
                            [[_short(r.get("prompt", "")), _short(r.get("chosen", "")), _short(r.get("rejected", "")),
                              _num(r.get("chosen_score")), _num(r.get("rejected_score"))] for r in examples[:4]],
                            numeric=False,
                            caption=f"The first {min(4, len(examples))} of {len(examples)} pairs (pairs.jsonl). AI feedback: "
                                    "the reward function ranked the starting policy's own samples; no person chose."))
    return blocks


ILQL_PANELS = (("Loss", ("loss",)), ("TD loss of the Q heads, expectile loss of V", ("q", "v")),
               ("CQL and AWAC terms", ("cql", "awac")), ("Learning rate", ("lr",)))


def ilql_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    return _tuning_section(stage, run_root, _panel_curves(stage, figures, ILQL_PANELS), _ilql_blocks)


def _ilql_blocks(stage: Stage, curves) -> list[Block]:
    s = stage.summary
    beta = _beta(s.get("beta"))
    blocks: list[Block] = [_held_out_table(
        {"start": s.get("start") or {}, **{f"β = {_beta(b)}": v for b, v in (s.get("by_beta") or {}).items()}}, change=False,
        caption="The held-out prompts at the start and after ILQL at each generation β: tokens are sampled from "
                "logits + β(Q − V), β the steering strength, and β = 0 is the AWAC-trained language model alone. "
                f"The saved model generates at β = {beta}.")]
    after, terms = s.get("after") or {}, ("loss", "q", "v", "cql", "awac")
    blocks.append(_split_table(
        after, [*terms, "actions"], lambda n, m: [*(_num(m.get(k)) for k in terms), _num(m.get("actions"))],
        caption="The ILQL loss terms per action (token) after training: the TD loss of the Q heads (q), the expectile "
                "loss of V (v), the CQL term and the advantage-weighted LM loss (awac); loss is their weighted sum."))
    if stage.rows:
        blocks.append(curves("ILQL training: the loss (train, mean over each log window, and validation), its terms on "
                             "validation, and the learning rate."))
    samples = s.get("samples") or {}
    blocks.append(_facts([
        ("samples", f"{samples.get('source', '-')}; {_counts(samples)}"),
        ("reward normalisation", f"mean {_num(samples.get('reward_mean'))}, std {_num(samples.get('reward_std'))} over the "
                                 "training texts (each text's normalised reward sits on its last token)"),
        ("generation β (default)", beta),
        ("policy (start)", str(s.get("policy", "-"))),
        ("held-out reward", str(s.get("reward") or "none (KL only)")),
        *_training_facts(s, "tokens", 0),
    ]))
    rows = [r for r in _stage_lines(stage, "eval_after.jsonl") if _beta(r.get("beta")) == beta]
    if rows:
        blocks.append(Heading(f"Held-out samples at β = {beta}", level=3))
        blocks.append(_samples_table(rows))
    return blocks


# -- evaluation -----------------------------------------------------------------------------


def _eval_models(summary: dict, samples: list[dict]) -> list[str]:
    """Models in the summary's order (the first is the reference), then any only in samples."""
    names = list((summary.get("models") or {}).keys())
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


def evaluate_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    blocks: list[Block] = [Heading(STAGES["evaluate"].title, anchor="evaluate")]
    if not stage.done:
        return blocks + _not_run(stage, run_root)
    s = stage.summary
    models = s.get("models") or {}
    names = _eval_models(s, stage.samples)
    reference = s.get("reference") or (names[0] if names else "-")
    sampling = ""
    if s.get("temperature") is not None or s.get("max_new_tokens") is not None:
        sampling = f" Sampling at temperature {s.get('temperature', '-')}, up to {s.get('max_new_tokens', '-')} new tokens."
    blocks.append(para(f"{s.get('prompts', '-')} held-out prompts, one response per model, scored by "
                       f"{s.get('reward', 'the reward function')}. Reference model: {reference}.{sampling}"))
    if models:
        blocks.append(_eval_metric_table(models))
    comparison = s.get("comparison") or {}
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


def _judges_blocks(summary: dict) -> list[Block]:
    """Gold judges beside the proxy: each one's calibration and each model's share judged positive,
    and a note wherever the proxy's gain is not matched by a gold judge's."""
    judges, models = summary.get("judges") or {}, summary.get("models") or {}
    if not judges:
        return []
    names = list(judges)
    rows = [[n, str(judges[n].get("source", "-")), _num(judges[n].get("accuracy")), _num(judges[n].get("threshold"), 2),
             *(_pct(((models[m].get("judges") or {}).get(n) or {}).get("positive_rate")) for m in models)] for n in names]
    blocks: list[Block] = [Table(["judge", "source", "accuracy", "positive at ≥", *(f"positive: {m}" for m in models)], rows, left=2,
                                 caption="The proxy (the reward RL optimised) and the gold judges it never saw: accuracy on "
                                         f"{next(iter(judges.values())).get('calibrated_on', 'held-out labelled texts')} at each "
                                         "judge's threshold, and the share of each model's responses the judge calls positive.")]
    for model, per_judge in (summary.get("gold_agreement") or {}).items():
        for judge, g in per_judge.items():
            if g.get("disagree"):
                blocks.append(para(f"The proxy and {judge} disagree on {model}: the proxy's share of positive responses "
                                   f"rose by {_signed(g['proxy_gain'])}, {judge}'s by {_signed(g['gold_gain'])}, under half "
                                   "of it. Part of the proxy's gain may be the policy exploiting the proxy.", note=True))
    return blocks


def _best_of_blocks(summary: dict) -> list[Block]:
    """The best-of-n baselines of the evaluate stage (evaluate.best_of), when it drew them."""
    best = summary.get("best_of")
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
                "tuned models' measured KL in the table above; a judge's column is the share it calls positive.")]


def _eval_figures(stage: Stage, summary: dict, names: list[str], reference: str, figures: Figures) -> list[Block]:
    """Redraw the distribution figures from samples.jsonl; without it fall back to the PNGs
    the evaluate stage listed in its summary."""
    if not stage.samples:
        listed = [(str(v), str(k).replace("_", " ")) for k, v in (summary.get("figures") or {}).items()]
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


def evaluation_figures(samples: list[dict], summary: dict, out: Path) -> list[Path]:
    """The evaluation's figures (distributions, reward maps, sentiment bars) drawn from its samples
    into `out`: the evaluate stage writes its own PNGs with the same code the report uses."""
    figures = Figures(out)
    stage = Stage("evaluate", out, summary=summary, samples=samples)
    names = _eval_models(summary, samples)
    reference = summary.get("reference") or names[0]
    _eval_figures(stage, summary, names, reference, figures)
    _sentiment_blocks(summary.get("models") or {}, samples, names, figures)
    return sorted(figures.written)


def overopt_section(stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    """The over-optimisation study with Gao et al.'s proxy-versus-gold view."""
    blocks: list[Block] = [Heading(STAGES["overopt"].title, anchor="overopt")]
    if not stage.done:
        return blocks + _not_run(stage, run_root)
    s = stage.summary
    points, judges, verdict = s.get("points") or [], list(s.get("judges") or {}), s.get("verdict") or {}
    found = f"Onset: {verdict['onset']} at KL {_num(verdict.get('kl'), 2)} nats: " if verdict.get("onset") else "Verdict: "
    blocks.append(para(f"The RL run {s.get('run', '-')}: its starting model and every per-epoch snapshot answer the same "
                       f"{s.get('prompts', '-')} held-out prompts. {found}{verdict.get('reason', '-')}."))
    blocks.append(para(f"Rule: {verdict.get('rule', '-')}.", note=True))
    peaks = s.get("gold_peak") or {}
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
                                "labelled texts: " + ", ".join(f"{j} {_num(c.get('accuracy'))}" for j, c in (s.get("judges") or {}).items()) + "."))
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


def yaml_config(stage: Stage) -> dict | None:
    """The stage's config.yaml as data (read with the safe loader); None when it has none or it
    could not be used."""
    return stage.config_data


def overopt_figures(points: list[dict], out: Path) -> list[Path]:
    """The study's two figures, drawn by the stage into its own folder with the report's code."""
    figures = Figures(out)
    figures.draw(plots.overoptimisation, "overopt_proxy_gold", points, caption="")
    figures.draw(plots.text_signals, "overopt_text_signals", points, caption="")
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


# -- human ratings, configs, overview -----------------------------------------------------


def _inline(text: str) -> tuple[str | Code, ...]:
    """A Markdown line's `code` spans as Code parts, the rest as text."""
    pieces = re.split(r"`([^`]*)`", text)
    return tuple(Code(p) if i % 2 else p for i, p in enumerate(pieces) if p)


def markdown_blocks(text: str) -> list[Block]:
    """The small Markdown the format_* helpers return (paragraphs and pipe tables, separated
    by blank lines) as blocks, so it renders natively and escaped in both outputs."""
    blocks: list[Block] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in chunk.splitlines() if line.strip()]
        if len(lines) >= 2 and all(line.startswith("|") and line.endswith("|") for line in lines):
            cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines]
            body = [row for row in cells[1:] if not all(re.fullmatch(r":?-{3,}:?", c) for c in row)]
            blocks.append(Table(cells[0], body, numeric=False))
        elif lines:
            blocks.append(para(*_inline(" ".join(lines))))
    return blocks


def _json_value(value: Any) -> str:
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return "-" if value is None else str(value)


def _records_table(records: list[dict], caption: str | None = None) -> Table:
    columns = list(dict.fromkeys(k for r in records for k in r))
    return Table(columns, [[_json_value(r.get(c)) for c in columns] for r in records[:200]], caption=caption, numeric=False)


def json_tables(data: Any) -> list[Block]:
    """Any JSON document as tables: top-level values as a key/value table, lists of objects
    and objects of objects as tables of their own."""
    if isinstance(data, list):
        if data and all(isinstance(r, dict) for r in data):
            return [_records_table(data)]
        return [Table(["value"], [[_json_value(v)] for v in data[:200]], numeric=False)]
    if not isinstance(data, dict):
        return [para(_json_value(data))]
    blocks: list[Block] = []
    simple = [[k, _json_value(v)] for k, v in data.items()
              if not (isinstance(v, list) and v and all(isinstance(r, dict) for r in v))
              and not (isinstance(v, dict) and v and all(isinstance(r, dict) for r in v.values()))]
    if simple:
        blocks.append(Table(["field", "value"], simple, numeric=False))
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            blocks.append(_records_table(value, caption=key))
        elif isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            blocks.append(_records_table([{"name": k, **r} for k, r in value.items()], caption=key))
    return blocks


def _rating_formatter():
    """The rating app's own table formatter (rlhflab.human), when it is importable."""
    try:
        from rlhflab.human.summary import format_rating_table
    except ImportError:
        return None
    return format_rating_table


def ratings_section(run_root: Path) -> list[Block]:
    """The run's own human ratings: `<run>/human/<task>/rating_summary.json`, which `rlhflab rate
    summary` writes for a task made from this run's samples. Ratings of other runs live in theirs,
    so none show here; files that may not be read (see run_files) are named in a note."""
    blocks: list[Block] = [Heading("Human ratings", anchor="ratings")]
    found, notes = [], []
    try:
        human = run_file(run_root, "human", folder=True)
        tasks = sorted(entry.name for entry in os.scandir(human)) if human else []
    except (HandedFileError, OSError) as exc:
        notes.append(para(f"Left out: {first_line(exc)}", note=True))
        tasks = []
    for task in tasks:
        relative = f"human/{task}/rating_summary.json"
        try:
            data = read_json_object(run_root, relative)
        except HandedFileError as exc:
            notes.append(para(f"Left out: {exc}", note=True))
            continue
        if data is not None:
            found.append((str(data.get("created_at") or ""), task, run_root / relative, data))
    if not found:
        return blocks + notes + [para(
            f"No human ratings of this run ({run_root / 'human'} holds no rating_summary.json). Rate its samples with "
            f"`rlhflab rate create --from-samples {run_root / 'evaluate' / 'samples.jsonl'}` and the web app, then "
            "`rlhflab rate summary` writes them here.", note=True)]
    formatter = _rating_formatter()
    for _, _, path, data in sorted(found, key=lambda f: f[:2]):  # oldest task first
        blocks.append(para("From ", Code(str(path)), "."))
        text = None
        if formatter is not None:
            try:
                text = formatter(data)
            except Exception:  # noqa: BLE001 -- a summary of another schema must not cost the whole report: show it generically
                text = None
        blocks += markdown_blocks(text) if isinstance(text, str) and text.strip() else json_tables(data)
    return blocks + notes


def configs_section(stages: dict[str, Stage]) -> list[Block]:
    blocks: list[Block] = [Heading("Configs", anchor="configs")]
    found = [s for s in stages.values() if s.config is not None]
    unused = [para(f"Left out: {p}", note=True) for s in stages.values() for p in s.problems
              if p.startswith(str(s.path / "config.yaml"))]
    if not found:
        return blocks + unused + [para("No stage left a usable config.yaml.", note=True)]
    blocks.append(para("The resolved config each stage ran with (its config.yaml)."))
    return blocks + unused + [Preformatted(s.config, summary=f"{s.name}/config.yaml", language="yaml") for s in found]


def sft_rows(sft: dict, name: str) -> list[list[str]]:
    before = (sft.get("before") or {}).get("validation", {})
    after = (sft.get("after") or {}).get("validation", {})
    return [["SFT", "validation perplexity", _num(before.get("perplexity")), _num(after.get("perplexity"))]] if after else []


def reward_rows(reward: dict, name: str) -> list[list[str]]:
    test = (reward.get("metrics") or {}).get("test") or {}
    key = "pairwise_accuracy" if reward.get("objective") == "pairs" else "accuracy"
    return [["reward model", f"test {key.replace('_', ' ')}", "-", _num(test[key])]] if key in test else []


def tuned_rows(tuned: dict, name: str) -> list[list[str]]:
    start, end = tuned.get("start") or {}, tuned.get("end") or {}
    title = _algorithm(tuned) + (f" at β = {_beta(tuned.get('beta'))}" if name == "ilql" else "")
    return [[title, label, _num(start.get(key)), _num(end[key])] for key, label in
            (("score", "held-out reward"), ("positive_probability", "held-out P(positive)"),
             ("kl", "KL to the starting model")) if key in end]


def evaluate_rows(ev: dict, name: str) -> list[list[str]]:
    rows = []
    models = ev.get("models") or {}
    names = list(models)
    if names:
        ref = ev.get("reference") or names[0]
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
            better = (ev.get("comparison") or {}).get(m, {}).get("better")
            if better is not None:
                rows.append(["evaluation", f"prompts where {m} beats {ref}", "-", _pct(better)])
    return rows


def overopt_rows(study: dict, name: str) -> list[list[str]]:
    verdict = study.get("verdict") or {}
    onset = f"{verdict['onset']} (KL {_num(verdict.get('kl'), 2)})" if verdict.get("onset") else \
        f"none up to KL {_num(verdict.get('max_kl'), 2)}"
    return [["over-optimisation", "onset (the rule is in its section)", "-", onset]]


def _headline(stages: dict[str, Stage]) -> list[list[str]]:
    """[stage, metric, before, after] rows: the numbers a reader looks for first. A summary whose
    values have other types than these read gives no rows; its own section says why."""
    rows = []
    for name, declared in STAGES.items():
        if stages[name].summary:
            try:
                rows += declared.rows(stages[name].summary, name)
            except SHAPE_ERRORS:
                if debug():
                    raise
    return rows


def overview_section(run_root: Path, stages: dict[str, Stage]) -> list[Block]:
    blocks: list[Block] = [Heading("Overview", anchor="overview"),
                           para("Run ", Code(run_root.name), " in ", Code(str(run_root)), ", report built "
                                f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC.")]
    rows, total = [], 0.0
    for name in pipeline_stages(stages):
        stage = stages[name]
        if stage.done:
            status = "done"
            seconds = _number(stage.summary.get("seconds"))
            total += seconds or 0.0
        else:
            status = ("left out (see its section)" if stage.problems else "incomplete") if stage.exists else "not run"
            seconds = None
        rows.append([STAGES[name].title, status, _seconds(seconds), str(stage.path)])
    rows.append(["total", "", _seconds(total), ""])
    blocks.append(Table(["stage", "status", "wall time", "folder"], rows, numeric=False,
                        caption="Wall time: the seconds field of each stage's summary.json."))
    missing = [n for n in pipeline_stages(stages) if not stages[n].done]
    if missing:
        blocks.append(para("Not finished: " + ", ".join(missing) + ". ", Code(_command("pipeline", run_root)),
                           " runs (or resumes) the stages that are missing.", note=True))
    headline = _headline(stages)
    if headline:
        blocks.append(Table(["stage", "headline", "before", "after"], headline, left=2,
                            caption="Before → after: SFT against the base model, each tuned policy (PPO, DPO, ILQL) "
                                    "at its start against its end, and the evaluated models against the reference."))
    return blocks


# -- the report ---------------------------------------------------------------------------


def pipeline_stages(stages: dict[str, Stage]) -> list[str]:
    """The stages this run's pipeline has (its configs' `stages` list), plus any stage folder present."""
    listed = None
    for stage in stages.values():
        listed = (yaml_config(stage) or {}).get("stages")
        if isinstance(listed, list) and listed:
            break
        listed = None  # none, or not a list of stage names
    listed = listed or Config().stages  # a run from before stages was a setting: the default pipeline
    return [name for name in STAGES if name in listed or stages[name].exists]


def sweep_section(run_root: Path) -> list[Block]:
    """`rlhflab sweep` under this run: the table and figures of <run>/sweep/compare/compare.json
    (rlhflab/eval/compare.py); nothing when there is none."""
    relative = "sweep/compare/compare.json"
    path = run_root / relative
    if not os.path.lexists(path):
        return []
    blocks: list[Block] = [Heading("Sweep", anchor="sweep"),
                           para("The points of the sweep in ", Code(str(path.parents[1])), ", each its own run; from ",
                                Code(str(path)), " (", Code(f"rlhflab compare {path.parents[1]}"), " rebuilds it).")]
    try:
        data = read_json_object(run_root, relative)
    except HandedFileError as exc:
        return blocks + [para(f"Left out: {exc}", note=True)]
    if not data or not data.get("header"):
        return blocks + [para(f"{path} holds no table; rerun the sweep or rlhflab compare.", note=True)]
    try:
        blocks.append(Table([str(h) for h in data["header"]], [[str(c) for c in row] for row in data.get("rows") or []],
                            left=1 + len(data.get("columns") or []),
                            caption="Held-out reward at the last and the best evaluation, KL to the reference at the "
                                    "end, clip fraction and approximate KL over the last steps, per point."))
        blocks += [para(str(sentence)) for sentence in data.get("sentences") or []]
        figures = [(str(f.get("path", "")), str(f.get("caption", ""))) for f in data.get("figures") or []]
    except SHAPE_ERRORS as exc:
        if debug():
            raise
        return blocks[:2] + [para(f"Left out: {path} does not have the shape of compare.json ({first_line(exc)}).",
                                  note=True)]
    blocks += _listed_images(run_root, "sweep/compare", figures)
    return blocks


def _listed_images(root: Path, folder: str, figures: list[tuple[str, str]]) -> list[Block]:
    """Image blocks of the PNGs a handed file lists (paths relative to `root / folder`): only
    regular files inside `root`, checked by run_file; any other is a note, never embedded."""
    blocks: list[Block] = []
    for relative, caption in figures:
        try:
            image = run_file(root, PurePath(folder, relative))  # an absolute `relative` stays absolute: refused
        except HandedFileError as exc:
            blocks.append(para(f"Figure {caption or relative} skipped: {exc}", note=True))
            continue
        if image is not None and image.suffix == ".png":
            blocks.append(Image(image, caption))
    return blocks


def _section(build, stage: Stage, run_root: Path, figures: Figures) -> list[Block]:
    """A stage's section with a note per file of it that was left out; a summary whose values
    have other types than the section reads leaves the section out with a note (the rule in
    the module docstring), not a traceback."""
    try:
        blocks = build(stage, run_root, figures)
    except SHAPE_ERRORS as exc:
        if debug():
            raise
        stage.problems.append(f"{stage.path / 'summary.json'} (or metrics.jsonl, samples.jsonl, config.yaml beside it) "
                              f"does not have the shape this report reads ({first_line(exc)}), so its section is left out.")
        stage.summary = None
        blocks = [Heading(STAGES[stage.name].title, anchor=stage.name)]
    return blocks[:1] + _problems(stage) + blocks[1:]


def build_report(run_root: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.html and report.md (plus figures/*.png) for `run_root` = runs/<name>, into
    `out_dir` (default run_root/report); returns (html path, markdown path)."""
    run_root = Path(run_root)
    if not run_root.is_dir():
        raise RlhfLabError(f"{run_root} is not a folder. Pass a run folder such as runs/default "
                           "(runs_dir/name, with sft/, reward/, ppo/ or evaluate/ inside).")
    stages = {name: load_stage(run_root, name) for name in STAGES}
    if not any(s.exists for s in stages.values()) and not (run_root / "sweep" / "sweep.json").is_file():
        runs = sorted(d.name for d in run_root.iterdir() if d.is_dir() and any((d / x).is_dir() for x in STAGES))
        hint = (f"It holds the runs {', '.join(runs)}: pass one of them, e.g. {run_root / runs[0]}." if runs
                else "Run a stage first (e.g. `rlhflab sft name=NAME`) and pass its runs/NAME folder.")
        raise RlhfLabError(f"{run_root} has none of the stage folders {', '.join(STAGES)}: nothing to report. {hint}")
    if out_dir is None:  # inside the handed run: its report/ must be a real folder, not a link to elsewhere
        writable_folder(run_root, "report/figures")
    out_dir = Path(out_dir) if out_dir is not None else run_root / "report"
    figures = Figures(out_dir / "figures")

    doc = Document(f"rlhflab report: {run_root.name}")
    built = [_section(STAGES[name].report, stages[name], run_root, figures) for name in pipeline_stages(stages)]
    doc.add(*overview_section(run_root, stages))  # after the sections: a section left out is not "done"
    for blocks in built:
        doc.add(*blocks)
    doc.add(*sweep_section(run_root))
    doc.add(*ratings_section(run_root))
    doc.add(*configs_section(stages))

    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md_path, to_markdown(doc, out_dir))
    atomic_write_text(html_path, to_html(doc))
    figures.remove_stale()
    return html_path, md_path
