"""Gold judges: scorers the RL run never optimised, to check what the proxy reward says.

Gao et al. (2022, "Scaling Laws for Reward Model Overoptimization") measure a policy with the
proxy reward it was trained on and with an independent gold reward: the proxy keeps rising
with KL while the gold one peaks and falls. Here a gold judge is any reward source
(`evaluate.gold: {name: source}`: a reward run directory, a classifier, `module:function`) or
the built-in `vader` (VADER's compound score, Hutto & Gilbert 2014, package vadersentiment).

Every judge (the proxy too) says "positive" at or above its threshold: 0.5 for probabilities,
VADER's documented 0.05 for its compound score, 0 for other scores. Its accuracy on held-out
labelled texts (`calibrate`) says how far to trust it; gains compare as the change in the share
of responses each judge calls positive, a unit every judge shares.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch

from rlhflab.config import RewardFnConfig
from rlhflab.errors import RlhfLabError
from rlhflab.rewards import RewardFunction, build_reward, probability_reward

VADER = "rlhflab.eval.gold:vader"
BUILTIN = {"vader": VADER}
VADER_POSITIVE = 0.05  # compound >= 0.05 is positive (the vaderSentiment README's threshold)
DISAGREE_RATIO = 0.5  # the gold gain is "below" the proxy gain when under this share of it


def vader(prompts: list[str], responses: list[str]) -> list[float]:
    """VADER compound score of each response, in [-1, 1] (the prompt is the same for every model)."""
    from rlhflab.data.weak_labels import lexicon_scorer

    score = lexicon_scorer()
    return [score(text) for text in responses]


@dataclass
class Judge:
    """A reward function and the score at or above which it calls a text positive."""

    name: str
    source: str
    reward: RewardFunction
    threshold: float

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.reward(prompts, responses)

    def positive_rate(self, scores: Sequence[float]) -> float:
        """Share of scores at or above the threshold; nan for no scores."""
        scores = list(scores)
        return sum(s >= self.threshold for s in scores) / len(scores) if scores else float("nan")


def build_judge(name: str, source: str, reward_fn: RewardFnConfig, *, device, default_source: str | None = None) -> Judge:
    """A judge reading what the proxy reads (reward_fn.text, max_length): its probability where
    the source has one (classifiers, reward models trained on labels), else its score."""
    spec = BUILTIN.get(str(source).strip().lower(), source) if source else None
    cfg = replace(reward_fn, source=spec, kind="auto", output="auto", flip=False)
    reward = probability_reward(cfg, default_source=default_source, device=device)
    if reward is not None:
        return Judge(name, source or default_source, reward, 0.5)
    reward = build_reward(cfg, default_source=default_source, device=device)
    return Judge(name, source or default_source, reward, VADER_POSITIVE if spec == VADER else 0.0)


def build_gold(gold: dict[str, str] | None, reward_fn: RewardFnConfig, *, device) -> dict[str, Judge]:
    """The judges of `evaluate.gold`, by name."""
    if not gold:
        return {}
    judges = {}
    for name, source in gold.items():
        try:
            judges[name] = build_judge(name, source, reward_fn, device=device)
        except RlhfLabError as exc:  # say which judge: there may be several
            raise RlhfLabError(f"The gold judge evaluate.gold.{name}={source}: {exc}") from exc
    return judges


def calibrate(judge: Judge, texts: Sequence[str], labels: Sequence[int], prompts: Sequence[str] | None = None) -> dict:
    """Accuracy of `judge` at its threshold on labelled texts (1 positive, 0 negative).

    Returns {"accuracy", "n", "threshold", "predicted_positive"}; RlhfLabError when there are no
    labelled texts, since an uncalibrated judge must not be read as a measurement."""
    if not texts or len(texts) != len(labels):
        raise RlhfLabError(f"Calibrating the judge {judge.name!r} needs labelled texts; got {len(texts)} texts and "
                           f"{len(labels)} labels. Set evaluate.gold_data to a labelled source.")
    scores = judge(list(prompts) if prompts is not None else [""] * len(texts), list(texts)).tolist()
    predicted = [int(s >= judge.threshold) for s in scores]
    return {"accuracy": sum(p == y for p, y in zip(predicted, labels)) / len(labels), "n": len(labels),
            "threshold": judge.threshold, "predicted_positive": sum(predicted) / len(predicted)}


def gain_check(proxy_before: float, proxy_after: float, gold_before: float, gold_after: float,
               ratio: float = DISAGREE_RATIO) -> dict:
    """Do the proxy and a gold judge agree on a model's gain? All four are positive rates in [0, 1].

    They disagree when the proxy gained and the gold judge gained less than `ratio` of that."""
    proxy_gain, gold_gain = proxy_after - proxy_before, gold_after - gold_before
    return {"proxy_gain": proxy_gain, "gold_gain": gold_gain, "disagree": proxy_gain > 0 and gold_gain < ratio * proxy_gain}
