"""The online RL algorithms, one `Recipe` each: the only list of them.

A recipe names its advantage estimator (a pure function in rlhflab/ops), says what that
estimator reads, and owns the algorithm's defaults (responses per prompt, where beta * KL goes,
how per-token losses are averaged). The config (`rl.algorithm`'s choices and defaults), the
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
      tokens    per-token rewards (as for gae) and the response mask (B, R) -> (B, R), with
                the all-process reduction for statistics over the whole batch; no critic
    `loss` is how the per-token clipped losses (and a k3 KL term) become one number: `token_mean`
    over every real token of the minibatch, or `max_length`: their sum over rows x
    generation.max_new_tokens, a constant (ops.masked.masked_sum_over_max_length).
    """

    name: str
    estimator: str  # "module:function" of the pure advantage estimator
    reads: Literal["gae", "sequence", "tokens"]
    paper: str  # where the estimator comes from
    samples_per_prompt: int = 1  # responses per prompt unless rl.samples_per_prompt says otherwise
    min_samples_per_prompt: int = 1  # 2 where the baseline compares responses to the same prompt
    kl_penalty: Literal["reward", "loss"] = "reward"  # where beta * KL goes when rl.kl_penalty is auto
    critic: bool = False  # a value head trained with the clipped value loss
    loss: Literal["token_mean", "max_length"] = "token_mean"
    aliases: tuple[str, ...] = ()  # other names rl.algorithm accepts for it
    display: str = ""  # how reports and figures write it, as its paper does ("REINFORCE++"); default: the name upper-cased

    @property
    def title(self) -> str:
        return self.display or self.name.upper()


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("ppo", "rlhflab.ops.ppo:gae", "gae", "Ziegler et al. 2019", critic=True),
    Recipe("grpo", "rlhflab.ops.advantages:grpo_advantages", "sequence", "Shao et al. 2024",
           samples_per_prompt=4, min_samples_per_prompt=2, kl_penalty="loss"),
    Recipe("rloo", "rlhflab.ops.advantages:rloo_advantages", "sequence", "Ahmadian et al. 2024",
           samples_per_prompt=4, min_samples_per_prompt=2),
    Recipe("reinforce_pp", "rlhflab.ops.advantages:reinforce_pp_advantages", "tokens", "Hu 2025",
           aliases=("reinforce++",), display="REINFORCE++"),
    Recipe("dr_grpo", "rlhflab.ops.advantages:dr_grpo_advantages", "sequence", "Liu et al. 2025",
           samples_per_prompt=4, min_samples_per_prompt=2, kl_penalty="loss", loss="max_length", display="Dr. GRPO"),
)}

ALIASES: dict[str, str] = {alias: r.name for r in RECIPES.values() for alias in r.aliases}

# Every value rl.algorithm accepts, in the table's order (config.py builds its Literal from it).
ALGORITHM_NAMES: tuple[str, ...] = (*RECIPES, *ALIASES)


def get_recipe(algorithm: str) -> Recipe:
    """The recipe called `algorithm` (or one of its aliases). Raises KeyError for an unknown name
    (the config refuses one before it gets here)."""
    return RECIPES[ALIASES.get(algorithm, algorithm)]


def display_name(algorithm: str) -> str:
    """How a report writes a tuning algorithm: an RL recipe's title ("REINFORCE++", "Dr. GRPO"),
    any other name (dpo, ilql) upper-cased."""
    name = ALIASES.get(algorithm, algorithm)
    return RECIPES[name].title if name in RECIPES else algorithm.upper()
