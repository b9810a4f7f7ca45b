"""The recipe table is the one list of online RL algorithms: the config's choices and defaults,
the API's stage and the RL loop's parts all come from it."""

from __future__ import annotations

import typing

import pytest

from rlhflab.algorithms.online import TARGETS, parts
from rlhflab.algorithms.recipes import ALGORITHM_NAMES, ALIASES, RECIPES, get_recipe
from rlhflab.config import PpoConfig, load_config, resolve_rl
from rlhflab.errors import RlhfLabError


def test_the_config_offers_exactly_the_recipes_and_their_aliases():
    choices = typing.get_args(typing.get_type_hints(PpoConfig)["algorithm"])
    assert choices == ALGORITHM_NAMES == (*RECIPES, *ALIASES)
    with pytest.raises(RlhfLabError, match="rl.algorithm: must be one of 'ppo', 'grpo', 'rloo'"):
        load_config(None, ["ppo.algorithm=a2c"])


@pytest.mark.parametrize("name", list(RECIPES))
def test_resolve_fills_in_each_recipes_defaults_and_the_loop_resolves_its_parts(name):
    recipe = RECIPES[name]
    cfg = resolve_rl(PpoConfig(algorithm=name, batch_size=8, minibatch_size=4, kl_horizon=8))
    assert cfg.samples_per_prompt == recipe.samples_per_prompt and cfg.kl_penalty == recipe.kl_penalty
    resolved = parts(cfg)
    assert resolved.recipe is recipe and resolved.critic == recipe.critic
    assert recipe.reads in TARGETS and callable(resolved.targets.keywords["estimator"])
    assert resolved.kl_in_loss == (recipe.kl_penalty == "loss")


def test_settings_override_the_recipe_and_its_minimum_is_enforced():
    cfg = resolve_rl(PpoConfig(algorithm="grpo", samples_per_prompt=2, kl_penalty="reward"))
    assert (cfg.samples_per_prompt, cfg.kl_penalty) == (2, "reward")
    with pytest.raises(RlhfLabError, match="samples_per_prompt must be at least 2 for grpo"):
        resolve_rl(PpoConfig(algorithm="grpo", samples_per_prompt=1))


def test_an_alias_resolves_to_its_recipe():
    for alias, name in ALIASES.items():
        assert get_recipe(alias) is RECIPES[name]
        assert resolve_rl(load_config(None, [f"ppo.algorithm={alias}"]).ppo).algorithm == name


def test_dr_grpo_sums_its_losses_over_the_generation_limit_and_the_others_average_them():
    import torch

    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # real tokens 1, 2, 4
    for name, expected in (("dr_grpo", 7 / (2 * 8)), ("grpo", 7 / 3), ("reinforce_pp", 7 / 3)):
        cfg = resolve_rl(PpoConfig(algorithm=name, max_new_tokens=8, batch_size=8, minibatch_size=4, kl_horizon=8))
        assert float(parts(cfg).aggregate(per_token, mask)) == pytest.approx(expected), name
