"""Typed configuration: dataclasses per stage, strict YAML loading, `key=value` overrides.

Every field has a type and a default; `load_config` rejects unknown keys (suggesting the
nearest valid one) and values of the wrong type, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml

from rlhflab.errors import RlhfLabError

# Every stage, in the order a pipeline runs them (rlhflab/stages/registry.py declares each).
STAGE_NAMES = ("pretrain", "sft", "reward", "ppo", "dpo", "ilql", "evaluate", "overopt")


@dataclass
class DataConfig:
    # `imdb`, `rotten-tomatoes`, `hf:<dataset id>`, a .csv/.jsonl/.json/.parquet file or
    # an aclImdb-style folder.
    source: str = "imdb"
    text_column: str | None = None  # None: detect (text, review, sample, ...)
    label_column: str | None = None  # None: detect (label, sentiment, ...)
    split: str = "train"  # which split of a hub dataset or aclImdb folder to read
    per_class: int | None = 1000  # balanced sample: this many positive and negative; None = all
    fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train/val/test
    prompt_min_words: int = 3
    prompt_max_words: int = 5
    # Then at most this many tokens of the policy's tokenizer (4 characters a token without one).
    # 64 leaves every 2-8 word IMDB prompt as it was; Chinese/Japanese count a character a word.
    prompt_max_tokens: int = 64
    # RL prompts as they are, instead of the reviews' opening words: a .txt file (one per line) or a
    # .jsonl/.csv/.json file with a `prompt` column. eval_prompts: the held-out ones (None: the
    # first of `prompts`; with neither set, openings of the test split's reviews).
    prompts: str | None = None
    eval_prompts: str | None = None


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # None: every linear layer of the decoder blocks (peft's "all-linear").
    target_modules: list[str] | None = None


@dataclass
class TrainingConfig:
    """Settings every supervised training stage shares (SFT, reward model)."""

    epochs: int = 2
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs)
    batch_size: int = 16  # examples per optimizer step, over all processes
    # Split each step's batch into this many forward/backward passes (less memory, same step).
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    eval_every: int | None = None  # steps between validation passes; None = once per epoch
    early_stopping_patience: int = 2  # validation passes without improvement before stopping
    # Run the frozen lower blocks once and reuse their outputs every epoch.
    cache_frozen: bool = True
    eval_batch_size: int = 32
    log_every: int = 10
    checkpoint_every: int = 50  # optimizer steps between resumable checkpoints


@dataclass
class SftConfig(TrainingConfig):
    model: str = "smollm2-135m"  # asset name, hub id, local folder or an earlier run's model/
    # "all", "lora", or decoder block indices to train (negative counts from the top).
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 64  # tokens per review (longer reviews are truncated)


@dataclass
class PretrainConfig(TrainingConfig):
    """A decoder-only LM trained from scratch on a corpus, with its own tokenizer (seed 004)."""

    # "shakespeare" (the bundled plays), a .txt file, a folder of .txt/.md files, or a
    # .csv/.jsonl/.parquet file with a text column (pretrain.text_column, else detected).
    corpus: str = "shakespeare"
    text_column: str | None = None
    validation_fraction: float = 0.1  # the last part of every document (contiguous: no line in both)
    tokenizer: Literal["word", "char", "bpe"] = "word"  # trained on the train split (tokenizers library)
    vocab_size: int = 8000  # including the special tokens <unk>, <pad>, <eos>
    min_frequency: int = 2  # word/bpe: rarer pieces become <unk> / are not merged
    architecture: Literal["llama", "gpt2"] = "llama"
    layers: int = 4
    width: int = 256  # hidden size (d_model)
    heads: int = 4
    context: int = 128  # tokens per training block = the model's context length
    # noam: lr = lr_mul * width^-0.5 * min(step^-0.5, step * warmup^-1.5) (Vaswani et al. 2017; the
    # seed's "AttentionScheduler, lr_mul 0.3"); cosine: learning_rate with warmup_ratio, as elsewhere.
    schedule: Literal["noam", "cosine"] = "noam"
    lr_mul: float = 0.3
    warmup_steps: int = 200  # noam only
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3  # cosine only
    weight_decay: float = 0.01
    eval_batch_size: int = 64
    checkpoint_every: int = 200
    # Generated from these at every evaluation (samples.jsonl) and shown in the report.
    sample_prompts: list[str] = field(default_factory=lambda: ["ROMEO.\n", "To be, or", "The king"])
    sample_tokens: int = 48


@dataclass
class PairsConfig:
    """Preference pairs (prompt, chosen, rejected[, margin]) for objective: pairs."""

    source: str | None = None  # .jsonl/.csv/.parquet/.json file or hf:<dataset id>
    split: str = "train"
    prompt_column: str | None = None  # None: detect (prompt, question, ...); may be absent
    chosen_column: str | None = None
    rejected_column: str | None = None
    margin_column: str | None = None  # optional: Bradley-Terry with a margin
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])


@dataclass
class RewardConfig(TrainingConfig):
    # labels: a classifier on labelled texts (seed 000); pairs: Bradley-Terry on preferences (seed 003).
    objective: Literal["labels", "pairs"] = "labels"
    # A BERT-family encoder (minilm-l6, bert-base-uncased, ...) or a causal LM / SFT run directory,
    # whose LM head is replaced by a scalar head (seed 004).
    model: str = "minilm-l6"
    # "head" (only the scalar head), "all", or block indices trained along with the head.
    trainable: Literal["head", "all"] | list[int] = field(default_factory=lambda: [-1])
    data: DataConfig | None = None  # labelled texts; None: the top-level data section
    # Keep the backbone's dropout while training (regularises; about 3x slower on a CPU).
    dropout: bool = False
    pairs: PairsConfig = field(default_factory=PairsConfig)
    max_length: int = 256
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    eval_batch_size: int = 64
    checkpoint_every: int = 100


@dataclass
class RewardFnConfig:
    """The reward PPO and evaluation ask for scores (rlhflab/rewards.py)."""

    # A reward run directory, a classifier (hub id, hf:<id> or local folder), or a Python callable
    # module:function / path.py:function. None: this run's reward model (runs/<name>/reward).
    source: str | None = None
    kind: Literal["auto", "reward_model", "classifier", "callable"] = "auto"
    label: str = "POSITIVE"  # classifiers: the label whose score is the reward, found by name
    # auto: normalised score for reward models, probability for classifiers.
    output: Literal["auto", "score", "probability", "logit", "logit_diff"] = "auto"
    flip: bool = False  # reward the opposite (e.g. negative reviews): 1 - p, or -score
    text: Literal["response", "prompt+response"] = "prompt+response"  # what the model reads
    batch_size: int = 32
    max_length: int = 512  # tokens; longer texts are truncated


@dataclass
class PpoConfig:
    """Online RL against the reward with a KL penalty to the frozen SFT model: PPO (value head,
    GAE), GRPO or RLOO (several responses per prompt, no value head)."""

    # ppo: GAE with a value head (Ziegler et al. 2019); grpo: group-normalised advantages (Shao et
    # al. 2024); rloo: leave-one-out baselines (Ahmadian et al. 2024).
    algorithm: Literal["ppo", "grpo", "rloo"] = "ppo"
    samples_per_prompt: int | None = None  # responses per prompt; None: 1 for ppo, 4 for grpo and rloo
    # Where beta * KL goes: a per-token penalty in the reward, or a k3 term in the loss.
    # auto: in the reward for ppo and rloo, in the loss for grpo (as their papers do).
    kl_penalty: Literal["auto", "reward", "loss"] = "auto"
    policy: str | None = None  # None: this run's SFT model (runs/<name>/sft); else a model id or folder
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    steps: int = 90  # RL steps: rollout batch -> scores -> several epochs of updates
    batch_size: int = 64  # responses per rollout, over all processes (prompts x samples_per_prompt)
    minibatch_size: int = 16
    ppo_epochs: int = 2  # passes over each rollout batch (4 spent more KL for the same reward here)
    learning_rate: float = 1e-4
    max_new_tokens: int = 24
    # Pure sampling by default: top-k/top-p or a minimum length would make the sampled
    # distribution differ from the policy whose log-probs enter the KL estimate.
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop_token: str | None = None  # ends a response besides EOS (e.g. "."); must be one token
    non_stop_penalty: float | None = None  # score for responses that never stop
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_coef: float = 0.05  # initial beta
    adaptive_kl: bool = True
    kl_target: float = 5.0  # nats per response
    kl_horizon: int = 1000  # responses; smaller reacts faster (trl uses 10000 with much longer runs)
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    grad_clip: float = 1.0
    eval_prompts: int = 64  # held-out prompts (test split) scored before, during and after
    eval_every: int = 10  # steps between evaluations
    sample_every: int = 5  # steps between sample tables in samples.jsonl
    # Save a snapshot of the policy after every pass over the training prompts (checkpoints/epoch-N:
    # the trainable tensors, or the LoRA adapter, plus a pointer to the starting model), for the
    # over-optimisation study (seed 004; `rlhflab overopt`). Any model setting loads one.
    snapshot_each_epoch: bool = True
    snapshot_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # bfloat16: half the disk of float32
    checkpoint_every: int = 5
    cache_frozen: bool = True


@dataclass
class OnPolicyPairsConfig:
    """Pairs from the starting policy's own samples, ranked by the reward function (AI feedback):
    k responses per prompt, the best-scored is chosen and the worst rejected."""

    prompts: int = 256  # train-split prompts (fewer when the split is smaller)
    samples_per_prompt: int = 4
    max_new_tokens: int | None = None  # None: ppo.max_new_tokens, so responses match RL's
    temperature: float = 1.0
    batch_size: int = 32  # prompts x samples generated at once


@dataclass
class DpoConfig(TrainingConfig):
    """Direct preference optimisation (Rafailov et al. 2023) from preference pairs, against the
    starting model as the frozen reference (its log-probs are computed once per pair)."""

    policy: str | None = None  # None: this run's SFT model (runs/<name>/sft); else a model id or folder
    # pairs.source: a prompt/chosen/rejected file (the reward stage's format, the web app's pairs
    # export); None: on-policy pairs sampled from the policy and ranked by reward_fn.
    pairs: PairsConfig = field(default_factory=lambda: PairsConfig(fractions=[0.9, 0.1, 0.0]))
    on_policy: OnPolicyPairsConfig = field(default_factory=OnPolicyPairsConfig)
    beta: float = 0.1  # strength of the implicit KL constraint
    loss: Literal["sigmoid", "ipo"] = "sigmoid"  # sigmoid: DPO; ipo: Azar et al. 2023
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 96  # prompt + response tokens (the prompt gives way from its front)
    eval_prompts: int = 64  # held-out prompts (test split) answered before and after, as ppo.eval_prompts
    epochs: int = 2
    batch_size: int = 16  # pairs per optimizer step
    learning_rate: float = 1e-4
    eval_batch_size: int = 16


@dataclass
class IlqlConfig(TrainingConfig):
    """Implicit language Q-learning (Snell et al. 2022): offline RL from texts with rewards. Two Q
    heads with Polyak-averaged targets and a V head on the LM's hidden states; generation adds
    beta * (Q - V) to the LM's log-probs (rlhflab/models/ilql.py)."""

    policy: str | None = None  # None: this run's SFT model; else a model id or folder
    # A file of scored texts (.jsonl/.csv/.json/.parquet with a text and a reward column); None:
    # the data section's reviews with their labels as rewards (trlX's ILQL sentiment example).
    samples: str | None = None
    text_column: str | None = None  # None: detect (text, sample, review, ...)
    reward_column: str | None = None  # None: detect (reward, score, label, ...)
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 64  # tokens per text (longer texts keep their beginning; the reward stays on the last token)
    gamma: float = 0.99
    tau: float = 0.7  # expectile of V
    cql_scale: float = 0.1
    awac_scale: float = 1.0
    awac_beta: float = 1.0  # advantage weights exp(awac_beta (Q - V)); 0 is trlX's plain LM loss
    polyak: float = 0.05  # target heads move this share toward the online heads every step
    beta: float = 1.0  # the generation default; any other at load time: "<run>/ilql@beta=4"
    eval_betas: list[float] = field(default_factory=lambda: [0.0, 1.0, 4.0])  # held-out evaluation at each
    eval_prompts: int = 64
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-4
    eval_batch_size: int = 32


@dataclass
class EvaluateConfig:
    """Held-out prompts -> responses of each model -> rewards, KL, perplexity, diversity, figures."""

    # name -> model (run directory, asset name, hub id or folder). None: this run's sft and ppo.
    # The first model is the reference that KL and perplexity are measured against.
    models: dict[str, str] | None = None
    prompts: int = 200  # from the test split (fewer when the split is smaller)
    max_new_tokens: int | None = None  # None: ppo.max_new_tokens, so responses match training
    temperature: float = 1.0
    batch_size: int = 32
    samples_per_sentiment: int = 4  # side-by-side samples shown per prompt sentiment
    # Gold judges, name -> source: scorers RL never optimised (a reward run directory, a classifier,
    # module:function, or the built-in "vader"), each calibrated on held-out labelled texts and
    # scored beside the proxy reward (rlhflab/eval/gold.py; the over-optimisation study uses them too).
    gold: dict[str, str] | None = None
    gold_data: str | None = None  # labelled texts to calibrate the judges on; None: this run's test split
    gold_reviews: int = 200  # calibration texts, balanced by label where possible
    # Best-of-n baselines from the reference model: max(best_of) samples for each of the first
    # best_of_prompts prompts; for each n the best of the first n by the proxy reward is kept.
    best_of: list[int] = field(default_factory=list)
    best_of_prompts: int = 64


@dataclass
class OveroptConfig:
    """The over-optimisation study (`rlhflab overopt`): the RL run's starting model and every
    per-epoch snapshot answer the same held-out prompts; proxy and gold judges (evaluate.gold),
    KL, separator ratio and diversity per checkpoint, and a verdict (rlhflab/stages/overopt.py)."""

    run: str | None = None  # an RL stage folder (with checkpoints/epoch-N); None: this run's ppo
    prompts: int = 100  # held-out prompts from the test split, the evaluation's first ones
    max_new_tokens: int | None = None  # None: ppo.max_new_tokens
    temperature: float = 1.0
    separators: list[str] = field(default_factory=lambda: ["\n", " ", ",", "."])  # seed 004's
    gold_drop: float = 0.05  # a fall in a gold judge's mean score that counts (its own units: probability, compound)
    separator_drop: float = 0.25  # a fall of the separator ratio below the reference's that counts (share of it)
    diversity_drop: float = 0.25  # the same for distinct-2 (repeating "great great great" keeps the separators)
    samples: int = 3  # samples shown per checkpoint


@dataclass
class RuntimeConfig:
    """Where every stage runs. Under `accelerate launch` the launcher picks processes and devices."""

    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    # auto: bf16 where the hardware runs it natively (recent GPUs, CPUs with AVX512-BF16), else no.
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"


@dataclass
class Config:
    name: str = "default"  # run directories go to <runs_dir>/<name>/<stage>
    seed: int = 0
    runs_dir: str = "runs"
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    # The pipeline's stages, in order; the default is the IMDB pipeline. A model setting may
    # name an earlier stage of this run as "run:<stage>" (e.g. reward.model: run:pretrain).
    stages: list[Literal[STAGE_NAMES]] = field(
        default_factory=lambda: ["sft", "reward", "ppo", "evaluate"])
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reward_fn: RewardFnConfig = field(default_factory=RewardFnConfig)
    ppo: PpoConfig = field(default_factory=PpoConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    ilql: IlqlConfig = field(default_factory=IlqlConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    overopt: OveroptConfig = field(default_factory=OveroptConfig)
    # Metrics also to TensorBoard (runs/<name>/tensorboard/) or Weights & Biases (rlhflab/tracking.py);
    # the package must be installed. No stage's output depends on it.
    tracking: Literal["none", "tensorboard", "wandb"] = "none"

    def __post_init__(self) -> None:
        check_run_name(self.name)


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def check_run_name(name: str) -> None:
    """A run name is one folder name under runs_dir: no separators, no `..`, not hidden."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name) or ".." in name or len(name) > 200:
        raise RlhfLabError(
            f"name must be a plain folder name (letters, digits, and . _ - + inside; no / or ..), "
            f"got {name!r}. Runs go to <runs_dir>/<name>/; to write elsewhere set runs_dir=..."
        )


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans (so `no` stays a string) and 1e-4 is a float."""


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_YamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML preset (or the defaults when `path` is None) and apply `a.b=value` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return check_config(resolve_run_references(from_dict(Config, raw)))


def to_dict(cfg: Any) -> Any:
    """Plain data; a section's own fields come before those it shares with other sections."""
    if dataclasses.is_dataclass(cfg):
        names = [f.name for f in dataclasses.fields(cfg)]
        own = [n for n in type(cfg).__dict__.get("__annotations__", {}) if n in names]
        return {n: to_dict(getattr(cfg, n)) for n in own + [n for n in names if n not in own]}
    if isinstance(cfg, list):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every key and type."""
    if not isinstance(data, dict):
        raise RlhfLabError(f"{where or 'config'} must be a mapping of keys to values, got {_show(data)}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise RlhfLabError(_unknown_key_message(str(key), list(fields), where))
    values = {key: _convert(_over_default(fields[key], data[key]), hints[key], _join(where, key)) for key in data}
    return cls(**values)


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """Settings given for a nested section, over that field's own default: dpo.pairs.source=x keeps
    dpo.pairs' fractions (which differ from PairsConfig's) instead of falling back to the class's."""
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    base = to_dict(default)
    return {**base, **{k: _over_default(next(x for x in dataclasses.fields(default) if x.name == k), v)
                       if k in base and isinstance(v, dict) else v for k, v in value.items()}}


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        errors = []
        for member in members:
            if member is type(None):
                continue
            try:
                return _convert(value, member, where)
            except RlhfLabError as exc:
                errors.append(exc)
        if len(errors) == 1:  # `X | None`: X's own message (say, an unknown key inside a section) is the useful one
            raise errors[0]
        raise RlhfLabError(f"{where}: expected {_type_name(hint)}, got {_show(value)}.")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise RlhfLabError(f"{where}: must be one of {', '.join(map(repr, choices))}; got {_show(value)}.")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise RlhfLabError(f"{where}: expected {_type_name(hint)}, got {_show(value)}.")
        key_hint, item_hint = typing.get_args(hint)
        return {_convert(k, key_hint, where): _convert(v, item_hint, _join(where, str(k))) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise RlhfLabError(f"{where}: expected a list, got {_show(value)}.")
        (item_hint,) = typing.get_args(hint)
        return [_convert(item, item_hint, f"{where}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # name=2024 means the name "2024"
    elif hint is Any:
        return value
    raise RlhfLabError(f"{where}: expected {_type_name(hint)}, got {_show(value)}.")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RlhfLabError(f"Config file not found: {path.resolve()}. Pass an existing YAML file (see configs/).")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RlhfLabError(f"Config file {path} is not valid YAML{where}: {exc.problem or exc.context}.") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RlhfLabError(f"Config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RlhfLabError(f"Config file {path} must hold a mapping of keys to values at the top level.")
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RlhfLabError(f"Override {item!r} must look like section.key=value (e.g. sft.epochs=3).")
    try:
        value = parse_yaml(text)  # so 3 -> int, 1e-4 -> float, [-2,-1] -> list, null -> None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RlhfLabError(f"Override {item!r}: {part} is not a section.")
        node = child
    node[parts[-1]] = value


# Keys that moved, so an older preset gets told where they went.
MOVED = {"device": "runtime.device", "mixed_precision": "runtime.mixed_precision"}


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    full = _join(where, key)
    if key in MOVED and where != "runtime":
        return f"{full!r} moved to {MOVED[key]!r}: one setting for every stage."
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {_join(where, close[0])!r}?" if close else ""
    return f"Unknown config key {full!r}.{hint} Valid keys{' in ' + where if where else ''}: {', '.join(valid)}."


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(m) for m in typing.get_args(hint))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping of name: {}".format(_type_name(typing.get_args(hint)[1]))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


# --- resolve: range checks and derived defaults, run when a config loads ----------------------
# (so a bad ppo.minibatch_size fails in a second, not after the stages before PPO have trained)


def check_training_config(cfg: TrainingConfig, section: str) -> None:
    """Range checks the type system cannot express; `section` names the config key in messages."""
    checks = [
        (cfg.epochs >= 1, "epochs must be at least 1"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "max_steps must be at least 1 (or null)"),
        (cfg.batch_size >= 1, "batch_size must be at least 1"),
        (1 <= cfg.gradient_accumulation_steps <= cfg.batch_size,
         "gradient_accumulation_steps must be between 1 and batch_size"),
        (cfg.eval_batch_size >= 1, "eval_batch_size must be at least 1"),
        (cfg.learning_rate > 0, "learning_rate must be positive"),
        (cfg.weight_decay >= 0, "weight_decay must not be negative"),
        (0 <= cfg.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
        (cfg.grad_clip > 0, "grad_clip must be positive"),
        (cfg.eval_every is None or cfg.eval_every >= 1, "eval_every must be at least 1 (or null)"),
        (cfg.early_stopping_patience >= 1, "early_stopping_patience must be at least 1"),
        (cfg.log_every >= 1, "log_every must be at least 1"),
        (cfg.checkpoint_every >= 1, "checkpoint_every must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"{section}.{message}.")


def check_rl(ppo: PpoConfig) -> None:
    """Range checks of the RL section (ppo.*)."""
    checks = [
        (ppo.steps >= 1, "steps must be at least 1"),
        (ppo.batch_size >= 1 and ppo.minibatch_size >= 1, "batch_size and minibatch_size must be at least 1"),
        (ppo.minibatch_size <= ppo.batch_size, "minibatch_size must not exceed batch_size"),
        (ppo.ppo_epochs >= 1, "ppo_epochs must be at least 1"),
        (ppo.learning_rate > 0, "learning_rate must be positive"),
        (ppo.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
        (ppo.temperature > 0, "temperature must be positive"),
        (ppo.top_k >= 0 and 0 < ppo.top_p <= 1, "top_k must be >= 0 and top_p in (0, 1]"),
        (ppo.kl_coef >= 0 and ppo.kl_target > 0 and ppo.kl_horizon > 0, "kl_coef must be >= 0, kl_target and kl_horizon positive"),
        # beta moves by up to 20% x batch_size / kl_horizon per step: a shorter horizon overshoots below 0.
        (not ppo.adaptive_kl or ppo.kl_horizon >= ppo.batch_size,
         f"kl_horizon ({ppo.kl_horizon}) must be at least batch_size ({ppo.batch_size}): each step moves beta by up to "
         f"20% x batch_size / kl_horizon, so a shorter horizon can drive beta to or below 0"),
        (ppo.eval_prompts >= 1, "eval_prompts must be at least 1"),
        (0 <= ppo.gamma <= 1 and 0 <= ppo.lam <= 1, "gamma and lam must be in [0, 1]"),
        (ppo.clip_range > 0 and ppo.clip_range_value > 0, "clip ranges must be positive"),
        (ppo.eval_every >= 1 and ppo.sample_every >= 1 and ppo.checkpoint_every >= 1, "eval_every, sample_every and checkpoint_every must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"ppo.{message}.")




def resolve_rl(ppo: PpoConfig, world_size: int = 1) -> PpoConfig:
    """The RL section with the algorithm's defaults filled in (samples_per_prompt, kl_penalty),
    checked to split into prompts, processes and minibatches. Raises RlhfLabError naming the setting."""
    check_rl(ppo)
    k = ppo.samples_per_prompt or (1 if ppo.algorithm == "ppo" else 4)
    kl_penalty = ppo.kl_penalty if ppo.kl_penalty != "auto" else ("loss" if ppo.algorithm == "grpo" else "reward")
    if k < 1 or (ppo.algorithm != "ppo" and k < 2):
        raise RlhfLabError(f"ppo.samples_per_prompt must be at least {1 if ppo.algorithm == 'ppo' else 2} for "
                           f"{ppo.algorithm} (its baseline compares responses to the same prompt); got {k}.")
    if ppo.batch_size % (k * world_size):
        raise RlhfLabError(f"ppo.batch_size ({ppo.batch_size} responses) must be a multiple of samples_per_prompt ({k}) "
                           f"x processes ({world_size}).")
    if ppo.minibatch_size % world_size:
        raise RlhfLabError(f"ppo.minibatch_size ({ppo.minibatch_size}) must be a multiple of the number of processes "
                           f"({world_size}): each process takes an equal share of every minibatch.")
    return dataclasses.replace(ppo, samples_per_prompt=k, kl_penalty=kl_penalty)


def check_pretrain(pre: PretrainConfig) -> None:
    check_training_config(pre, "pretrain")
    checks = [
        (0 < pre.validation_fraction < 1, "validation_fraction must be between 0 and 1"),
        (pre.layers >= 1 and pre.width >= 1 and pre.heads >= 1, "layers, width and heads must be at least 1"),
        (pre.width % pre.heads == 0, f"width ({pre.width}) must be a multiple of heads ({pre.heads})"),
        (pre.context >= 2, "context must be at least 2 tokens"),
        (pre.lr_mul > 0 and pre.warmup_steps >= 1, "lr_mul must be positive and warmup_steps at least 1"),
        (pre.sample_tokens >= 1, "sample_tokens must be at least 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"pretrain.{message}.")


RUN_REFERENCE = "run:"  # "run:pretrain" = this run's pretrain stage folder


def map_strings(cfg: Any, fn) -> Any:
    """Replace every string value anywhere in `cfg` (dataclasses, dicts, lists) by fn(value), in place."""
    def walk(node: Any) -> Any:
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                setattr(node, f.name, walk(getattr(node, f.name)))
            return node
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return fn(node) if isinstance(node, str) else node

    return walk(cfg)


def resolve_run_references(cfg: Config) -> Config:
    """Replace every "run:<stage>" value with <runs_dir>/<name>/<stage> (after overrides, so name= counts)."""
    def resolve(value: str) -> str:
        if not value.startswith(RUN_REFERENCE):
            return value
        stage, _, beta = value[len(RUN_REFERENCE):].partition("@")  # run:ilql@beta=2 keeps its β
        if stage not in STAGE_NAMES:
            raise RlhfLabError(f"{value!r} names no stage; use one of {', '.join('run:' + s for s in STAGE_NAMES)}.")
        return str(Path(cfg.runs_dir) / cfg.name / stage) + (f"@{beta}" if beta else "")

    return map_strings(cfg, resolve)


def check_evaluate(ev: EvaluateConfig) -> None:
    if ev.batch_size < 1 or ev.temperature <= 0 or ev.prompts < 1 or ev.gold_reviews < 2:
        raise RlhfLabError(f"evaluate.batch_size and evaluate.prompts must be >= 1, evaluate.gold_reviews >= 2 and "
                           f"evaluate.temperature > 0 (got {ev.batch_size}, {ev.prompts}, {ev.gold_reviews}, {ev.temperature}).")
    if any(n < 1 for n in ev.best_of) or ev.best_of_prompts < 1:
        raise RlhfLabError(f"evaluate.best_of values and evaluate.best_of_prompts must be at least 1 (got {ev.best_of}, "
                           f"{ev.best_of_prompts}).")
    if ev.gold and "proxy" in ev.gold:
        raise RlhfLabError("evaluate.gold has a judge named 'proxy', the name of the training reward; rename it.")
    vader = [name for name, source in (ev.gold or {}).items() if isinstance(source, str) and source.strip().lower() == "vader"]
    if vader:
        import importlib.util

        if importlib.util.find_spec("vaderSentiment") is None:
            raise RlhfLabError(f"The gold judge evaluate.gold.{vader[0]}=vader needs the vadersentiment package: "
                               f"pip install vadersentiment==3.3.2 (or drop that judge).")


def check_dpo(dpo: DpoConfig) -> None:
    check_training_config(dpo, "dpo")
    on = dpo.on_policy
    checks = [
        (0 < dpo.beta < math.inf, f"beta must be a positive number, got {dpo.beta}"),
        (dpo.max_length >= 2 and dpo.eval_prompts >= 1, "max_length must be at least 2 and eval_prompts at least 1"),
        (on.prompts >= 1 and on.samples_per_prompt >= 2 and on.batch_size >= 1,
         "on_policy.prompts and batch_size must be at least 1 and on_policy.samples_per_prompt at least 2 (a pair "
         "needs two responses)"),
        (on.temperature > 0 and (on.max_new_tokens is None or on.max_new_tokens >= 1),
         "on_policy.temperature must be positive and on_policy.max_new_tokens at least 1"),
        (dpo.pairs.margin_column is None, "pairs.margin_column is set, but DPO's loss has no margin (the reward "
         "stage's Bradley-Terry loss has one): unset it"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"dpo.{message}.")


def check_ilql(il: IlqlConfig) -> None:
    check_training_config(il, "ilql")
    checks = [
        (0 <= il.gamma <= 1 and 0 < il.tau < 1, f"gamma must be in [0, 1] and tau in (0, 1), got {il.gamma}, {il.tau}"),
        *((0 <= getattr(il, key) < math.inf, f"{key} must be a finite number >= 0, got {getattr(il, key)}")
          for key in ("cql_scale", "awac_scale", "awac_beta", "beta")),
        (0 < il.polyak <= 1, f"polyak must be in (0, 1], got {il.polyak}"),
        (il.max_length >= 2 and il.eval_prompts >= 1, "max_length must be at least 2 and eval_prompts at least 1"),
        (all(0 <= b < math.inf for b in il.eval_betas), f"eval_betas must be finite numbers >= 0, got {il.eval_betas}"),
        (il.samples is not None or il.text_column is None and il.reward_column is None,
         "text_column and reward_column name columns of ilql.samples, which is not set (the data section's reviews "
         "are used, each label as its reward): set ilql.samples, or drop the column settings"),
        (il.text_column is None or il.text_column != il.reward_column,
         f"text_column and reward_column are both {il.text_column!r}; the text and its reward need two columns"),
    ]
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"ilql.{message}.")


def check_config(cfg: Config, world_size: int | None = None) -> Config:
    """Every range check and derived quantity of every section; returns cfg unchanged."""
    import os

    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    check_pretrain(cfg.pretrain)
    check_training_config(cfg.sft, "sft")
    check_training_config(cfg.reward, "reward")
    for section, length in (("sft", cfg.sft.max_length), ("reward", cfg.reward.max_length)):
        if length < 2:
            raise RlhfLabError(f"{section}.max_length must be at least 2.")
    resolve_rl(cfg.ppo, world_size)
    check_dpo(cfg.dpo)
    check_ilql(cfg.ilql)
    check_evaluate(cfg.evaluate)
    check_overopt(cfg.overopt)
    if "overopt" in cfg.stages:  # found now, not after SFT, the reward model and RL have trained
        check_study_judges(cfg.evaluate)
        if cfg.overopt.run is None and "ppo" in cfg.stages and not cfg.ppo.snapshot_each_epoch:
            raise RlhfLabError("stages has overopt, which studies the RL run's per-epoch snapshots, and "
                               "ppo.snapshot_each_epoch is false; set it to true.")
    from rlhflab.tracking import check_tracking

    check_tracking(cfg.tracking)
    return cfg


def check_study_judges(ev: EvaluateConfig) -> None:
    """The over-optimisation study needs at least one gold judge."""
    if not ev.gold:
        raise RlhfLabError("The over-optimisation study compares the proxy reward with gold judges, and evaluate.gold is "
                           "empty. Add one, e.g. evaluate.gold.vader=vader (configs/overopt.yaml has two).")


def check_overopt(ov: OveroptConfig) -> None:
    drops = (ov.separator_drop, ov.diversity_drop)
    if ov.prompts < 1 or ov.samples < 0 or ov.temperature <= 0 or ov.gold_drop < 0 or not all(0 < d < 1 for d in drops):
        raise RlhfLabError(f"overopt: prompts must be >= 1, samples >= 0, temperature > 0, gold_drop >= 0, and "
                           f"separator_drop and diversity_drop in (0, 1) (got {ov.prompts}, {ov.samples}, {ov.temperature}, "
                           f"{ov.gold_drop}, {ov.separator_drop}, {ov.diversity_drop}).")
    if not ov.separators or any(not isinstance(s, str) or len(s) != 1 for s in ov.separators):
        raise RlhfLabError(f"overopt.separators must be single characters, got {ov.separators!r}.")
