"""Fresh samples for a blind rating: several models answer the same held-out prompts, and the
reward function scores every response. Rows have the schema of an evaluation's samples.jsonl,
so `create_rating_task` takes either."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rlhflab.errors import RlhfLabError


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    """`NAME=SOURCE` or `SOURCE` (named after its folder: runs/default/rl -> rl) per model."""
    models = []
    for spec in specs:
        name, sep, source = spec.partition("=")
        if not sep:
            source = spec
            path = Path(spec.rstrip("/"))
            name = path.parent.name if path.name == "model" else path.name
        if not name or not source:
            raise RlhfLabError(f"--models entry {spec!r} is empty on one side; write NAME=SOURCE or a model folder.")
        models.append((name, source))
    names = [n for n, _ in models]
    if len(models) < 2:
        raise RlhfLabError("A blind rating compares two or more models; pass them as --models SFT_RUN PPO_RUN.")
    if len(set(names)) != len(names):
        raise RlhfLabError(f"Two models would share a name ({', '.join(names)}); name them as --models sft=PATH ppo=PATH.")
    return models


def check_models(models: list[tuple[str, str]]) -> None:
    """A wrong path fails now, before data or any model loads."""
    from rlhflab.assets import resolve_model

    for _, source in models:
        resolve_model(source)


def held_out_prompts(cfg, n: int) -> list[dict[str, Any]]:
    """The first `n` of PPO's held-out evaluation prompts (the test split, prompt seed seed+1),
    with the sentiment of the review each comes from."""
    from rlhflab.data import make_prompts
    from rlhflab.stages.common import load_splits

    splits = load_splits(cfg)
    source = splits.test or splits.validation or splits.train
    texts = make_prompts(source, cfg.data.prompt_min_words, cfg.data.prompt_max_words, cfg.seed + 1)
    if n > len(texts):
        raise RlhfLabError(f"--prompts {n} is more than the {len(texts)} held-out prompts of data.source={cfg.data.source}. Use fewer.")
    sentiment = {1: "positive", 0: "negative", None: "neutral"}
    return [{"prompt_id": i, "prompt": texts[i], "sentiment": sentiment[source[i].label]} for i in range(n)]


def generate_samples(models: list[tuple[str, str]], prompts: list[dict[str, Any]], reward=None, *,
                     max_new_tokens: int = 24, temperature: float = 1.0, seed: int = 0,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One row per (prompt, model): prompt_id, prompt, sentiment, model, source, response, score."""
    from rlhflab.eval.generate import generate_responses

    check_models(models)
    texts = [p["prompt"] for p in prompts]
    rows = []
    for name, source in models:
        log(f"generating {len(texts)} response{'s' * (len(texts) != 1)} with {name} ({source})")
        responses = generate_responses(source, texts, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        scores = reward(texts, responses).tolist() if reward is not None else [None] * len(texts)
        for prompt, response, score in zip(prompts, responses, scores):
            rows.append({**prompt, "model": name, "source": source, "response": response, "score": score, "positive_probability": None})
    return rows
