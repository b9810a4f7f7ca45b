"""What each stage's summary.json holds, typed: one frozen dataclass per stage, whose fields are
the file's top-level keys, written by one function (`summary_json`, which RunDir.finish calls)
and read by one (`parse_summary`; `read_summary` for a folder of this machine's runs).

It sits in the foundation, beside io.py, because both sides of the run-folder contract use it:
the stages (rlhflab/stages/) write these and the report, its sections and the pipeline's lines
(rlhflab/eval/, pipeline.py, cli.py) read them, and eval/ may not import a stage. The registry
(stages/registry.py) names each stage's type (`Stage.summary`); this module imports only
errors.py, so `import rlhflab.config` stays free of torch.

Reading is forgiving where runs differ by version and strict where the readers would break:
- a key this version does not know is ignored (a newer rlhflab may add keys);
- a key an earlier version did not write is None (its field has a default), so old run folders
  still read; the few keys without a default are those every version wrote and the readers need;
- a missing required key, or a top-level value of another type than its field's, is one
  RlhfLabError naming the file, the keys and what to do.
Nested open mappings (metrics by split, models by label, ...) stay dicts: their shape is checked
by the readers that use them (rlhflab/eval/run_files.py's SHAPE_ERRORS), as before.

Writing gives the same JSON as the dicts the stages wrote before these types: the fields are
declared in the order the stage writes its keys, and a key the stage writes only in some runs
(`sometimes()`) is left out when it is None; every other field is written, null included.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

from rlhflab.errors import RlhfLabError

_SOMETIMES = "sometimes"

Trainable = Union[str, list]  # "all", "none", "lora", a list of block indices, ...


def later() -> Any:
    """A key an earlier version did not write: None when absent; always written now (null included)."""
    return field(default=None)


def sometimes() -> Any:
    """A key the stage writes only in some runs (a judge, a reward model with a token budget):
    None when absent, and left out of the file when None."""
    return field(default=None, metadata={_SOMETIMES: True})


class Summary:
    """What every stage summary ends with: engine.runtime.run_facts (`RUN_FACTS`; None in runs
    made before a fact was written). Each stage's dataclass declares them last, in that order.
    left_out (reason -> count, data.describe_dropped) and reward_reads (rewards.TextsRead.summary())
    are None for the stages that do not write them, and fields of the others."""

    peak_memory_mb: float | None
    device: str | None
    processes: int | None
    mixed_precision: str | None
    seconds: float | None
    left_out: dict | None = None
    reward_reads: dict | None = None


RUN_FACTS = ("peak_memory_mb", "device", "processes", "mixed_precision", "seconds")  # engine.runtime.run_facts

# Each dataclass lists its fields in the order its stage writes the keys (the order of
# summary.json); kw_only lets a required one stand anywhere in that order.


@dataclass(frozen=True, kw_only=True)
class SftSummary(Summary):
    """rlhflab/stages/sft.py. before/after: split -> {loss, perplexity, tokens}."""

    model: str | None = later()
    trainable: Trainable | None = later()
    parameters: dict | None = later()  # {"trainable": n, "total": n}
    examples: dict | None = later()  # split -> count
    left_out: dict | None = later()  # reason -> count (data.describe_dropped)
    steps: int | None = later()
    epochs_completed: int | None = later()
    stopped_early: bool | None = later()
    train_tokens_per_s: float | None = later()
    before: dict | None = later()
    after: dict
    frozen_cache: dict | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


@dataclass(frozen=True, kw_only=True)
class RewardSummary(Summary):
    """rlhflab/stages/reward.py. metrics: split -> classification or pair metrics (by objective)."""

    objective: str | None = later()  # "labels" or "pairs"
    model: str | None = later()
    trainable: Trainable | None = later()
    parameters: dict | None = later()
    examples: dict | None = later()
    left_out: dict | None = later()
    labels: str | None = later()  # what the targets are ("weak ..." for a lexicon's labels)
    metrics: dict
    normalization: dict | None = later()  # the saved RewardMeta: gain, bias, reference, ...
    steps: int | None = later()
    epochs_completed: int | None = later()
    stopped_early: bool | None = later()
    train_examples_per_s: float | None = later()
    frozen_cache: dict | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()
    confusion_matrix_test: list | None = sometimes()  # labels with a test split


@dataclass(frozen=True, kw_only=True)
class RlSummary(Summary):
    """rlhflab/stages/rl.py. start/end/evaluations: held-out {step, kl, score, positive_probability}."""

    algorithm: str | None = later()  # None: a run from before rl.algorithm, PPO
    rollout_engine: str | None = later()
    samples_per_prompt: int | None = later()
    kl_penalty: str | None = later()
    policy: str | None = later()
    reward: str | None = later()
    reward_reads: dict | None = sometimes()  # rewards.TextsRead.summary() of a reward model
    trainable: Trainable | None = later()
    parameters: dict | None = later()
    reference: str | None = later()
    left_out: dict | None = later()
    steps: int | None = later()
    start: dict
    end: dict
    evaluations: list | None = later()
    final_beta: float | None = later()
    rollout_tokens_per_s: float | None = later()
    train_tokens_per_s: float | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


@dataclass(frozen=True, kw_only=True)
class EvaluateSummary(Summary):
    """rlhflab/stages/evaluate.py. models: label -> its metrics; comparison: label -> its reward
    shift against the reference."""

    prompts: int | None = later()
    reward: str | None = later()
    reference: str | None = later()
    max_new_tokens: int | None = later()
    temperature: float | None = later()
    models: dict
    comparison: dict | None = later()
    left_out: dict | None = later()
    reward_reads: dict | None = sometimes()
    judges: dict | None = sometimes()  # judge -> its calibration (evaluate.judges)
    gold_agreement: dict | None = sometimes()
    best_of: dict | None = sometimes()  # evaluate.best_of_n
    figures: dict | None = later()  # name -> PNG path inside the stage folder
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


@dataclass(frozen=True, kw_only=True)
class DpoSummary(Summary):
    """rlhflab/stages/dpo.py. before/after: split -> pair metrics; start/end: held-out metrics."""

    algorithm: str | None = later()
    loss: str | None = later()
    beta: float | None = later()
    nll_coef: float | None = later()
    rounds: int | None = later()
    reference: str | None = later()
    policy: str | None = later()
    reward: str | None = later()  # None: pairs from a file, no reward
    pairs: dict | None = later()  # source, counts by split, what was left out
    trainable: Trainable | None = later()
    parameters: dict | None = later()
    left_out: dict | None = later()
    before: dict | None = later()
    after: dict | None = later()
    start: dict
    end: dict
    by_round: list | None = later()
    steps: int | None = later()
    epochs_completed: int | None = later()
    stopped_early: bool | None = later()
    train_pairs_per_s: float | None = later()
    frozen_cache: dict | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


@dataclass(frozen=True, kw_only=True)
class IlqlSummary(Summary):
    """rlhflab/stages/ilql.py. by_beta: str(β) -> held-out metrics of the model steered at β."""

    algorithm: str | None = later()
    policy: str | None = later()
    samples: dict | None = later()  # source, counts by split, reward mean and std
    reward: str | None = later()
    beta: float | None = later()
    top_k: int | None = later()
    trainable: Trainable | None = later()
    parameters: dict | None = later()
    left_out: dict | None = later()
    after: dict | None = later()
    start: dict
    end: dict
    by_beta: dict | None = later()
    steps: int | None = later()
    epochs_completed: int | None = later()
    stopped_early: bool | None = later()
    train_tokens_per_s: float | None = later()
    frozen_cache: dict | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


@dataclass(frozen=True, kw_only=True)
class PretrainSummary(Summary):
    """rlhflab/stages/pretrain.py. after: split -> {loss, perplexity, tokens}; baselines: n-gram
    model -> validation perplexity."""

    corpus: dict | None = later()
    tokens: dict | None = later()
    tokens_left_out: dict | None = later()
    tokenizer: dict | None = later()
    model: dict | None = later()  # architecture, layers, width, heads, context, parameters
    steps: int | None = later()
    epochs_completed: int | None = later()
    stopped_early: bool | None = later()
    train_tokens_per_s: float | None = later()
    epochs: list | None = later()
    after: dict
    baselines: dict | None = later()
    samples: list | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


@dataclass(frozen=True, kw_only=True)
class OveroptSummary(Summary):
    """rlhflab/stages/overopt.py. points: one per RL snapshot (eval/overoptimisation.py)."""

    run: str | None = later()
    prompts: int | None = later()
    max_new_tokens: int | None = later()
    separators: list | None = later()
    judges: dict | None = later()
    points: list
    verdict: dict | None = later()
    gold_peak: dict | None = later()
    figures: dict | None = later()
    peak_memory_mb: float | None = later()
    device: str | None = later()
    processes: int | None = later()
    mixed_precision: str | None = later()
    seconds: float | None = later()


S = TypeVar("S")


def summary_json(summary: Any) -> Any:
    """The JSON data of a summary: a typed one's keys in the order its stage writes them, those
    written only sometimes left out when None; a dict (a stage without a type) unchanged."""
    if not is_dataclass(summary):
        return summary
    return {f.name: getattr(summary, f.name) for f in fields(summary)
            if not (f.metadata.get(_SOMETIMES) and getattr(summary, f.name) is None)}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type of a field: an int is a float, a bool is neither;
    dict[...] and list[...] check the container only."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def parse_summary(data: Any, kind: type[S] | None, path: Path | str) -> S | Any:
    """The summary.json `data` (read from `path`) as `kind`; unchanged when `kind` is None (a stage
    declared without a type, e.g. a test's). Unknown keys are ignored (a newer version may add
    keys), keys an earlier version did not write are None.

    Raises RlhfLabError naming `path` and every missing required key and every key whose value has
    another type than its field's."""
    if kind is None:
        return data
    if not isinstance(data, dict):
        raise RlhfLabError(f"{path} holds a JSON {type(data).__name__}, not the object a summary.json is. "
                           f"Run its stage again (--overwrite) to write it anew.")
    hints = typing.get_type_hints(kind)
    known = [f for f in fields(kind) if f.init]
    missing = [f.name for f in known if f.name not in data and f.default is MISSING]
    wrong = [f"{f.name} is {type(data[f.name]).__name__}, not {_spelled(hints[f.name])}"
             for f in known if f.name in data and not _fits(data[f.name], hints[f.name])]
    if missing or wrong:
        said = ([f"no {', '.join(missing)}"] if missing else []) + wrong
        raise RlhfLabError(f"{path} does not have the shape of the {kind.__name__.removesuffix('Summary').lower()} "
                           f"stage's summary.json ({'; '.join(said)}). It was not written by this rlhflab's stage, or was "
                           f"edited; run the stage again (--overwrite) to write it anew.")
    return kind(**{f.name: data[f.name] for f in known if f.name in data})


def _spelled(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_spelled(arm) for arm in typing.get_args(hint))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def dropped(summary: Any) -> dict | None:
    """What the stage's data readers left out (reason -> count), of a typed summary or a dict."""
    return summary.get("left_out") if isinstance(summary, dict) else summary.left_out


def read_summary(folder: Path, kind: type[S] | None) -> S | Any:
    """The summary.json of a stage folder this rlhflab wrote (a finished upstream run, the one it
    just wrote) as `kind` (parse_summary). A run folder someone handed over is read through
    rlhflab/eval/run_files.py instead, which checks the file first. Raises RlhfLabError as
    parse_summary does, and when the file is not JSON."""
    path = Path(folder) / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RlhfLabError(f"{path} is not valid JSON ({str(exc)[:200]}). Run its stage again (--overwrite).") from None
    return parse_summary(data, kind, path)
