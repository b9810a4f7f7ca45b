"""Renamed config sections: `ppo:` is read as `rl:`, and ppo.max_new_tokens / temperature / stop_token
as `generation.*`, in YAML, overrides and the Python API, with a one-line note; finished runs made
under the old names stay up to date (their stage keys do not change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhflab import config as config_module
from rlhflab import pipeline
from rlhflab.config import (Config, GenerationConfig, PpoConfig, RlConfig, dump_yaml, load_config, parse_yaml,
                            resolve_rl, to_dict, upgrade_names)
from rlhflab.errors import RlhfLabError
from rlhflab.stages.registry import STAGES, stage_key

QUICK = Path(__file__).resolve().parents[2] / "configs" / "quick.yaml"

# Stage keys of configs/quick.yaml with these overrides, computed by the code before the rename
# (commit 67be972, where every one of them was a ppo setting). A run finished then stores these
# keys in its stage.json: if one changes, every such run would be retrained. (A changed default of
# a section a stage reads changes its key too, rightly: then recompute them.) The RL stage was called
# ppo then; its name is in no key. ILQL regressed Q on TD targets then (ilql.q_target=td, no longer
# the default): set so, a run of then is what it asks for.
OLD_OVERRIDES = ["ppo.max_new_tokens=8", "ppo.temperature=0.7", "ppo.stop_token=.", "ppo.steps=3",
                 "evaluate.max_new_tokens=null", "ilql.q_target=td"]
NEW_OVERRIDES = ["generation.max_new_tokens=8", "generation.temperature=0.7", "generation.stop_token=.", "rl.steps=3",
                 "evaluate.max_new_tokens=null", "ilql.q_target=td"]
OLD_KEYS = {"pretrain": "a9866b432430ec48", "sft": "3d45da16e8f71368", "reward": "9bb0bb50e744f2f7",
            "rl": "98d987b1ddb2a58d", "dpo": "1e7d67bdda9a9627", "ilql": "f7ebd248921d329d",
            "evaluate": "3aa0eaff689398cf", "overopt": "20a8cfa966e77dcc"}


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test sees the notes its own loading prints (they are printed once per process)."""
    monkeypatch.setattr(config_module, "_NOTED", set())


def notes(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]


def test_a_ppo_section_in_yaml_is_read_as_rl_and_generation_with_one_note_each(tmp_path, capsys):
    path = tmp_path / "old.yaml"
    path.write_text("ppo:\n  algorithm: grpo\n  steps: 3\n  max_new_tokens: 7\n  temperature: 0.5\n  stop_token: '.'\n")
    cfg = load_config(path)
    assert (cfg.rl.algorithm, cfg.rl.steps) == ("grpo", 3)
    assert cfg.generation == GenerationConfig(max_new_tokens=7, temperature=0.5, stop_token=".")
    assert notes(capsys) == [
        "note: 'ppo' is now 'rl'; the old name still works.",
        "note: 'ppo.max_new_tokens' is now 'generation.max_new_tokens'; the old name still works.",
        "note: 'ppo.temperature' is now 'generation.temperature'; the old name still works.",
        "note: 'ppo.stop_token' is now 'generation.stop_token'; the old name still works.",
    ]
    assert "ppo" not in parse_yaml(dump_yaml(cfg))  # the resolved config speaks the new names
    new = load_config(None, ["rl.algorithm=grpo", "rl.steps=3", "generation.max_new_tokens=7",
                             "generation.temperature=0.5", "generation.stop_token=."])
    assert to_dict(new) == to_dict(cfg) and notes(capsys) == []


def test_old_names_work_as_overrides_and_win_over_the_file(tmp_path, capsys):
    path = tmp_path / "new.yaml"
    path.write_text("rl:\n  steps: 3\ngeneration:\n  max_new_tokens: 7\n")
    cfg = load_config(path, ["ppo.steps=5", "ppo.max_new_tokens=9", "ppo.lora.r=4", "rl.temperature=0.8"])
    assert (cfg.rl.steps, cfg.rl.lora.r, cfg.generation.max_new_tokens, cfg.generation.temperature) == (5, 4, 9, 0.8)
    assert len(notes(capsys)) == 3  # ppo (once for ppo.steps and ppo.lora.r), ppo.max_new_tokens, rl.temperature
    with pytest.raises(RlhfLabError, match=r"^Unknown config key 'rl.bogus'"):
        load_config(None, ["ppo.bogus=1"])


def test_one_setting_under_both_names_is_refused_in_one_line(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("ppo:\n  max_new_tokens: 8\ngeneration:\n  max_new_tokens: 16\n")
    with pytest.raises(RlhfLabError) as caught:
        load_config(path)
    assert str(caught.value) == ("ppo.max_new_tokens and generation.max_new_tokens are the same setting; give it once, "
                                 "as generation.max_new_tokens.")
    path.write_text("ppo:\n  steps: 8\nrl:\n  steps: 8\n")  # the same value twice is one setting
    assert load_config(path).rl.steps == 8


def test_the_python_api_takes_ppo_and_ppo_config(capsys):
    cfg = Config(ppo=PpoConfig(steps=2, max_new_tokens=5, temperature=0.5))
    assert type(cfg.rl) is RlConfig and cfg.rl.steps == 2
    assert (cfg.generation.max_new_tokens, cfg.generation.temperature, cfg.generation.stop_token) == (5, 0.5, None)
    assert cfg.ppo is cfg.rl
    cfg.ppo = PpoConfig(steps=4, stop_token="\n")
    assert cfg.rl.steps == 4 and cfg.generation.stop_token == "\n" and cfg.generation.max_new_tokens == 5
    assert any("'ppo' is now 'rl'" in line for line in notes(capsys))
    with pytest.raises(RlhfLabError, match="both rl and ppo"):
        Config(rl=RlConfig(), ppo=RlConfig())


def test_resolve_rl_carries_the_generation_settings_the_rollouts_use():
    cfg = load_config(None, ["generation.max_new_tokens=7", "generation.temperature=0.5", "rl.algorithm=grpo"])
    rl = resolve_rl(cfg.rl, 1, cfg.generation)
    assert (rl.algorithm, rl.samples_per_prompt, rl.max_new_tokens, rl.temperature) == ("grpo", 4, 7, 0.5)
    assert resolve_rl(PpoConfig(max_new_tokens=3)).max_new_tokens == 3  # a PpoConfig's own setting wins
    with pytest.raises(RlhfLabError, match=r"generation.max_new_tokens must be at least 1, got 0"):
        load_config(None, ["ppo.max_new_tokens=0"])


def test_stage_keys_of_a_run_made_under_the_old_names_do_not_change(tmp_path):
    old = load_config(QUICK, [*OLD_OVERRIDES, f"runs_dir={tmp_path}"])
    new = load_config(QUICK, [*NEW_OVERRIDES, f"runs_dir={tmp_path}"])
    for name in STAGES:
        if name in OLD_KEYS:
            assert stage_key(old, name)["key"] == OLD_KEYS[name], name
            assert stage_key(new, name)["key"] == OLD_KEYS[name], name
    # What sampling reads still counts: a new max_new_tokens makes every stage that samples stale.
    longer = load_config(QUICK, [*NEW_OVERRIDES, "generation.max_new_tokens=9", f"runs_dir={tmp_path}"])
    assert {n for n in OLD_KEYS if stage_key(longer, n)["key"] != OLD_KEYS[n]} == {"rl", "dpo", "ilql", "evaluate",
                                                                                  "overopt"}


def test_a_run_finished_and_a_run_paused_under_the_old_names_are_up_to_date(tmp_path):
    cfg = load_config(QUICK, [*NEW_OVERRIDES, f"runs_dir={tmp_path}"])
    done = tmp_path / cfg.name / "dpo"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    (done / "stage.json").write_text(json.dumps({"key": OLD_KEYS["dpo"], "run_id": "old"}))
    assert pipeline.stage_state(cfg, "dpo") == "done"
    # A paused RL run whose config.yaml was written under the old names resumes.
    old_yaml = to_dict(cfg)
    old_yaml["ppo"] = {**old_yaml.pop("rl"), **old_yaml.pop("generation")}
    old_yaml["stages"] = ["sft", "reward", "ppo", "evaluate"]  # and the RL stage under its old name
    paused = tmp_path / cfg.name / "ppo.partial"
    (paused / "checkpoints" / "latest").mkdir(parents=True)
    (paused / "checkpoints" / "latest" / "state.json").write_text("{}")
    (paused / "stage.json").write_text(json.dumps({"key": OLD_KEYS["rl"], "run_id": "old"}))
    (paused / "config.yaml").write_text(dump_yaml(old_yaml))
    assert upgrade_names(old_yaml) == to_dict(cfg)
    assert pipeline.stage_state(cfg, "rl") == "partial"  # in its old folder, ppo.partial


def test_dpo_rounds_reference_and_pairing_count_in_the_key_only_when_set(tmp_path):
    base = [*NEW_OVERRIDES, f"runs_dir={tmp_path}"]
    at_defaults = ["dpo.rounds=1", "dpo.reference=start", "dpo.on_policy.pairing=best_worst"]
    assert stage_key(load_config(QUICK, [*base, *at_defaults]), "dpo")["key"] == OLD_KEYS["dpo"]
    keys = {stage_key(load_config(QUICK, [*base, *extra]), "dpo")["key"]
            for extra in (["dpo.rounds=2"], ["dpo.rounds=2", "dpo.reference=previous_round"], ["dpo.reference=previous_round"],
                          ["dpo.on_policy.pairing=all"])}
    assert len(keys) == 4 and OLD_KEYS["dpo"] not in keys


def test_ilql_top_k_counts_in_the_key_only_when_set(tmp_path):
    base = [*NEW_OVERRIDES, f"runs_dir={tmp_path}"]
    assert stage_key(load_config(QUICK, [*base, "ilql.top_k=0"]), "ilql")["key"] == OLD_KEYS["ilql"]
    assert stage_key(load_config(QUICK, [*base, "ilql.top_k=20"]), "ilql")["key"] != OLD_KEYS["ilql"]
