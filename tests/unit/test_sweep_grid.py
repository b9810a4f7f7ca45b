"""`rlhflab sweep`'s grid: axes from overrides, the product's order, point names, what the points share."""

from __future__ import annotations

import pytest

from rlhflab.config import Config, load_config
from rlhflab.errors import RlhfLabError
from rlhflab.sweep import Axis, grid, make_plan, parse_overrides, shared_stages, split_values


def test_values_split_on_commas_outside_brackets_and_quotes():
    assert split_values("1e-5,1e-4") == ["1e-5", "1e-4"]
    assert split_values("[sft,reward,ppo]") == ["[sft,reward,ppo]"]
    assert split_values("[-2,-1],all,{a: 1, b: 2}") == ["[-2,-1]", "all", "{a: 1, b: 2}"]
    assert split_values("'a,b',\"c,d\",e") == ["'a,b'", '"c,d"', "e"]
    assert split_values("plain") == ["plain"]


def test_overrides_with_several_values_are_axes_and_the_rest_fixed():
    fixed, axes = parse_overrides(["ppo.learning_rate=1e-6,1e-5", "ppo.steps=3", "stages=[sft,reward,ppo]",
                                   "ppo.kl_coef=0.02,0.1,0.5"])
    assert fixed == ["ppo.steps=3", "stages=[sft,reward,ppo]"]
    assert axes == [Axis("ppo.learning_rate", ("1e-6", "1e-5")), Axis("ppo.kl_coef", ("0.02", "0.1", "0.5"))]


def test_the_grid_is_the_product_in_the_order_given_first_axis_slowest():
    _, axes = parse_overrides(["ppo.learning_rate=1e-6,1e-5", "ppo.kl_coef=0.02,0.1"])
    points = grid(axes)
    assert [p.name for p in points] == ["learning_rate-1e-6_kl_coef-0.02", "learning_rate-1e-6_kl_coef-0.1",
                                        "learning_rate-1e-5_kl_coef-0.02", "learning_rate-1e-5_kl_coef-0.1"]
    assert points[2].overrides == ["ppo.learning_rate=1e-5", "ppo.kl_coef=0.02"]


def test_names_keep_the_value_as_typed_and_replace_other_characters():
    _, axes = parse_overrides(["ppo.trainable=[-2,-1],lora", "seed=0,1"])
    assert [p.name for p in grid(axes)] == ["trainable---2--1-_seed-0", "trainable---2--1-_seed-1",
                                            "trainable-lora_seed-0", "trainable-lora_seed-1"]
    _, axes = parse_overrides(["sft.model=../models/a,../models/b"])
    assert [p.name for p in grid(axes)] == ["model---models-a", "model---models-b"]  # no `..`, no `/`


def test_axes_sharing_a_leaf_name_use_their_full_keys():
    _, axes = parse_overrides(["sft.learning_rate=1e-5,1e-4", "ppo.learning_rate=1e-6,1e-5", "seed=0,1"])
    names = [p.name for p in grid(axes)]
    assert names[0] == "sft.learning_rate-1e-5_ppo.learning_rate-1e-6_seed-0"
    assert len(names) == 8 and len(set(names)) == 8


@pytest.mark.parametrize("overrides, message", [
    ([], "at least two points"),
    (["ppo.steps=3"], "rlhflab pipeline"),
    (["ppo.learning_rate=1e-5,1e-4,1e-5"], "same value twice"),
    (["ppo.learning_rate=1e-5,0.00001"], "same value twice"),  # the same number, typed twice
    (["ppo.learning_rate=1e-5,,1e-4"], "empty value"),
    (["ppo.learning_rate=1e-5,"], "empty value"),
    (["name=a,b"], "cannot be swept"),
    (["runs_dir=a,b"], "cannot be swept"),
    (["ppo.kl_coef=0.1", "ppo.kl_coef=0.2,0.3"], "more than once"),
    (["ppo.kl_coef=0.2,0.3", "ppo.kl_coef=0.1"], "more than once"),
    (["novalue"], "section.key=value"),
    (["sft.model=a/b,a_b"], "share the folder name"),
    ([f"sft.model={'x' * 200},{'y' * 200}", "ppo.kl_coef=1,2"], "not a plain folder name"),
])
def test_bad_grids_are_one_line_errors(overrides, message):
    with pytest.raises(RlhfLabError, match=message) as caught:
        fixed, axes = parse_overrides(overrides)
        grid(axes)
    assert "\n" not in str(caught.value)


def test_every_point_is_validated_before_anything_runs(tmp_path):
    with pytest.raises(RlhfLabError, match=r"Sweep point minibatch_size-32 .*minibatch_size"):
        make_plan(None, ["ppo.minibatch_size=8,32", "ppo.batch_size=16", f"runs_dir={tmp_path}"])
    with pytest.raises(RlhfLabError, match="Unknown config key 'rl.learning_rat'"):
        make_plan(None, ["ppo.learning_rat=1,2", f"runs_dir={tmp_path}"])
    assert not any(tmp_path.iterdir())


def _configs(*overrides_per_point, fixed=()):
    base = load_config(None, [*fixed])
    return base, [load_config(None, [*fixed, *point]) for point in overrides_per_point]


def test_a_sweep_over_rl_settings_shares_sft_and_the_reward_model():
    base, points = _configs(["ppo.learning_rate=1e-5"], ["ppo.learning_rate=1e-4"])
    assert shared_stages(base, points) == (["sft", "reward"], ["sft", "reward"])


def test_a_changed_upstream_stage_makes_the_stages_that_read_it_per_point():
    base, points = _configs(["sft.learning_rate=1e-5"], ["sft.learning_rate=1e-4"])
    assert shared_stages(base, points)[0] == ["reward"]  # the reward model does not read SFT
    base, points = _configs(["seed=1"], ["seed=2"])
    assert shared_stages(base, points)[0] == []  # every stage reads the seed


def test_a_stage_that_names_another_by_run_reference_follows_it():
    """The reward model of the Shakespeare pipeline starts from run:pretrain (a path once resolved)."""
    fixed = ["stages=[pretrain,reward,rl]", "reward.model=run:pretrain"]
    base, points = _configs(["ppo.kl_coef=0.1"], ["ppo.kl_coef=0.2"], fixed=fixed)
    assert shared_stages(base, points)[0] == ["pretrain", "reward"]
    base, points = _configs(["pretrain.layers=2"], ["pretrain.layers=3"], fixed=fixed)
    assert shared_stages(base, points)[0] == []


def test_stages_outside_the_pipeline_that_points_read_are_linked_not_run():
    """stages=[rl, evaluate] after a separate `rlhflab sft` and `rlhflab reward`: the points read those."""
    base, points = _configs(["ppo.kl_coef=0.1"], ["ppo.kl_coef=0.2"], fixed=["stages=[rl,evaluate]"])
    assert shared_stages(base, points) == ([], ["sft", "reward"])


def test_point_configs_read_shared_stages_from_the_base_run(tmp_path):
    plan = make_plan(None, [f"runs_dir={tmp_path}", "name=base", "stages=[pretrain,reward,rl,evaluate]",
                            "reward.model=run:pretrain", "evaluate.models={pretrain: run:pretrain, rl: run:rl}",
                            "ppo.kl_coef=0.1,0.2"])
    assert plan.shared == ["pretrain", "reward"]
    cfg = plan.configs["kl_coef-0.1"]
    assert (cfg.runs_dir, cfg.name) == (str(tmp_path / "base" / "sweep"), "kl_coef-0.1")
    assert cfg.reward.model == str(tmp_path / "base" / "pretrain")  # the shared stage: the base run's path
    assert cfg.evaluate.models == {"pretrain": str(tmp_path / "base" / "pretrain"),
                                   "rl": str(tmp_path / "base" / "sweep" / "kl_coef-0.1" / "rl")}  # its own
    assert isinstance(cfg, Config) and cfg.ppo.kl_coef == 0.1
