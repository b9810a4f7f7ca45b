"""Typed configuration: dataclasses per stage, strict YAML loading, `key=value` overrides.

Every field has a type and a default; `load_config` rejects unknown keys (suggesting the
nearest valid one) and values of the wrong type, so a typo never silently falls back to
a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import regex
import yaml

from rlhflab.algorithms.recipes import ALGORITHM_NAMES, get_recipe
from rlhflab.errors import RlhfLabError
# the one list of stages (a declaration: it imports no config) and the stages' old names
from rlhflab.stages.registry import RENAMED, STAGES, current_stage, stage_dir


@dataclass(frozen=True)
class Bounds:
    """The values a numeric setting may take: a finite number in [low, high]; an end named in
    `open` ("low", "high" or "both") is itself refused; None leaves that side unbounded.

    Each section declares one `RANGES` table, field name -> Bounds (for a list, every item);
    `check_ranges` applies it when the config loads. A null value is never range-checked: where
    the type admits it, null means "the default" (never 0)."""

    low: float | None = None
    high: float | None = None
    open: Literal["", "low", "high", "both"] = ""

    def holds(self, value: float) -> bool:
        if not _representable(value):
            return False
        low_open, high_open = self.open in ("low", "both"), self.open in ("high", "both")
        if self.low is not None and (value < self.low or low_open and value == self.low):
            return False
        return self.high is None or not (value > self.high or high_open and value == self.high)

    def describe(self) -> str:
        low_open, high_open = self.open in ("low", "both"), self.open in ("high", "both")
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        if self.low is not None:
            if not low_open and self.low >= 1 and float(self.low).is_integer():
                return f"at least {low}"
            return f"{'>' if low_open else '>='} {low}"
        if self.high is not None:
            return f"{'<' if high_open else '<='} {high}"
        return "a finite number"


# The largest finite float32 (torch.finfo(torch.float32).max): training runs in 32-bit (or narrower)
# floats, so a float setting beyond it (1e39) would overflow to inf there.
FLOAT32_MAX = 3.4028234663852886e38
# The largest 64-bit integer: torch reads a Python int as a C long long, so a whole-number setting
# beyond it (batch_size=10**30) fails deep inside a run ("Overflow when unpacking long long").
INT64_MAX = 2**63 - 1


def _representable(value: float) -> bool:
    """A whole number within 64 bits, or a finite float within float32's range."""
    if isinstance(value, int):
        return -INT64_MAX - 1 <= value <= INT64_MAX
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def at_least(n: int) -> Bounds:
    return Bounds(low=n)


ANY = Bounds()  # any finite number
POSITIVE = Bounds(low=0, open="low")
NON_NEGATIVE = Bounds(low=0)
UNIT = Bounds(low=0, high=1)  # [0, 1]: probabilities, discounts, shares
COUNT = at_least(1)


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
    # 64 leaves every 2-8 word IMDB prompt as it was. In scripts written without spaces (Chinese,
    # Yi, Thai, Javanese, ...) a character counts as a word (rlhflab/data/prompts.py).
    prompt_max_tokens: int = 64
    # RL prompts as they are, instead of the reviews' opening words: a .txt file (one per line) or a
    # .jsonl/.csv/.json file with a `prompt` column. eval_prompts: the held-out ones (None: the
    # first of `prompts`; with neither set, openings of the test split's reviews).
    prompts: str | None = None
    eval_prompts: str | None = None

    RANGES: ClassVar[dict[str, Bounds]] = {
        "per_class": COUNT, "fractions": UNIT,  # fractions also sum to 1 (check_data)
        "prompt_min_words": COUNT, "prompt_max_words": COUNT, "prompt_max_tokens": COUNT,
    }


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # None: every linear layer of the decoder blocks (peft's "all-linear").
    target_modules: list[str] | None = None

    # alpha / r scales the update: an alpha of 0 would train an adapter that changes nothing.
    RANGES: ClassVar[dict[str, Bounds]] = {"r": COUNT, "alpha": COUNT, "dropout": Bounds(0, 1, "high")}


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

    RANGES: ClassVar[dict[str, Bounds]] = {
        "epochs": COUNT, "max_steps": COUNT, "batch_size": COUNT,
        "gradient_accumulation_steps": COUNT,  # at most batch_size (check_training_config)
        "learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE, "warmup_ratio": Bounds(0, 1, "high"),
        "grad_clip": POSITIVE, "eval_every": COUNT, "early_stopping_patience": COUNT, "eval_batch_size": COUNT,
        "log_every": COUNT, "checkpoint_every": COUNT,
    }


@dataclass
class SftConfig(TrainingConfig):
    model: str = "smollm2-135m"  # asset name, hub id, local folder or an earlier run's model/
    # "all", "lora", or decoder block indices to train (negative counts from the top).
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 64  # tokens per review (longer reviews are truncated)

    RANGES: ClassVar[dict[str, Bounds]] = {**TrainingConfig.RANGES, "trainable": ANY, "max_length": at_least(2)}


@dataclass
class PretrainConfig(TrainingConfig):
    """A decoder-only LM trained from scratch on a corpus, with its own tokenizer."""

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

    RANGES: ClassVar[dict[str, Bounds]] = {
        **TrainingConfig.RANGES,
        "validation_fraction": Bounds(0, 1, "both"),
        "vocab_size": COUNT,  # and at least what the tokenizer kind needs (check_pretrain)
        "min_frequency": COUNT, "layers": COUNT, "width": COUNT, "heads": COUNT,  # width % heads == 0
        "context": at_least(2), "lr_mul": POSITIVE, "warmup_steps": COUNT, "sample_tokens": COUNT,
    }


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

    RANGES: ClassVar[dict[str, Bounds]] = {"fractions": UNIT}  # and sum to 1 (check_fractions)


@dataclass
class RewardConfig(TrainingConfig):
    # labels: a classifier on labelled texts; pairs: Bradley-Terry on preferences (Ouyang et al. 2022).
    objective: Literal["labels", "pairs"] = "labels"
    # A BERT-family encoder (minilm-l6, bert-base-uncased, ...) or a causal LM / SFT run directory,
    # whose LM head is replaced by a scalar head.
    model: str = "minilm-l6"
    # "head" (only the scalar head), "all", or block indices trained along with the head.
    trainable: Literal["head", "all"] | list[int] = field(default_factory=lambda: [-1])
    data: DataConfig | None = None  # labelled texts; None: the top-level data section
    # Keep the backbone's dropout while training (regularises; about 3x slower on a CPU).
    dropout: bool = False
    pairs: PairsConfig = field(default_factory=PairsConfig)
    max_length: int = 256
    # What a text longer than max_length keeps: its beginning, or its first quarter of the budget
    # from the beginning and the rest from its end (Sun et al. 2019; labelled texts only: a
    # prompt + response loses its prompt's front instead).
    truncation: Literal["head", "head+tail"] = "head"
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    eval_batch_size: int = 64
    checkpoint_every: int = 100

    RANGES: ClassVar[dict[str, Bounds]] = {**TrainingConfig.RANGES, "trainable": ANY, "max_length": at_least(2)}


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

    RANGES: ClassVar[dict[str, Bounds]] = {"batch_size": COUNT, "max_length": at_least(2)}


@dataclass
class GenerationConfig:
    """How a policy answers a prompt. max_new_tokens is read by every stage that samples (RL's
    rollouts, DPO's on-policy pairs, ILQL's and the study's held-out answers, evaluation and
    `rlhflab generate`) unless its own section sets one; temperature and stop_token shape RL's
    rollouts (evaluation, the study and DPO's pairs keep their own temperature, 1 by default: the
    models' own distributions, which their KL and perplexity assume; they stop only at EOS)."""

    max_new_tokens: int = 24
    # Pure sampling by default: a temperature other than 1 makes the sampled distribution differ
    # from the policy whose log-probs enter the KL estimate (rl.top_k, rl.top_p likewise).
    temperature: float = 1.0
    stop_token: str | None = None  # ends a response besides EOS (e.g. "."); must be one token
    SPACE_OK: ClassVar[frozenset[str]] = frozenset({"stop_token"})  # "\n" is a stop token; "" is not

    RANGES: ClassVar[dict[str, Bounds]] = {"max_new_tokens": COUNT, "temperature": POSITIVE}


@dataclass
class RlConfig:
    """Online RL against the reward with a KL penalty to the frozen SFT model: PPO (value head,
    GAE), GRPO, RLOO, REINFORCE++ or Dr. GRPO (rl.algorithm), all in the stage `rl` (`rlhflab rl`,
    runs/<name>/rl). `ppo:`, this section's old name, is read as it."""

    # One of the recipes in rlhflab/algorithms/recipes.py (ppo: GAE with a value head; grpo, rloo, ...:
    # no critic), which also hold each one's defaults for the two settings below.
    algorithm: Literal[ALGORITHM_NAMES] = "ppo"
    samples_per_prompt: int | None = None  # responses per prompt; None: the recipe's (1 for ppo, 4 for grpo and rloo)
    # Where beta * KL goes: a per-token penalty in the reward, or a k3 term in the loss.
    # auto: where the algorithm's paper puts it (the recipe's kl_penalty: the loss for grpo).
    kl_penalty: Literal["auto", "reward", "loss"] = "auto"
    policy: str | None = None  # None: this run's SFT model (runs/<name>/sft); else a model id or folder
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    steps: int = 90  # RL steps: rollout batch -> scores -> several epochs of updates
    batch_size: int = 64  # responses per rollout, over all processes (prompts x samples_per_prompt)
    minibatch_size: int = 16
    ppo_epochs: int = 2  # passes over each rollout batch (4 spent more KL for the same reward here)
    learning_rate: float = 1e-4
    # The learning rate over the run, set once a step: constant, or decayed to 0 at rl.steps,
    # linearly (TRL's PPOTrainer) or along a cosine (OpenRLHF's default).
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    # The first value_warmup_steps of rl.steps train the value head alone on the starting policy's
    # rollouts (OpenRLHF's freezing_actor_steps), so the first policy update reads a fitted critic.
    value_warmup_steps: int = 0
    # Pure sampling by default: top-k/top-p or a minimum length would make the sampled
    # distribution differ from the policy whose log-probs enter the KL estimate.
    top_k: int = 0
    top_p: float = 1.0
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
    # over-optimisation study (`rlhflab overopt`). Any model setting loads one.
    snapshot_each_epoch: bool = True
    snapshot_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # bfloat16: half the disk of float32
    checkpoint_every: int = 5
    cache_frozen: bool = True
    # What samples the rollouts: hf (transformers' generate on the policy), vllm (a vLLM engine on the
    # same GPU, sent the policy's weights before each rollout; `pip install rlhflab[vllm]`, CUDA, one
    # process), auto (vllm when it is installed and the run is on CUDA, else hf). Either way the
    # training log-probs are recomputed by the policy (rlhflab/vllm_rollout.py).
    rollout_engine: Literal["auto", "hf", "vllm"] = "auto"
    vllm_gpu_memory_utilization: float = 0.3  # the share of the GPU's memory vLLM may take (weights + KV cache)

    RANGES: ClassVar[dict[str, Bounds]] = {
        "samples_per_prompt": COUNT,  # at least the recipe's minimum, 2 for grpo and rloo (resolve_rl)
        "trainable": ANY, "steps": COUNT, "batch_size": COUNT,
        "minibatch_size": COUNT,  # divides batch_size (resolve_rl)
        "ppo_epochs": COUNT, "learning_rate": POSITIVE, "value_warmup_steps": NON_NEGATIVE,
        "top_k": NON_NEGATIVE,  # top_k 0: no top-k filter (transformers' meaning)
        "top_p": Bounds(0, 1, "low"), "non_stop_penalty": ANY,
        "kl_coef": NON_NEGATIVE, "kl_target": POSITIVE,
        "kl_horizon": COUNT,  # at least batch_size with adaptive_kl (check_rl)
        "gamma": UNIT, "lam": UNIT, "clip_range": POSITIVE, "clip_range_value": POSITIVE,
        "vf_coef": POSITIVE,  # 0 would leave the value head that GAE reads untrained
        "grad_clip": POSITIVE, "eval_prompts": COUNT, "eval_every": COUNT, "sample_every": COUNT,
        "checkpoint_every": COUNT, "vllm_gpu_memory_utilization": Bounds(0, 1, "low"),
    }


def check_rl(ppo: RlConfig) -> None:
    """Ranges and cross-field checks of the RL section (rl.*)."""
    check_ranges(ppo, "rl")
    _refuse([
        (ppo.minibatch_size <= ppo.batch_size, "minibatch_size must not exceed batch_size"),
        (ppo.value_warmup_steps < ppo.steps, f"value_warmup_steps ({ppo.value_warmup_steps}) must be fewer than steps "
                                             f"({ppo.steps}): the steps after it train the policy"),
        # beta moves by up to 20% x batch_size / kl_horizon per step: a shorter horizon overshoots below 0.
        (not ppo.adaptive_kl or ppo.kl_horizon >= ppo.batch_size,
         f"kl_horizon ({ppo.kl_horizon}) must be at least batch_size ({ppo.batch_size}): each step moves beta by up to "
         f"20% x batch_size / kl_horizon, so a shorter horizon can drive beta to or below 0"),
    ], "rl")


def resolve_rl(ppo: RlConfig, world_size: int = 1, generation: GenerationConfig | None = None) -> PpoConfig:
    """The RL section with its recipe's defaults filled in (samples_per_prompt, kl_penalty) and an alias
    replaced by the algorithm's own name, checked to split into prompts, processes and minibatches,
    together with the generation settings its rollouts use (`generation`, else the defaults; a
    PpoConfig's own max_new_tokens, temperature and stop_token win where set): what the RL stage
    reads. Raises RlhfLabError naming the setting."""
    check_rl(ppo)
    given = {key: getattr(ppo, key, None) for key in GENERATION_KEYS}
    sampling = dataclasses.replace(generation or GenerationConfig(), **{k: v for k, v in given.items() if v is not None})
    check_ranges(sampling, "generation")
    recipe = get_recipe(ppo.algorithm)
    k = ppo.samples_per_prompt if ppo.samples_per_prompt is not None else recipe.samples_per_prompt
    kl_penalty = ppo.kl_penalty if ppo.kl_penalty != "auto" else recipe.kl_penalty
    if ppo.value_warmup_steps and not recipe.critic:
        raise RlhfLabError(f"rl.value_warmup_steps trains a critic first, and {ppo.algorithm} has none (ppo does); "
                           f"set it to 0 or use rl.algorithm=ppo.")
    if k < recipe.min_samples_per_prompt:
        raise RlhfLabError(f"rl.samples_per_prompt must be at least {recipe.min_samples_per_prompt} for {ppo.algorithm} "
                           f"(its baseline compares responses to the same prompt); got {k}.")
    if ppo.batch_size % (k * world_size):
        raise RlhfLabError(f"rl.batch_size ({ppo.batch_size} responses) must be a multiple of samples_per_prompt ({k}) "
                           f"x processes ({world_size}).")
    if ppo.minibatch_size % world_size:
        raise RlhfLabError(f"rl.minibatch_size ({ppo.minibatch_size}) must be a multiple of the number of processes "
                           f"({world_size}): each process takes an equal share of every minibatch.")
    if ppo.batch_size % ppo.minibatch_size:
        # The update splits each rollout into batch_size / minibatch_size equal steps; a remainder
        # would be one small minibatch whose noisy step weighs as much as a full one.
        divisors = [d for d in range(world_size, ppo.batch_size + 1, world_size) if ppo.batch_size % d == 0]
        raise RlhfLabError(f"rl.minibatch_size ({ppo.minibatch_size}) must divide rl.batch_size ({ppo.batch_size}) so "
                           f"every update step takes the same number of responses; e.g. "
                           f"{', '.join(map(str, divisors[-6:]))}.")
    settings = {f.name: getattr(ppo, f.name) for f in dataclasses.fields(RlConfig)}
    return PpoConfig(**{**settings, "algorithm": recipe.name, "samples_per_prompt": k, "kl_penalty": kl_penalty},
                     **dataclasses.asdict(sampling))


@dataclass
class PpoConfig(RlConfig):
    """The RL settings with the generation settings its rollouts use, in one object: what
    resolve_rl returns and the RL stage reads. Also the RL section's old name in Python:
    Config(ppo=PpoConfig(...)) or Config(rl=PpoConfig(...)) splits it into rl and the generation
    settings it gives (None: not given). New configs write RlConfig and GenerationConfig."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    stop_token: str | None = None


GENERATION_KEYS = ("max_new_tokens", "temperature", "stop_token")  # moved from ppo.* to generation.*


ON_POLICY = "on_policy"  # ilql.samples: sample and score the starting policy rather than read a file


@dataclass
class OnPolicySamplesConfig:
    """The starting policy's own samples on training prompts, scored by the reward function: k
    responses per prompt (ILQL learns from them all; DPO pairs each prompt's best with its worst)."""

    prompts: int = 1200  # train-split prompts (fewer when the split is smaller)
    samples_per_prompt: int = 2
    max_new_tokens: int | None = None  # None: generation.max_new_tokens, so responses match RL's
    temperature: float = 1.0
    batch_size: int = 32  # prompts x samples generated at once

    RANGES: ClassVar[dict[str, Bounds]] = {
        "prompts": COUNT, "samples_per_prompt": COUNT, "max_new_tokens": COUNT, "temperature": POSITIVE,
        "batch_size": COUNT,
    }


@dataclass
class OnPolicyPairsConfig(OnPolicySamplesConfig):
    """Pairs from the starting policy's own samples, ranked by the reward function (AI feedback):
    k responses per prompt, paired as `pairing` says."""

    prompts: int = 256
    samples_per_prompt: int = 4
    # best_worst: the best-scored against the worst, one pair a prompt; all: every two responses whose
    # scores differ, k(k-1)/2 pairs a prompt (the distill loss learns each pair's reward gap).
    pairing: Literal["best_worst", "all"] = "best_worst"

    RANGES: ClassVar[dict[str, Bounds]] = {
        **OnPolicySamplesConfig.RANGES, "samples_per_prompt": at_least(2),  # a pair needs two responses
    }


@dataclass
class DpoConfig(TrainingConfig):
    """Direct preference optimisation (Rafailov et al. 2023) from preference pairs, against a frozen
    reference whose log-probs are computed once per pair; with on-policy pairs, `rounds` of
    sample -> rank -> train (iterated DPO: Xu et al. 2023, Xiong et al. 2024)."""

    policy: str | None = None  # None: this run's SFT model (runs/<name>/sft); else a model id or folder
    # Rounds of on-policy DPO: each samples new pairs from the policy as trained so far (on the next
    # on_policy.prompts training prompts, wrapping around) and trains on them. 1: one round from the start.
    rounds: int = 1
    # The reference of rounds after the first: start (the starting policy, dpo.policy, in every round:
    # the KL stays bounded by beta) or previous_round (the policy as the round began: each round moves on).
    reference: Literal["start", "previous_round"] = "start"
    # pairs.source: a prompt/chosen/rejected file (the reward stage's format, the web app's pairs
    # export); None: on-policy pairs sampled from the policy and ranked by reward_fn.
    pairs: PairsConfig = field(default_factory=lambda: PairsConfig(fractions=[0.9, 0.1, 0.0]))
    on_policy: OnPolicyPairsConfig = field(default_factory=OnPolicyPairsConfig)
    beta: float = 0.1  # strength of the implicit KL constraint
    # sigmoid: DPO; ipo: Azar et al. 2023; distill: beta x h regressed on the pair's reward gap (Fisch et al.
    # 2024), whose optimum is KL-regularised RL's with beta as the KL coefficient; it needs on-policy pairs.
    loss: Literal["sigmoid", "ipo", "distill"] = "sigmoid"
    # > 0: add nll_coef x the chosen response's NLL per token to the loss (RPO, Pang et al. 2024), for
    # where DPO lowers the chosen responses' likelihood with the rejected ones'. On the offline default
    # it does not, and the term leaves the reward-KL curve where it was (docs/offline.md).
    nll_coef: float = 0.0
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 96  # prompt + response tokens (the prompt gives way from its front)
    eval_prompts: int = 64  # held-out prompts (test split) answered before and after, as rl.eval_prompts
    epochs: int = 2
    batch_size: int = 16  # pairs per optimizer step
    learning_rate: float = 1e-4
    eval_batch_size: int = 16

    RANGES: ClassVar[dict[str, Bounds]] = {
        **TrainingConfig.RANGES, "beta": POSITIVE, "nll_coef": NON_NEGATIVE, "trainable": ANY, "max_length": at_least(2),
        "eval_prompts": COUNT, "rounds": COUNT,  # more than 1 only with on-policy pairs (check_dpo)
    }


@dataclass
class IlqlConfig(TrainingConfig):
    """Implicit language Q-learning (Snell et al. 2022): offline RL from texts with rewards. Two Q
    heads with Polyak-averaged targets and a V head on the LM's hidden states; generation adds
    beta * (Q - V) to the LM's log-probs (rlhflab/models/ilql.py)."""

    policy: str | None = None  # None: this run's SFT model; else a model id or folder
    # A file of scored texts (.jsonl/.csv/.json/.parquet with a text and a reward column);
    # "on_policy": the starting policy's own samples on training prompts, scored by reward_fn
    # (ilql.on_policy; on the offline default they teach ILQL more per nat than the reviews do,
    # docs/offline.md); None: the data section's reviews with their labels as rewards (trlX's ILQL
    # sentiment example).
    samples: str | None = None
    on_policy: OnPolicySamplesConfig = field(default_factory=OnPolicySamplesConfig)
    text_column: str | None = None  # None: detect (text, sample, review, ...)
    reward_column: str | None = None  # None: detect (reward, score, label, ...)
    trainable: Literal["all", "lora"] | list[int] = field(default_factory=lambda: [-2, -1])
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 64  # tokens per text (longer texts keep their beginning; the reward stays on the last token)
    gamma: float = 0.99
    # What Q regresses on (rlhflab/ops/ilql.py): "td", r + gamma V(next state) (ILQL's Bellman target);
    # "monte_carlo", the discounted return that followed in the data (one-step offline RL). With one
    # reward at the end of each text it reaches every state at once, where TD carries it back one
    # state per round of bootstrapping: on the offline default TD's V learns nothing in the budget
    # and monte_carlo's does (docs/offline.md).
    q_target: Literal["td", "monte_carlo"] = "monte_carlo"
    tau: float = 0.7  # expectile of V
    cql_scale: float = 0.1
    awac_scale: float = 1.0
    awac_beta: float = 1.0  # advantage weights exp(awac_beta (Q - V)); 0 is trlX's plain LM loss
    polyak: float = 0.05  # target heads move this share toward the online heads every step
    beta: float = 1.0  # the generation default; any other at load time: "<run>/ilql@beta=4"
    # Generation keeps the k highest steered logits at each step (trlX samples ILQL with top_k 20);
    # 0: the whole vocabulary. Saved with the heads, so every later use samples the same way.
    top_k: int = 0
    eval_betas: list[float] = field(default_factory=lambda: [0.0, 1.0, 4.0])  # held-out evaluation at each
    eval_prompts: int = 64
    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-4
    eval_batch_size: int = 32

    RANGES: ClassVar[dict[str, Bounds]] = {
        **TrainingConfig.RANGES, "trainable": ANY, "max_length": at_least(2), "gamma": UNIT,
        "tau": Bounds(0, 1, "both"), "cql_scale": NON_NEGATIVE, "awac_scale": NON_NEGATIVE, "awac_beta": NON_NEGATIVE,
        "polyak": Bounds(0, 1, "low"), "beta": NON_NEGATIVE, "top_k": NON_NEGATIVE, "eval_betas": NON_NEGATIVE, "eval_prompts": COUNT,
    }


@dataclass
class EvaluateConfig:
    """Held-out prompts -> responses of each model -> rewards, KL, perplexity, diversity, figures."""

    # name -> model (run directory, asset name, hub id or folder). None: this run's sft and rl.
    # The first model is the reference that KL and perplexity are measured against.
    models: dict[str, str] | None = None
    prompts: int = 200  # from the test split (fewer when the split is smaller)
    max_new_tokens: int | None = None  # None: generation.max_new_tokens, so responses match training
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

    RANGES: ClassVar[dict[str, Bounds]] = {
        "prompts": COUNT, "max_new_tokens": COUNT, "temperature": POSITIVE, "batch_size": COUNT,
        "samples_per_sentiment": NON_NEGATIVE, "gold_reviews": at_least(2),  # both labels to calibrate on
        "best_of": COUNT, "best_of_prompts": COUNT,
    }


@dataclass
class FrontierConfig:
    """Several tuned runs of one starting model and reward, and one reward-KL figure of them all, from
    one `rlhflab pipeline` call (rlhflab/sweep.py frontier_plan): the run's own `stages` train once
    in <runs_dir>/<name>; then each point runs at each seed as a run of its own in
    <runs_dir>/<name>/sweep/<point>[-seed<s>] (its overrides over this config, the run's stages
    linked in); then `rlhflab frontier` draws them into <runs_dir>/<name>/sweep/frontier."""

    # point name -> its settings over this config, as dotted keys or nested sections; each names its
    # own stages (e.g. {stages: [rl], rl.kl_target: 2.0}). None: no frontier, a plain pipeline.
    points: dict[str, dict[str, Any]] | None = None
    seeds: list[int] = field(default_factory=lambda: [0])  # every point runs once per seed

    RANGES: ClassVar[dict[str, Bounds]] = {"seeds": Bounds(0, 2**31 - 1)}


@dataclass
class OveroptConfig:
    """The over-optimisation study (`rlhflab overopt`): the RL run's starting model and every
    per-epoch snapshot answer the same held-out prompts; proxy and gold judges (evaluate.gold),
    KL, separator ratio and diversity per checkpoint, and a verdict (rlhflab/stages/overopt.py)."""

    run: str | None = None  # an RL stage folder (with checkpoints/epoch-N); None: this run's rl
    prompts: int = 100  # held-out prompts from the test split, the evaluation's first ones
    max_new_tokens: int | None = None  # None: generation.max_new_tokens
    temperature: float = 1.0
    separators: list[str] = field(default_factory=lambda: ["\n", " ", ",", "."])  # newline, space, comma, full stop
    SPACE_OK: ClassVar[frozenset[str]] = frozenset({"separators"})  # "\n" and " " are separators
    gold_drop: float = 0.05  # a fall in a gold judge's mean score that counts (its own units: probability, compound)
    separator_drop: float = 0.25  # a fall of the separator ratio below the reference's that counts (share of it)
    diversity_drop: float = 0.25  # the same for distinct-2 (repeating "great great great" keeps the separators)
    samples: int = 3  # samples shown per checkpoint

    RANGES: ClassVar[dict[str, Bounds]] = {
        "prompts": COUNT, "max_new_tokens": COUNT, "temperature": POSITIVE, "gold_drop": NON_NEGATIVE,
        "separator_drop": Bounds(0, 1, "both"), "diversity_drop": Bounds(0, 1, "both"), "samples": NON_NEGATIVE,
    }


@dataclass
class RuntimeConfig:
    """Where every stage runs. Under `accelerate launch` the launcher picks processes and devices."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present (pick a GPU with CUDA_VISIBLE_DEVICES)
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
    # Each is a name in rlhflab/stages/registry.py (check_config refuses any other).
    # An old stage name (ppo, now rl: registry.RENAMED) is read as the new one.
    stages: list[str] = field(default_factory=lambda: ["sft", "reward", "rl", "evaluate"])
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    reward_fn: RewardFnConfig = field(default_factory=RewardFnConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    rl: RlConfig = field(default_factory=RlConfig)  # every online RL algorithm; `ppo` is read as it
    dpo: DpoConfig = field(default_factory=DpoConfig)
    ilql: IlqlConfig = field(default_factory=IlqlConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    overopt: OveroptConfig = field(default_factory=OveroptConfig)
    # Several tuned runs and their reward-KL frontier from one pipeline call (configs/frontier.yaml).
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    # Metrics also to TensorBoard (runs/<name>/tensorboard/) or Weights & Biases (rlhflab/tracking.py);
    # the package must be installed. No stage's output depends on it.
    tracking: Literal["none", "tensorboard", "wandb"] = "none"

    # Seeds feed numpy (below 2**32) after offsets such as + rank and + step: 2**31 leaves room.
    RANGES: ClassVar[dict[str, Bounds]] = {"seed": Bounds(0, 2**31 - 1)}

    def __post_init__(self) -> None:
        check_run_name(self.name)
        self.stages = _current_stages(self.stages)
        if isinstance(self.rl, PpoConfig):  # the old class, generation settings and all
            self.rl, self.generation = _split_ppo(self.rl, self.generation)

    @property
    def ppo(self) -> RlConfig:
        """The RL section under its old name (read and set as cfg.rl)."""
        note_renamed("ppo", "rl")
        return self.rl

    @ppo.setter
    def ppo(self, section: RlConfig) -> None:
        note_renamed("ppo", "rl")
        self.rl = section
        self.__post_init__()


_config_init = Config.__init__


def _init_with_ppo(self, *args, ppo: RlConfig | None = None, **kwargs) -> None:
    """Config(..., ppo=...) as Config(..., rl=...), with a note."""
    if ppo is not None:
        if "rl" in kwargs:
            raise RlhfLabError("Config got both rl and ppo; they are the same section, give rl.")
        note_renamed("ppo", "rl")
        kwargs["rl"] = ppo
    _config_init(self, *args, **kwargs)


_init_with_ppo.__signature__ = __import__("inspect").signature(_config_init)
Config.__init__ = _init_with_ppo


def _split_ppo(old: PpoConfig, generation: GenerationConfig) -> tuple[RlConfig, GenerationConfig]:
    """A PpoConfig -> (its RL settings, generation with the settings it gave)."""
    given = {key: getattr(old, key) for key in GENERATION_KEYS if getattr(old, key) is not None}
    for key in given:
        note_renamed(f"ppo.{key}", f"generation.{key}")
    fields = {f.name: getattr(old, f.name) for f in dataclasses.fields(RlConfig)}
    return RlConfig(**fields), dataclasses.replace(generation, **given)


_NOTED: set[str] = set()


def note_once(key: str, line: str) -> None:
    """`note: <line>` on stderr, once per process and key. Under `accelerate launch` only the main
    process (RANK 0) says it, as with errors."""
    if key not in _NOTED and os.environ.get("RANK", "0") == "0":
        _NOTED.add(key)
        import sys

        print(f"note: {line}", file=sys.stderr)


def note_renamed(old: str, new: str) -> None:
    """One line on stderr, once per process and name: `old` is read as `new`."""
    note_once(old, f"{old!r} is now {new!r}; the old name still works.")


def _current_stages(stages: Any) -> Any:
    """A list of stage names with old names (registry.RENAMED) as the new ones; anything else as it is
    (check_config says what is wrong with it)."""
    if not isinstance(stages, list) or not set(RENAMED).intersection(s for s in stages if isinstance(s, str)):
        return stages
    return [current_stage(s, "stages: [{}]") if isinstance(s, str) else s for s in stages]


def _alias_path(parts: list[str]) -> list[str]:
    """A dotted key under its current name: ppo.* -> rl.*, ppo/rl.max_new_tokens (temperature,
    stop_token) -> generation.*; anything else as it is."""
    if parts and parts[0] in ("ppo", "rl") and len(parts) > 1 and parts[1] in GENERATION_KEYS:
        if len(parts) == 2:
            note_renamed(".".join(parts), f"generation.{parts[1]}")
            return ["generation", parts[1]]
    if parts and parts[0] == "ppo":
        note_renamed("ppo", "rl")
        return ["rl", *parts[1:]]
    return parts


def upgrade_names(raw: dict[str, Any]) -> dict[str, Any]:
    """Plain config data with old names moved to the current ones (a copy where anything moved):
    a `ppo:` section is `rl:`, and its max_new_tokens, temperature and stop_token are
    `generation:`'s; `ppo` in `stages:` is `rl`. Raises RlhfLabError when one setting is given under
    both names."""
    if isinstance(raw, dict) and _current_stages(raw.get("stages")) is not raw.get("stages"):
        raw = {**raw, "stages": _current_stages(raw["stages"])}
    if not isinstance(raw, dict) or not any(isinstance(raw.get(s), dict) and (s == "ppo" or set(raw[s]) & set(GENERATION_KEYS))
                                            for s in ("ppo", "rl")):
        return raw
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items() if k != "ppo"}
    for key, value in (raw.get("ppo") or {}).items() if isinstance(raw.get("ppo"), dict) else ():
        _move(out, _alias_path(["ppo", str(key)]), value, f"ppo.{key}")
    if "ppo" in raw and not isinstance(raw["ppo"], dict):
        out["rl"] = raw["ppo"]  # from_dict says what is wrong with it, under its new name
    for key in [k for k in (out.get("rl") or {}) if k in GENERATION_KEYS] if isinstance(out.get("rl"), dict) else ():
        _move(out, _alias_path(["rl", key]), out["rl"].pop(key), f"rl.{key}")
    return out


def _move(out: dict[str, Any], path: list[str], value: Any, old: str) -> None:
    section, key = path
    node = out.setdefault(section, {})
    if not isinstance(node, dict):
        raise RlhfLabError(f"{section} must be a mapping of keys to values, got {_show(node)}.")
    if key in node and node[key] != value:
        raise RlhfLabError(f"{old} and {section}.{key} are the same setting; give it once, as {section}.{key}.")
    node[key] = value


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
        raw = upgrade_names(_read_yaml(Path(path)))
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
    if cls is Config:
        data = upgrade_names(data)
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
            try:
                return float(value)
            except OverflowError:  # a whole number beyond float64 (10**400)
                raise RlhfLabError(f"{where} must be a finite number in 32-bit floats (magnitude at most "
                                   f"{FLOAT32_MAX:.8g}), got a whole number of {len(str(abs(value)))} digits.") from None
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
    except ValueError as exc:  # a value YAML reads but Python refuses: a date such as 2024-13-45, an integer of over 4300 digits
        raise RlhfLabError(f"Config file {path} has a value that cannot be read: {exc}. Quote it to keep it as text.".splitlines()[0]) from None
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
    except (yaml.YAMLError, ValueError):  # ValueError: a date such as 2024-13-45, an integer of over 4300 digits
        value = text  # the text as typed: the setting's type check says what it needed
    node = raw
    parts = _alias_path(key.strip().split("."))
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
# (so a bad rl.minibatch_size fails in a second, not after the stages before RL have trained).
# Each stage calls its section's check too, so the Python API and a stage run alone refuse the
# same values; `check_config` runs them all.


def check_ranges(section: Any, where: str) -> None:
    """Every numeric value of `section` (and of its nested sections) inside its class's RANGES, and
    no empty string where null means the default. Raises RlhfLabError naming the key
    (`where`.field), the range, the value and the default."""
    ranges = getattr(type(section), "RANGES", {})
    defaults = {f.name: f.default for f in dataclasses.fields(section)}
    for f in dataclasses.fields(section):
        value, key = getattr(section, f.name), _join(where, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, key)
            continue
        _check_blank(value, key, f.name in getattr(type(section), "SPACE_OK", ()), _admits_none(type(section), f.name),
                     defaults[f.name])
        bounds = ranges.get(f.name)
        if bounds is None:
            continue
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or bounds.holds(item):
                continue  # None (the default) and the words of a Literal | list field ("all") are not numbers
            shown = key if index is None else f"{key}[{index}]"
            default = defaults[f.name]
            null = ""
            if index is None and _admits_none(type(section), f.name):
                null = " (or null, the default)" if default is None else " (or null)"
            hint = f" The default is {default!r}." if isinstance(default, (int, float)) and not isinstance(default, bool) else ""
            if not _representable(item):
                rest = "" if bounds.low is None and bounds.high is None else f" {bounds.describe()}"
                need = (f"a whole number in 64 bits (magnitude at most {INT64_MAX})" if isinstance(item, int) else
                        f"a finite number in 32-bit floats (magnitude at most {FLOAT32_MAX:.8g})") + (rest and " and" + rest)
            else:
                need = bounds.describe()
            raise RlhfLabError(f"{shown} must be {need}{null}, got {item!r}.{hint}")


def _blank(text: str) -> bool:
    """True when `text` shows nothing: empty, or only spaces, controls, zero-width or other
    default-ignorable characters (a blank is never a meaningful path, name, model or column)."""
    return all(unicodedata.category(c).startswith(("Z", "C")) or _INVISIBLE.match(c) for c in text)


_INVISIBLE = regex.compile(r"[\p{Default_Ignorable_Code_Point}\u2800]")


def _check_blank(value: Any, key: str, space_ok: bool, nullable: bool, default: Any) -> None:
    """No blank string in a string setting, nor among the items or names of a list or mapping of
    strings. `space_ok` fields (a stop token, separator characters) may be whitespace, never ""."""
    def bad(text: Any) -> bool:
        return isinstance(text, str) and (text == "" if space_ok else _blank(text))

    what = lambda text: "empty" if text == "" else "blank"  # noqa: E731
    if bad(value):
        if nullable:
            raise RlhfLabError(f"{key} is {what(value)}; leave it out (or set it to null) for the default, or give a value.")
        shown = f" (the default is {default!r})" if isinstance(default, str) else ""
        raise RlhfLabError(f"{key} is {what(value)}; give a value{shown}, or leave it out for the default.")
    if isinstance(value, list):
        for i, item in enumerate(value):
            if bad(item):
                raise RlhfLabError(f"{key}[{i}] is blank; every item needs text, got {item!r}.")
    if isinstance(value, dict):
        for name, item in value.items():
            if bad(name):
                raise RlhfLabError(f"{key} has an entry whose name is {what(name)} ({name!r}); every entry needs a name.")
            if bad(item):
                raise RlhfLabError(f"{_join(key, str(name))} is {what(item)}; give a value, got {item!r}.")


def _admits_none(cls: type, name: str) -> bool:
    hint = typing.get_type_hints(cls)[name]
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _refuse(checks: list[tuple[bool, str]], section: str) -> None:
    for ok, message in checks:
        if not ok:
            raise RlhfLabError(f"{section}.{message}.")


def check_training_config(cfg: TrainingConfig, section: str) -> None:
    """Ranges and cross-field checks of a supervised section; `section` names its key in messages."""
    check_ranges(cfg, section)
    _refuse([(cfg.gradient_accumulation_steps <= cfg.batch_size,
              f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must not exceed batch_size "
              f"({cfg.batch_size}): each pass needs at least one example")], section)
    for name in ("data", "pairs"):  # reward.data, reward.pairs, dpo.pairs
        nested = getattr(cfg, name, None)
        if isinstance(nested, DataConfig):
            check_data(nested, f"{section}.{name}")
        elif isinstance(nested, PairsConfig):
            check_fractions(nested.fractions, f"{section}.{name}.fractions")


def check_fractions(fractions: list[float], key: str) -> None:
    """Three shares (train, validation, test) that sum to 1, train above 0."""
    from rlhflab.data.splits import _check_fractions

    try:
        _check_fractions(fractions)
    except RlhfLabError as exc:
        raise RlhfLabError(f"{key}: {exc}") from None


def check_data(data: DataConfig, where: str = "data") -> None:
    """Ranges of a data section, its split fractions and its prompt lengths."""
    check_ranges(data, where)
    check_fractions(data.fractions, f"{where}.fractions")
    if data.prompt_min_words > data.prompt_max_words:
        raise RlhfLabError(f"{where}.prompt_min_words ({data.prompt_min_words}) must not exceed "
                           f"{where}.prompt_max_words ({data.prompt_max_words}); a prompt's length is drawn between them.")


def check_pretrain(pre: PretrainConfig) -> None:
    check_training_config(pre, "pretrain")
    from rlhflab.models.tokenizers import minimum_vocab_size  # stdlib only at import

    smallest = minimum_vocab_size(pre.tokenizer)
    blank = [i for i, prompt in enumerate(pre.sample_prompts) if not prompt.strip()]
    _refuse([
        (pre.width % pre.heads == 0, f"width ({pre.width}) must be a multiple of heads ({pre.heads})"),
        (pre.vocab_size >= smallest, f"vocab_size must be at least {smallest} for a {pre.tokenizer} tokenizer, "
                                     f"got {pre.vocab_size}"),
        # An empty prompt gives the model no token to continue: sampling fails at the first evaluation.
        (not blank, f"sample_prompts[{blank[0] if blank else 0}] is blank; every sample prompt needs text "
                    f"to continue (e.g. 'To be, or'), or drop it"),
    ], "pretrain")


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
        stage = current_stage(stage, RUN_REFERENCE + "{}")
        if stage not in STAGES:
            raise RlhfLabError(f"{value!r} names no stage; use one of {', '.join('run:' + s for s in STAGES)}.")
        return str(stage_dir(Path(cfg.runs_dir) / cfg.name, stage)) + (f"@{beta}" if beta else "")

    return map_strings(cfg, resolve)


def check_evaluate(ev: EvaluateConfig) -> None:
    check_ranges(ev, "evaluate")
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
    _refuse([
        (dpo.pairs.margin_column is None, "pairs.margin_column is set, but DPO's loss has no margin (the reward "
         "stage's Bradley-Terry loss has one): unset it"),
        (dpo.rounds == 1 or dpo.pairs.source is None,
         f"rounds is {dpo.rounds}, but the pairs come from a file (dpo.pairs.source), which a later round cannot "
         "sample again: set rounds: 1, or unset pairs.source for on-policy pairs"),
        (dpo.loss != "distill" or dpo.pairs.source is None,
         "loss is distill, which learns each pair's reward gap, but the pairs come from a file (dpo.pairs.source), "
         "which has no rewards: unset pairs.source for on-policy pairs scored by reward_fn, or use loss: sigmoid"),
    ], "dpo")


def check_ilql(il: IlqlConfig) -> None:
    check_training_config(il, "ilql")
    _refuse([
        (il.samples is not None or il.text_column is None and il.reward_column is None,
         "text_column and reward_column name columns of ilql.samples, which is not set (the data section's reviews "
         "are used, each label as its reward): set ilql.samples, or drop the column settings"),
        (il.samples != ON_POLICY or il.text_column is None and il.reward_column is None,
         f"text_column and reward_column name columns of a file, and ilql.samples is {ON_POLICY} (the policy's own "
         "samples, scored by reward_fn): drop the column settings, or point ilql.samples at a file"),
        (il.text_column is None or il.text_column != il.reward_column,
         f"text_column and reward_column are both {il.text_column!r}; the text and its reward need two columns"),
    ], "ilql")


def check_reward(rw: RewardConfig) -> None:
    check_training_config(rw, "reward")
    if rw.objective == "pairs" and rw.pairs.source is None:
        raise RlhfLabError("reward.objective is pairs but reward.pairs.source is not set; point it at a file of "
                           "prompt/chosen/rejected rows.")


def check_runtime(rt: RuntimeConfig) -> None:
    """What `Runtime.create` refuses about this machine and launcher, without building one: for
    `rlhflab config`, since a config may be checked on one machine and run on another, the
    stages run it when they start (a GPU is looked for only when runtime.device is cuda)."""
    import os

    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # set by `accelerate launch --mixed_precision`
    if rt.mixed_precision == "fp16" and (rt.device == "cpu" or launched != "fp16"):
        raise RlhfLabError("runtime.mixed_precision=fp16 needs a GPU and loss scaling: launch with `accelerate launch "
                           "--mixed_precision fp16 ...`, or use bf16 (or no).")
    if rt.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RlhfLabError("runtime.device=cuda was requested but no CUDA GPU is visible; use device=auto or cpu.")


def check_config(cfg: Config, world_size: int | None = None) -> Config:
    """Every range check and derived quantity of every section; returns cfg unchanged."""
    import os

    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    check_ranges(cfg, "")
    if not cfg.stages:
        raise RlhfLabError("stages is empty: a pipeline needs at least one stage. Leave it out for the default "
                           "([sft, reward, rl, evaluate]) or name some, e.g. stages=[sft, reward].")
    for i, stage in enumerate(cfg.stages):  # the registry's names, read now (a test may register a stage)
        if stage not in STAGES:
            raise RlhfLabError(f"stages[{i}]: must be one of {', '.join(map(repr, STAGES))}; got {_show(stage)}.")
    check_data(cfg.data)
    check_pretrain(cfg.pretrain)
    check_training_config(cfg.sft, "sft")
    check_reward(cfg.reward)
    resolve_rl(cfg.rl, world_size, cfg.generation)
    check_dpo(cfg.dpo)
    check_ilql(cfg.ilql)
    check_evaluate(cfg.evaluate)
    check_overopt(cfg.overopt)
    check_frontier(cfg.frontier)
    if "overopt" in cfg.stages:  # found now, not after SFT, the reward model and RL have trained
        check_study_judges(cfg.evaluate)
        if cfg.overopt.run is None and "rl" in cfg.stages and not cfg.rl.snapshot_each_epoch:
            raise RlhfLabError("stages has overopt, which studies the RL run's per-epoch snapshots, and "
                               "rl.snapshot_each_epoch is false; set it to true.")
    from rlhflab.tracking import check_tracking

    check_tracking(cfg.tracking)
    return cfg


def check_frontier(fr: FrontierConfig) -> None:
    """The frontier's shape: at least one point, each a mapping that names its stages; distinct seeds.
    What a point's settings hold is checked when its config is loaded (rlhflab/sweep.py frontier_plan)."""
    if fr.points is None:
        return
    if not fr.points:
        raise RlhfLabError("frontier.points is empty: list the runs to compare (configs/frontier.yaml), or leave it "
                           "out (null) for a plain pipeline.")
    if not fr.seeds:
        raise RlhfLabError("frontier.seeds is empty: give at least one seed, e.g. frontier.seeds=[0,1,2].")
    if len(set(fr.seeds)) != len(fr.seeds):
        raise RlhfLabError(f"frontier.seeds lists a seed twice ({fr.seeds}); give each seed once.")
    for name, settings in fr.points.items():
        flat = flatten_settings(settings)
        if "stages" not in flat:
            raise RlhfLabError(f"frontier.points.{name} names no stages: give the stages this point runs on top of the "
                               f"run's own, e.g. {{stages: [rl], rl.kl_target: 2.0}}.")
        for key in ("name", "runs_dir", "seed", "frontier"):
            if key in flat or any(k.startswith(key + ".") for k in flat):
                raise RlhfLabError(f"frontier.points.{name} sets {key}, which the frontier sets for every point "
                                   f"(seeds: frontier.seeds); leave it out.")


def flatten_settings(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"rl": {"kl_target": 2}, "stages": [..]} or {"rl.kl_target": 2} -> {"rl.kl_target": 2, "stages": [..]}:
    a point's settings as the dotted keys of `key=value` overrides. Only config sections are opened;
    a setting whose value is a mapping (evaluate.models) stays one value."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and _is_section(dotted):
            flat.update(flatten_settings(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _is_section(dotted: str) -> bool:
    """Whether a dotted key (under its current names) names a section of Config (rl, dpo.on_policy)."""
    section: Any = Config
    for part in _alias_path(dotted.split(".")):
        fields = {f.name: f for f in dataclasses.fields(section)} if dataclasses.is_dataclass(section) else {}
        if part not in fields or fields[part].default_factory is dataclasses.MISSING:
            return False
        section = fields[part].default_factory()
    return dataclasses.is_dataclass(section)


def check_study_judges(ev: EvaluateConfig) -> None:
    """The over-optimisation study needs at least one gold judge."""
    if not ev.gold:
        raise RlhfLabError("The over-optimisation study compares the proxy reward with gold judges, and evaluate.gold is "
                           "empty. Add one, e.g. evaluate.gold.vader=vader (configs/overopt.yaml has two).")


def check_overopt(ov: OveroptConfig) -> None:
    check_ranges(ov, "overopt")
    if not ov.separators or any(not isinstance(s, str) or len(s) != 1 for s in ov.separators):
        raise RlhfLabError(f"overopt.separators must be single characters, got {ov.separators!r}.")
