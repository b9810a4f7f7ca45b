"""Every preset in configs/ loads and validates; the hub preset names hub models and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhflab.assets import resolve_model
from rlhflab.config import check_rl, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_preset_loads_and_its_ppo_settings_check(path):
    cfg = load_config(path)
    assert cfg.name
    check_rl(cfg.ppo)


def test_gpt2_imdb_is_the_seed_faithful_setting():
    cfg = load_config(Path(__file__).parents[2] / "configs" / "gpt2-imdb.yaml")
    assert (cfg.sft.model, cfg.sft.trainable, cfg.sft.epochs) == ("gpt2", [10, 11], 10)
    assert (cfg.reward.model, cfg.reward.trainable, cfg.reward.epochs) == ("bert-base-uncased", [11], 20)
    assert cfg.data.source == "hf:stanfordnlp/imdb"
    # Hub ids pass through asset resolution untouched (loading them needs hub access).
    assert resolve_model("gpt2") == "gpt2" and resolve_model("lvwerra/distilbert-imdb") == "lvwerra/distilbert-imdb"
    alternative = load_config(Path(__file__).parents[2] / "configs" / "gpt2-imdb.yaml",
                              ["reward_fn.source=lvwerra/distilbert-imdb", "reward_fn.label=POSITIVE"])
    assert alternative.reward_fn.source == "lvwerra/distilbert-imdb"
