"""The online RL algorithms, one `Recipe` each: the only list of them.

A recipe names its advantage estimator (a pure function in rlhflab/ops), says what that
estimator reads, and owns the algorithm's defaults (responses per prompt, where beta * KL goes). The config (`ppo.algorithm`'s choices and defaults), the
Python API and the RL loop (rlhflab/algorithms/online.py) all read this table, so adding an
algorithm is one estimator in ops/ and one entry here.

Torch-free on purpose: rlhflab.config imports this module and must stay light, so an estimator
is named as "module:function" and imported when a run starts (online.parts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Recipe:
    """One online RL algorithm as a choice of parts.

    `reads` is what the estimator is fed (online.TARGETS turns a rollout into it):
      gae       per-token rewards (-beta * KL on every token, the score on the last) and the
                value head's estimates -> GAE; needs the critic
      sequence  one reward per response (score - beta * summed KL) and prompt ids (N,) -> (N,),
                the same advantage for every token of a response
    """

    name: str
    estimator: str  # "module:function" of the pure advantage estimator
    reads: Literal["gae", "sequence"]
    paper: str  # where the estimator comes from
    samples_per_prompt: int = 1  # responses per prompt unless ppo.samples_per_prompt says otherwise
    min_samples_per_prompt: int = 1  # 2 where the baseline compares responses to the same prompt
    kl_penalty: Literal["reward", "loss"] = "reward"  # where beta * KL goes when ppo.kl_penalty is auto
    critic: bool = False  # a value head trained with the clipped value loss
    aliases: tuple[str, ...] = ()  # other names ppo.algorithm accepts for it


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("ppo", "rlhflab.ops.ppo:gae", "gae", "Ziegler et al. 2019", critic=True),
    Recipe("grpo", "rlhflab.ops.advantages:grpo_advantages", "sequence", "Shao et al. 2024",
           samples_per_prompt=4, min_samples_per_prompt=2, kl_penalty="loss"),
    Recipe("rloo", "rlhflab.ops.advantages:rloo_advantages", "sequence", "Ahmadian et al. 2024",
           samples_per_prompt=4, min_samples_per_prompt=2),
)}

ALIASES: dict[str, str] = {alias: r.name for r in RECIPES.values() for alias in r.aliases}

# Every value ppo.algorithm accepts, in the table's order (config.py builds its Literal from it).
ALGORITHM_NAMES: tuple[str, ...] = (*RECIPES, *ALIASES)


def get_recipe(algorithm: str) -> Recipe:
    """The recipe called `algorithm` (or one of its aliases). Raises KeyError for an unknown name
    (the config refuses one before it gets here)."""
    return RECIPES[ALIASES.get(algorithm, algorithm)]
