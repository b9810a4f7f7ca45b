"""Reward functions: one interface through which PPO and evaluation ask any reward source for scores.

    reward = build_reward(RewardFnConfig(source="runs/default/reward"))
    scores = reward(prompts, responses)          # tensor (N,), no grad

Sources: a reward model trained by `rlhflab reward` (a run directory), any text classifier
from the hub or a local folder (the score of a label looked up by name), or a Python callable
`module:function` / `path/to/file.py:function` called as fn(prompts, responses) -> list[float].
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlhflab.config import RewardFnConfig
from rlhflab.data.records import join_prompt_response
from rlhflab.errors import RlhfLabError

ScoreFn = Callable[[list[str], list[str]], "Sequence[float] | torch.Tensor"]


@dataclass
class RewardFunction:
    """Scores (prompt, response) pairs; checks what the source returns and applies `flip`."""

    description: str
    score: ScoreFn
    flip: Callable[[torch.Tensor], torch.Tensor] | None = None
    output: str = "score"  # what the numbers are: score, probability, logit or logit_diff

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise RlhfLabError(f"Got {len(prompts)} prompts but {len(responses)} responses to score.")
        if not responses:
            return torch.zeros(0)
        raw = self.score(prompts, responses)
        try:
            values = torch.as_tensor(raw if isinstance(raw, torch.Tensor) else list(raw), dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError):
            raise RlhfLabError(f"The reward {self.description} returned {type(raw).__name__}, not a list of numbers.") from None
        if values.dim() != 1 or values.numel() != len(responses):
            raise RlhfLabError(
                f"The reward {self.description} returned {values.numel()} scores of shape {tuple(values.shape)} "
                f"for {len(responses)} responses; it must return one number per response."
            )
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise RlhfLabError(f"The reward {self.description} returned {bad} non-finite scores (nan or inf).")
        return self.flip(values) if self.flip else values


def build_reward(cfg: RewardFnConfig, *, default_source: str | None = None) -> RewardFunction:
    """The reward function a config describes (`default_source` when cfg.source is unset)."""
    from rlhflab.models.reward_model import reward_model_dir

    source = cfg.source or default_source
    if not source:
        raise RlhfLabError("No reward source: set reward_fn.source to a reward run directory, a classifier or module:function.")
    kind = cfg.kind
    if kind == "auto":
        if reward_model_dir(source) is not None:
            kind = "reward_model"
        elif _looks_like_callable(source):
            kind = "callable"
        else:
            kind = "classifier"
    if kind == "callable":
        fn = load_callable(source)
        output = "score"
        score = lambda prompts, responses: fn(prompts, responses)  # noqa: E731 - trlX-style signature
    else:
        score, output = _model_score(source, kind, cfg)
    flip = None
    if cfg.flip:
        flip = (lambda x: 1.0 - x) if output == "probability" else (lambda x: -x)
    return RewardFunction(f"{source} ({kind}, {output}{', flipped' if cfg.flip else ''})", score, flip, output)


def probability_reward(cfg: RewardFnConfig, *, default_source: str | None = None) -> RewardFunction | None:
    """The positive-class probability beside the configured reward, where one exists (labels models, classifiers)."""
    from dataclasses import replace

    try:
        reward = build_reward(replace(cfg, output="probability", flip=False), default_source=default_source)
    except RlhfLabError:
        return None  # a pairwise reward model has no probability
    return reward if reward.output == "probability" else None  # nor has a callable


def _looks_like_callable(source: str) -> bool:
    if source.startswith("hf:"):
        return False
    target, sep, name = source.rpartition(":")
    return bool(sep and name.isidentifier() and target and (target.endswith(".py") or all(p.isidentifier() for p in target.split("."))))


def load_callable(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function`."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise RlhfLabError(f"Reward file {path.resolve()} does not exist.")
        module_spec = importlib.util.spec_from_file_location(f"rlhflab_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report it in one line
            raise RlhfLabError(f"Importing {path} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise RlhfLabError(f"Cannot import module {target!r} for the reward {spec!r}: {exc}") from None
        except Exception as exc:  # the user's module failed while importing: one line, not a traceback
            raise RlhfLabError(f"Importing {target} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RlhfLabError(f"{target} has no function {name!r} (reward {spec!r}).")
    return fn


def label_index(id2label: dict, label: str) -> int:
    """The output index of a label, found by name (case-insensitive), never by position."""
    for index, name in id2label.items():
        if str(name).lower() == label.lower():
            return int(index)
    names = ", ".join(str(n) for n in id2label.values())
    raise RlhfLabError(f"The classifier has no label {label!r}; its labels are: {names}. Set reward_fn.label to one of them.")


def logits_to_reward(logits: torch.Tensor, index: int, output: str) -> torch.Tensor:
    """One number per row from classifier logits (N, L) for the label at `index`.

    probability: softmax (sigmoid for one output); logit: the raw logit; logit_diff: the
    label's logit minus logsumexp of the others, i.e. its log-odds.
    """
    logits = logits.float()
    if logits.shape[-1] == 1:
        if output == "probability":
            return torch.sigmoid(logits[:, 0])
        return logits[:, 0]
    if output == "probability":
        return torch.softmax(logits, dim=-1)[:, index]
    if output == "logit":
        return logits[:, index]
    others = torch.cat([logits[:, :index], logits[:, index + 1 :]], dim=-1)
    return logits[:, index] - torch.logsumexp(others, dim=-1)


_LOADED: dict[tuple, tuple] = {}


def _cached(loader: Callable, source: str):
    """Load a scoring model once per process: PPO asks for the training reward and the positive
    probability of the same model, and must not hold (or load) it twice."""
    from rlhflab.models.reward_model import reward_model_dir

    folder = reward_model_dir(source) or Path(source).expanduser()
    key = (loader.__name__, str(folder.resolve()) if folder.exists() else source)
    stamp = (folder / "config.json").stat().st_mtime if (folder / "config.json").exists() else None
    if key not in _LOADED or _LOADED[key][0] != stamp:
        _LOADED[key] = (stamp, loader(source))
    return _LOADED[key][1]


def _model_score(source: str, kind: str, cfg: RewardFnConfig) -> tuple[ScoreFn, str]:
    from rlhflab.runtime import make_accelerator

    device = make_accelerator(cfg.device, "no").device
    if kind == "reward_model":
        from rlhflab.models.reward_model import load_reward_model

        model, tokenizer, meta = _cached(load_reward_model, source)
        output = "score" if cfg.output == "auto" else cfg.output
        if output == "probability" and meta.objective == "pairs":
            raise RlhfLabError("A pairwise reward model has no probability; use reward_fn.output=score or logit.")
        if output == "logit_diff":
            raise RlhfLabError("reward_fn.output=logit_diff needs a classifier with two or more labels.")
        gain, bias = (meta.gain, meta.bias) if output == "score" else (1.0, 0.0)
        transform = lambda logits: gain * logits_to_reward(logits, 0, "probability" if output == "probability" else "logit") + bias  # noqa: E731
    else:
        from rlhflab.models.reward_model import load_classifier

        model, tokenizer = _cached(load_classifier, source.removeprefix("hf:"))
        output = "probability" if cfg.output == "auto" else cfg.output
        if output == "score":
            raise RlhfLabError("reward_fn.output=score applies to reward models trained by rlhflab; use probability, logit or logit_diff.")
        index = label_index(model.config.id2label, cfg.label)
        transform = lambda logits: logits_to_reward(logits, index, output)  # noqa: E731
    model.to(device).eval()
    max_length = min(cfg.max_length, getattr(tokenizer, "model_max_length", cfg.max_length) or cfg.max_length)

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        texts = responses if cfg.text == "response" else [join_prompt_response(p, r) for p, r in zip(prompts, responses)]
        out = []
        for start in range(0, len(texts), cfg.batch_size):
            batch = tokenizer(texts[start : start + cfg.batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
            out.append(transform(model(**batch).logits).cpu())
        return torch.cat(out)

    return score, output

