"""Reward functions: one interface through which PPO and evaluation ask any reward source for scores.

    reward = build_reward(RewardFnConfig(source="runs/default/reward"))
    scores = reward(prompts, responses)          # tensor (N,), no grad

Sources: a reward model trained by `rlhflab reward` (a run directory), any text classifier
from the hub or a local folder (the score of a label looked up by name), or a Python callable
`module:function` / `path/to/file.py:function` called as fn(prompts, responses) -> list[float].
Models read prompt + response cut from the prompt's front, so the response is always judged
whole (`rlhflab.models.encoding.prompt_response_ids`), to at most reward_fn.max_length tokens, the
tokenizer's limit, and, for a reward model trained by rlhflab, the length it was trained on
(reward.max_length, recorded in rlhflab_reward.json): a model scored on longer texts than it saw
ranks them by patterns it never learned. `RewardFunction.reads` counts the texts whose prompt took
most of that budget. Whatever a callable raises or returns amiss is an RlhfLabError naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlhflab.config import RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.models.encoding import fit_prompt_response, pad_rows

ScoreFn = Callable[[list[str], list[str]], "Sequence[float] | torch.Tensor"]


@dataclass
class TextsRead:
    """How a scoring model spent its token budget on the texts it scored since it was built.

    A prompt that fills most of the budget leaves the response a few tokens at the end: the score
    then says more about the prompt than about the response."""

    max_length: int  # tokens the model reads per text
    limited_by: str  # what set max_length (see scoring_length)
    texts: int = 0
    prompt_most: int = 0  # texts whose prompt took more than half of max_length
    prompts_cut: int = 0  # texts whose prompt lost its front
    responses_cut: int = 0  # texts whose response alone exceeded max_length (read from its beginning)
    most_prompt_tokens: int = 0  # the most prompt tokens in one text

    def add(self, prompt_tokens: list[int], prompts_cut: int, responses_cut: int) -> None:
        self.texts += len(prompt_tokens)
        self.prompt_most += sum(2 * n > self.max_length for n in prompt_tokens)
        self.prompts_cut += prompts_cut
        self.responses_cut += responses_cut
        self.most_prompt_tokens = max([self.most_prompt_tokens, *prompt_tokens])

    def summary(self, total: Callable[[int], int] = int) -> dict:
        """The counts for a stage's summary.json; `total` sums a count over processes (Runtime.sum)."""
        counts = {name: int(total(getattr(self, name))) for name in ("texts", "prompt_most", "prompts_cut", "responses_cut")}
        return {"max_length": self.max_length, "limited_by": self.limited_by, **counts}

    def note(self) -> str | None:
        """One sentence when prompts crowded out the responses, else None."""
        return describe_reads(self.summary(), self.most_prompt_tokens)


def describe_reads(reads: dict, most_prompt_tokens: int | None = None) -> str | None:
    """One sentence from TextsRead.summary() (as a summary.json holds it) when prompts crowded out
    the responses, else None."""
    texts, length = reads.get("texts", 0), reads.get("max_length")
    parts = []
    if reads.get("prompt_most"):
        most = f"up to {most_prompt_tokens} prompt tokens" if most_prompt_tokens else ""
        cut = reads.get("prompts_cut", 0)
        cut = f"{cut} prompt{'s' * (cut != 1)} cut from the front" if cut else ""
        detail = "; ".join(x for x in (most, cut) if x)
        parts.append(f"in {reads['prompt_most']} of {texts} texts the prompt took more than half of the {length} "
                     f"tokens the reward reads ({reads.get('limited_by')}{'; ' + detail if detail else ''})")
    if reads.get("responses_cut"):
        parts.append(f"{reads['responses_cut']} of {texts} responses alone exceeded those {length} tokens and were "
                     f"scored from their beginning, without the prompt")
    return "; ".join(parts) or None


@dataclass
class RewardFunction:
    """Scores (prompt, response) pairs; checks what the source returns and applies `flip`."""

    description: str
    score: ScoreFn
    flip: Callable[[torch.Tensor], torch.Tensor] | None = None
    output: str = "score"  # what the numbers are: score, probability, logit or logit_diff
    reads: TextsRead | None = None  # models only: how their token budget was spent

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        prompts, responses = list(prompts), list(responses)
        if len(prompts) != len(responses):
            raise RlhfLabError(f"Got {len(prompts)} prompts but {len(responses)} responses to score.")
        if not responses:
            return torch.zeros(0)
        values = _score_tensor(self.score(prompts, responses), self.description)
        if values.dim() != 1 or values.numel() != len(responses):
            raise RlhfLabError(
                f"The reward {self.description} returned {values.numel()} score{'s' * (values.numel() != 1)} of shape "
                f"{tuple(values.shape)} for {len(responses)} response{'s' * (len(responses) != 1)}; it must return one "
                f"number per response."
            )
        if not torch.isfinite(values).all():
            bad = int((~torch.isfinite(values)).sum())
            raise RlhfLabError(f"The reward {self.description} returned {bad} non-finite score{'s' * (bad != 1)} (nan or inf).")
        return self.flip(values) if self.flip else values


def _is_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not value.is_complex()
    return isinstance(value, numbers.Real)  # bools too (1/0), and numpy scalars


def _a(value) -> str:
    """'a list', 'an int': the type of `value` with its article, for messages."""
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _score_tensor(raw, description: str) -> torch.Tensor:
    """What a score function returned as a float tensor; RlhfLabError when it is not numbers."""
    if isinstance(raw, torch.Tensor) and not raw.is_complex():
        return raw.detach().to(torch.float32).cpu()
    fix = "It must return one number per response (a list, array or tensor)."
    # A dict iterates over its keys and a string over its characters: never scores.
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
        raise RlhfLabError(f"The reward {description} returned {_a(raw)}, not a list of numbers. {fix}")
    try:
        items = list(raw)
    except Exception as exc:  # a generator that fails while it yields
        raise RlhfLabError(f"Reading the scores the reward {description} returned raised {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    bad = next((i for i, v in enumerate(items) if not _is_number(v)), None)
    if bad is not None:
        raise RlhfLabError(f"The reward {description} returned {_a(raw)} whose item {bad} is "
                           f"{items[bad]!r}, so not a list of numbers. {fix}")
    return torch.tensor([float(v) for v in items], dtype=torch.float32)


def build_reward(cfg: RewardFnConfig, *, default_source: str | None = None, device: str | torch.device = "auto") -> RewardFunction:
    """The reward function a config describes (`default_source` when cfg.source is unset); a
    scoring model runs on `device` (a stage passes its runtime's)."""
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
    reads = None
    if kind == "callable":
        score, output = _callable_score(source), "score"
    else:
        score, output, reads = _model_score(source, kind, cfg, device)
    flip = None
    if cfg.flip:
        flip = (lambda x: 1.0 - x) if output == "probability" else (lambda x: -x)
    length = f", reads {reads.max_length} tokens" if reads else ""
    return RewardFunction(f"{source} ({kind}, {output}{', flipped' if cfg.flip else ''}{length})", score, flip, output, reads)


def probability_reward(cfg: RewardFnConfig, *, default_source: str | None = None,
                       device: str | torch.device = "auto") -> RewardFunction | None:
    """The positive-class probability beside the configured reward, where one exists (labels models, classifiers)."""
    from dataclasses import replace

    try:
        reward = build_reward(replace(cfg, output="probability", flip=False), default_source=default_source, device=device)
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


def _callable_score(spec: str) -> ScoreFn:
    """fn(prompts, responses) (trlX-style) from `spec`; whatever it raises becomes one RlhfLabError
    line naming the function, chained to the original so RLHFLAB_DEBUG=1 can show its traceback."""
    fn = load_callable(spec)

    def score(prompts: list[str], responses: list[str]):
        try:
            return fn(prompts, responses)
        except Exception as exc:  # the user's code: say whose it is and what it raised
            detail = str(exc).strip().splitlines()
            raise RlhfLabError(
                f"the reward function {spec} raised {type(exc).__name__}"
                f"{': ' + detail[0] if detail else ''}. Fix the function (RLHFLAB_DEBUG=1 shows the traceback)."
            ) from exc

    return score


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
    from rlhflab.models.reward_model import META_FILE, reward_model_dir

    folder = reward_model_dir(source) or Path(source).expanduser()
    key = (loader.__name__, str(folder.resolve()) if folder.exists() else source)
    # A changed file reloads: the weights' config, the reward meta, the run's config (its length).
    files = (folder / "config.json", folder / META_FILE, folder.parent / "config.yaml")
    stamp = tuple(path.stat().st_mtime if path.is_file() else None for path in files)
    if key not in _LOADED or _LOADED[key][0] != stamp:
        _LOADED[key] = (stamp, loader(source))
    return _LOADED[key][1]


def scoring_length(cfg: RewardFnConfig, tokenizer, trained: int | None) -> tuple[int, str]:
    """(tokens a model reads per text, what set that number): the least of reward_fn.max_length,
    the tokenizer's limit and the length a reward model was trained on."""
    limits = [(cfg.max_length, "reward_fn.max_length")]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit >= 2:
        limits.append((tokenizer_limit, "the tokenizer's limit"))
    if trained:
        limits.append((trained, "the length it was trained on, reward.max_length"))
    # On a tie the training length is the reason worth naming (the last listed wins).
    return min(limits, key=lambda item: (item[0], -limits.index(item)))


def _model_score(source: str, kind: str, cfg: RewardFnConfig,
                 device: str | torch.device) -> tuple[ScoreFn, str, TextsRead]:
    from rlhflab.engine.runtime import resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(device)
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
    max_length, limited_by = scoring_length(cfg, tokenizer, meta.max_length if kind == "reward_model" else None)
    reads = TextsRead(max_length, limited_by)

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]) -> torch.Tensor:
        if cfg.text == "response":
            prompts = [""] * len(responses)
        out = []
        for start in range(0, len(responses), cfg.batch_size):
            # Too long a text loses the front of its prompt, never the response being judged; a
            # response longer than max_length alone keeps its beginning (as plain texts do).
            fitted = fit_prompt_response(prompts[start : start + cfg.batch_size], responses[start : start + cfg.batch_size],
                                         tokenizer, max_length, long_response="truncate")
            reads.add(fitted.prompt_tokens, fitted.prompts_cut, fitted.responses_cut)
            batch = pad_rows(fitted.rows, tokenizer).to(device)
            out.append(transform(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits).cpu())
        return torch.cat(out)

    return score, output, reads

