"""load_config / from_dict: defaults, YAML presets, `key=value` overrides, strict keys and types."""

from pathlib import Path

import pytest

from rlhflab.config import Config, DataConfig, LoraConfig, SftConfig, dump_yaml, from_dict, load_config
from rlhflab.errors import RlhfLabError

REPO = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults and files ------------------------------------------------------------------


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config()
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.sft, SftConfig) and isinstance(cfg.sft.lora, LoraConfig)
    assert cfg.sft.epochs == 2
    assert cfg.sft.trainable == [-2, -1]
    assert cfg.data.fractions == [0.6, 0.2, 0.2]
    assert cfg.runtime.mixed_precision == "auto" and cfg.runtime.device == "auto"


def test_defaults_are_not_shared_between_instances():
    a, b = load_config(), load_config()
    a.sft.trainable.append(5)
    a.data.fractions[0] = 0.9
    assert b.sft.trainable == [-2, -1]
    assert b.data.fractions == [0.6, 0.2, 0.2]


def test_empty_yaml_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path / "empty.yaml", "")) == Config()
    assert load_config(write(tmp_path / "comments.yaml", "# nothing here\n")) == Config()


def test_yaml_file_values_and_untouched_defaults(tmp_path):
    path = write(
        tmp_path / "c.yaml",
        "name: mine\nseed: 7\ndata:\n  source: reviews.csv\n  per_class: null\nsft:\n  epochs: 5\n  lora:\n    r: 4\n",
    )
    cfg = load_config(path)
    assert cfg.name == "mine" and cfg.seed == 7
    assert cfg.data.source == "reviews.csv"
    assert cfg.data.per_class is None
    assert cfg.data.split == "train"  # untouched default
    assert cfg.sft.epochs == 5
    assert cfg.sft.lora.r == 4 and cfg.sft.lora.alpha == 32
    assert cfg.sft.batch_size == SftConfig().batch_size


def test_file_plus_overrides_later_wins(tmp_path):
    path = write(tmp_path / "c.yaml", "sft:\n  epochs: 5\n  batch_size: 4\n")
    cfg = load_config(
        path,
        [
            "sft.epochs=3",
            "sft.learning_rate=1e-4",
            "sft.trainable=[-3,-1]",
            "sft.max_steps=null",
            "data.fractions=[0.8,0.1,0.1]",
        ],
    )
    assert cfg.sft.epochs == 3 and type(cfg.sft.epochs) is int
    assert cfg.sft.batch_size == 4  # from the file, not overridden
    assert cfg.sft.learning_rate == 1e-4 and type(cfg.sft.learning_rate) is float
    assert cfg.sft.trainable == [-3, -1]
    assert cfg.sft.max_steps is None
    assert cfg.data.fractions == [0.8, 0.1, 0.1]
    assert all(type(x) is float for x in cfg.data.fractions)


def test_repeated_override_last_one_wins():
    assert load_config(overrides=["sft.epochs=3", "sft.epochs=4"]).sft.epochs == 4


@pytest.mark.parametrize(
    "override, attr, expected",
    [
        ("sft.learning_rate=1e-4", "learning_rate", 1e-4),
        ("sft.learning_rate=3.0e-4", "learning_rate", 3e-4),
        ("sft.learning_rate=0.5", "learning_rate", 0.5),
        ("sft.learning_rate=2", "learning_rate", 2.0),  # an int is accepted for a float field
        ("sft.trainable=all", "trainable", "all"),
        ("sft.trainable=lora", "trainable", "lora"),
        ("sft.trainable=[-3,-1]", "trainable", [-3, -1]),
        ("sft.trainable=[0]", "trainable", [0]),
        ("sft.max_steps=null", "max_steps", None),
        ("sft.max_steps=10", "max_steps", 10),
        ("sft.cache_frozen=false", "cache_frozen", False),
        ("sft.model=lvwerra/gpt2-imdb", "model", "lvwerra/gpt2-imdb"),
    ],
)
def test_override_values_are_parsed(override, attr, expected):
    value = getattr(load_config(overrides=[override]).sft, attr)
    assert value == expected
    assert type(value) is type(expected)


def test_int_accepted_for_float_field_is_converted_to_float(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "sft:\n  grad_clip: 2\n  warmup_ratio: 0\n"))
    assert cfg.sft.grad_clip == 2.0 and type(cfg.sft.grad_clip) is float
    assert cfg.sft.warmup_ratio == 0.0 and type(cfg.sft.warmup_ratio) is float


def test_int_list_in_float_list_becomes_floats():
    cfg = load_config(overrides=["data.fractions=[1,0,0]"])
    assert cfg.data.fractions == [1.0, 0.0, 0.0]
    assert all(type(x) is float for x in cfg.data.fractions)


def test_nested_section_override():
    cfg = load_config(overrides=["sft.lora.r=8", "sft.lora.target_modules=[q_proj,v_proj]"])
    assert cfg.sft.lora.r == 8
    assert cfg.sft.lora.target_modules == ["q_proj", "v_proj"]


def test_override_value_containing_equals_sign():
    cfg = load_config(overrides=["data.source=a=b.csv"])
    assert cfg.data.source == "a=b.csv"


def test_mixed_precision_no_can_be_written_bare():
    assert load_config(overrides=["runtime.mixed_precision=no"]).runtime.mixed_precision == "no"


def test_settings_that_moved_to_runtime_say_where():
    for key in ("sft.mixed_precision=no", "ppo.device=cpu", "evaluate.mixed_precision=bf16"):
        with pytest.raises(RlhfLabError, match="moved to 'runtime"):
            load_config(overrides=[key])


def test_exponent_float_in_yaml_file(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "sft:\n  learning_rate: 1e-4\n"))
    assert cfg.sft.learning_rate == 1e-4


def test_bare_words_for_string_fields_stay_strings():
    cfg = load_config(overrides=["name=2024", "data.text_column=on"])
    assert cfg.name == "2024" and cfg.data.text_column == "on"


def test_quoted_no_in_yaml_file_is_accepted(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "runtime:\n  mixed_precision: 'no'\n"))
    assert cfg.runtime.mixed_precision == "no"


# --- unknown keys --------------------------------------------------------------------------


def test_unknown_nested_key_suggests_nearest():
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=["sft.epochz=3"])
    message = str(info.value)
    assert "'sft.epochz'" in message
    assert "Did you mean 'sft.epochs'?" in message


def test_unknown_top_level_key_suggests_nearest():
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=["sed=3"])
    assert "Did you mean 'seed'?" in str(info.value)


def test_unknown_top_level_section_in_file(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        load_config(write(tmp_path / "c.yaml", "sfft:\n  epochs: 3\n"))
    assert "'sfft'" in str(info.value)
    assert "Did you mean 'sft'?" in str(info.value)


def test_unknown_key_deep_in_lora_section(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        load_config(write(tmp_path / "c.yaml", "sft:\n  lora:\n    alpah: 8\n"))
    assert "'sft.lora.alpah'" in str(info.value)
    assert "Did you mean 'sft.lora.alpha'?" in str(info.value)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=["sft.zzzzzzzz=1"])
    message = str(info.value)
    assert "Did you mean" not in message
    assert "epochs" in message and "learning_rate" in message


# --- wrong types ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("sft.epochs=x", "sft.epochs"),
        ("sft.epochs=true", "sft.epochs"),  # bool is not int
        ("sft.epochs=2.5", "sft.epochs"),
        ("sft.epochs=null", "sft.epochs"),  # not Optional
        ("sft.cache_frozen=3", "sft.cache_frozen"),
        ("sft.cache_frozen=yes_please", "sft.cache_frozen"),
        ("runtime.mixed_precision=fp8", "runtime.mixed_precision"),
        ("sft.learning_rate=fast", "sft.learning_rate"),
        ("sft.learning_rate=true", "sft.learning_rate"),  # bool is not float
        ("sft.trainable=3", "sft.trainable"),
        ("sft.trainable=[a,b]", "sft.trainable"),
        ("data.fractions=0.8", "data.fractions"),
        ("data.per_class=many", "data.per_class"),
        ("sft.lora=3", "sft.lora"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=[override])
    assert key in str(info.value)


def test_bad_list_item_names_its_index():
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=["data.fractions=[0.8,x,0.1]"])
    assert "data.fractions[1]" in str(info.value)


def test_literal_error_lists_choices():
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=["runtime.mixed_precision=fp8"])
    message = str(info.value)
    for choice in ("'no'", "'bf16'", "'fp16'"):
        assert choice in message


def test_section_given_a_scalar_in_file(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        load_config(write(tmp_path / "c.yaml", "sft: 3\n"))
    assert "sft" in str(info.value)


def test_from_dict_rejects_non_mapping():
    with pytest.raises(RlhfLabError):
        from_dict(Config, [1, 2])


# --- broken files and overrides ----------------------------------------------------------


def test_missing_config_file(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "missing.yaml" in str(info.value)


def test_directory_as_config_file(tmp_path):
    with pytest.raises(RlhfLabError):
        load_config(tmp_path)


def test_invalid_yaml(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        load_config(write(tmp_path / "bad.yaml", "sft:\n  epochs: [1, 2\n  batch_size: 3\n"))
    assert "bad.yaml" in str(info.value)
    assert "\n" not in str(info.value)  # one line for the CLI


def test_top_level_list(tmp_path):
    with pytest.raises(RlhfLabError) as info:
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
    assert "mapping" in str(info.value)


@pytest.mark.parametrize("override", ["sft.epochs", "=3", "  =3", ""])
def test_override_without_key_or_equals(override):
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=[override])
    assert "key=value" in str(info.value)


def test_override_into_a_scalar_is_not_a_section():
    with pytest.raises(RlhfLabError) as info:
        load_config(overrides=["seed.x=1"])
    assert "seed" in str(info.value)


# --- round trip ----------------------------------------------------------------------------


def test_dump_yaml_round_trip_defaults(tmp_path):
    cfg = Config()
    path = write(tmp_path / "dump.yaml", dump_yaml(cfg))
    assert load_config(path) == cfg


def test_dump_yaml_round_trip_changed_config(tmp_path):
    cfg = load_config(
        overrides=[
            "name=exp",
            "seed=3",
            "sft.learning_rate=1e-4",
            "sft.trainable=all",
            "sft.max_steps=12",
            "runtime.mixed_precision=fp16",
            "sft.cache_frozen=false",
            "sft.lora.target_modules=[q_proj]",
            "data.fractions=[0.8,0.1,0.1]",
            "data.per_class=null",
            "data.text_column=body",
        ]
    )
    path = write(tmp_path / "dump.yaml", dump_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert dump_yaml(again) == dump_yaml(cfg)


def test_dump_yaml_round_trip_tiny_float(tmp_path):
    cfg = load_config(overrides=["sft.learning_rate=1e-20", "sft.weight_decay=1e-7"])
    assert load_config(write(tmp_path / "dump.yaml", dump_yaml(cfg))) == cfg


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_presets_load_and_round_trip(preset, tmp_path):
    cfg = load_config(preset)
    assert load_config(write(tmp_path / "dump.yaml", dump_yaml(cfg))) == cfg


def test_an_optional_section_reports_its_own_unknown_key():
    with pytest.raises(RlhfLabError, match=r"reward\.data\.per_clas.*reward\.data\.per_class"):
        load_config(overrides=["reward.data.per_clas=3"])


def test_a_setting_inside_a_nested_section_keeps_that_sections_own_defaults():
    from rlhflab.config import load_config

    cfg = load_config(None, ["dpo.pairs.source=pairs.jsonl"])
    assert cfg.dpo.pairs.source == "pairs.jsonl" and cfg.dpo.pairs.fractions == [0.9, 0.1, 0.0]  # dpo's, not PairsConfig's
    assert cfg.reward.pairs.fractions == [0.8, 0.1, 0.1]


@pytest.mark.parametrize("override", ["dpo.beta=.inf", "ilql.beta=.nan", "ilql.beta=.inf", "ilql.eval_betas=[.inf]",
                                      "ilql.polyak=0", "ilql.tau=1", "dpo.on_policy.samples_per_prompt=1"])
def test_offline_settings_out_of_range_are_refused_when_the_config_loads(override):
    from rlhflab.config import load_config

    with pytest.raises(RlhfLabError, match=override.split(".")[0]):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, message", [
    (["ilql.beta=-1"], r"^ilql\.beta must be a finite number >= 0, got -1\.0\.$"),
    (["ilql.text_column=review"], r"ilql\.text_column and reward_column name columns of ilql\.samples, which is not set"),
    (["ilql.samples=s.jsonl", "ilql.text_column=score", "ilql.reward_column=score"],
     r"both 'score'; the text and its reward need two columns"),
    (["dpo.pairs.margin_column=margin"], r"dpo\.pairs\.margin_column is set, but DPO's loss has no margin"),
])
def test_offline_settings_that_would_be_ignored_or_clash_name_the_one_key(overrides, message):
    from rlhflab.config import load_config

    with pytest.raises(RlhfLabError, match=message):
        load_config(None, overrides)
