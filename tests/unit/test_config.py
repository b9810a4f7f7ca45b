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
    (["ilql.beta=-1"], r"^ilql\.beta must be >= 0, got -1\.0\. The default is 1\.0\.$"),
    (["ilql.text_column=review"], r"ilql\.text_column and reward_column name columns of ilql\.samples, which is not set"),
    (["ilql.samples=s.jsonl", "ilql.text_column=score", "ilql.reward_column=score"],
     r"both 'score'; the text and its reward need two columns"),
    (["dpo.pairs.margin_column=margin"], r"dpo\.pairs\.margin_column is set, but DPO's loss has no margin"),
])
def test_offline_settings_that_would_be_ignored_or_clash_name_the_one_key(overrides, message):
    from rlhflab.config import load_config

    with pytest.raises(RlhfLabError, match=message):
        load_config(None, overrides)



# --- every check runs when the config loads (issue 19) --------------------------------------------


def _sections(cls=Config, where=""):
    """(key of the section, its class) for Config and every section nested in it."""
    import dataclasses
    import typing

    yield where, cls
    for name, hint in typing.get_type_hints(cls).items():
        if typing.get_origin(hint) is typing.ClassVar:
            continue
        for member in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(member):
                yield from _sections(member, f"{where}.{name}".lstrip("."))


def _numeric_fields():
    """(dotted key, base type) of every int or float setting, lists of them included."""
    import dataclasses
    import typing

    found = []
    for where, cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            members = set(typing.get_args(hint)) | {hint}
            members |= {a for m in list(members) if typing.get_origin(m) is list for a in typing.get_args(m)}
            for base in (float, int):
                if base in members:
                    found.append((f"{where}.{f.name}".lstrip("."), cls, f.name, base))
                    break
    return found


NUMERIC = _numeric_fields()


def test_every_numeric_setting_of_every_section_has_a_declared_range():
    missing = [key for key, cls, name, _ in NUMERIC if name not in getattr(cls, "RANGES", {})]
    assert missing == []
    assert len(NUMERIC) > 100  # the walk found the sections' fields, not just the top level


@pytest.mark.parametrize("key", [key for key, _, _, base in NUMERIC if base is float])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_no_float_setting_takes_nan_or_infinity(key, value):
    import re

    is_list = key.endswith(("fractions", "eval_betas"))
    with pytest.raises(RlhfLabError, match="^" + re.escape(key + ("[0]" if is_list else "")) + " must be a finite number"):
        load_config(None, [f"{key}={'[' + value + ']' if is_list else value}"])


@pytest.mark.parametrize("override, message", [
    # the inputs of issue 19, each refused with the key, the range and the default
    ("sft.learning_rate=.inf", r"^sft\.learning_rate must be a finite number in 32-bit floats \(magnitude at most 3\.4028235e\+38\) and > 0, got inf\. The default is 0\.0002\.$"),
    ("rl.vf_coef=.nan", r"^rl\.vf_coef must be a finite number in 32-bit floats \(magnitude at most 3\.4028235e\+38\) and > 0, got nan\. The default is 0\.1\.$"),
    ("evaluate.temperature=.nan", r"^evaluate\.temperature must be a finite number in 32-bit floats \(magnitude at most 3\.4028235e\+38\) and > 0, got nan\."),
    ("reward_fn.batch_size=0", r"^reward_fn\.batch_size must be at least 1, got 0\. The default is 32\.$"),
    ("seed=-1", r"^seed must be in \[0, 2147483647\], got -1\. The default is 0\.$"),
    ("sft.lora.r=0", r"^sft\.lora\.r must be at least 1, got 0\. The default is 16\.$"),
    ("dpo.lora.alpha=0", r"^dpo\.lora\.alpha must be at least 1, got 0\."),
    # zero never stands for "the default": null does
    ("evaluate.max_new_tokens=0", r"^evaluate\.max_new_tokens must be at least 1 \(or null, the default\), got 0\.$"),
    ("rl.samples_per_prompt=0", r"^rl\.samples_per_prompt must be at least 1 \(or null, the default\), got 0\.$"),
    ("dpo.on_policy.max_new_tokens=0", r"^dpo\.on_policy\.max_new_tokens must be at least 1"),
    ("overopt.max_new_tokens=0", r"^overopt\.max_new_tokens must be at least 1"),
    ("sft.max_steps=0", r"^sft\.max_steps must be at least 1 \(or null, the default\)"),
    ("data.per_class=0", r"^data\.per_class must be at least 1 \(or null\), got 0\. The default is 1000\.$"),
    ("reward_fn.source=''", r"^reward_fn\.source is empty; leave it out \(or set it to null\) for the default"),
    ("rl.minibatch_size=7", r"^rl\.minibatch_size \(7\) must divide rl\.batch_size \(64\) .* e\.g\. 2, 4, 8, 16, 32, 64\.$"),
    ("runtime.device=gpu", r"^runtime\.device: must be one of 'auto', 'cpu', 'cuda'; got 'gpu'"),
    ("pretrain.sample_prompts=['']", r"^pretrain\.sample_prompts\[0\] is blank"),
    ("pretrain.sample_prompts=['ROMEO.', ' ']", r"^pretrain\.sample_prompts\[1\] is blank"),
    ("data.prompt_min_words=0", r"^data\.prompt_min_words must be at least 1, got 0\."),
    ("data.prompt_min_words=6", r"^data\.prompt_min_words \(6\) must not exceed data\.prompt_max_words \(5\)"),
    ("reward.data={prompt_max_words: 2}", r"^reward\.data\.prompt_min_words \(3\) must not exceed reward\.data\.prompt_max_words \(2\)"),
    ("data.fractions=[0.5,0.5,0.5]", r"^data\.fractions: split fractions must be three numbers"),
    ("dpo.pairs.fractions=[0,0.5,0.5]", r"^dpo\.pairs\.fractions: the train fraction must be above 0"),
    ("rl.top_p=0", r"^rl\.top_p must be in \(0, 1\], got 0\.0\."),
    ("sft.warmup_ratio=1", r"^sft\.warmup_ratio must be in \[0, 1\), got 1\.0\."),
    ("pretrain.validation_fraction=1", r"^pretrain\.validation_fraction must be in \(0, 1\)"),
    ("evaluate.best_of=[4, 0]", r"^evaluate\.best_of\[1\] must be at least 1, got 0\.$"),
    ("reward.objective=pairs", r"^reward\.objective is pairs but reward\.pairs\.source is not set"),
])
def test_a_value_that_means_nothing_is_refused_when_the_config_loads(override, message):
    with pytest.raises(RlhfLabError, match=message):
        load_config(None, [override])


F32 = r"a finite number in 32-bit floats \(magnitude at most 3\.4028235e\+38\)"


@pytest.mark.parametrize("override, message", [
    # finite in float64 but not in the float32 training runs in (issue 19 follow-up)
    ("sft.learning_rate=1e39", rf"^sft\.learning_rate must be {F32} and > 0, got 1e\+39\. The default is 0\.0002\.$"),
    ("rl.non_stop_penalty=-1e39", rf"^rl\.non_stop_penalty must be {F32} \(or null, the default\), got -1e\+39\.$"),
    ("ilql.eval_betas=[1e39]", rf"^ilql\.eval_betas\[0\] must be {F32} and >= 0, got 1e\+39\.$"),
    ("rl.kl_coef=1e39", rf"^rl\.kl_coef must be {F32} and >= 0, got 1e\+39\. The default is 0\.05\.$"),
    ("dpo.beta=1e39", rf"^dpo\.beta must be {F32} and > 0, got 1e\+39\."),
    # the words once, not "a finite number a finite number"
    ("rl.non_stop_penalty=.nan", rf"^rl\.non_stop_penalty must be {F32} \(or null, the default\), got nan\.$"),
    # a blank string is never a path, name or model; null (where allowed) is the default
    ('data.source=""', r"^data\.source is empty; give a value \(the default is 'imdb'\), or leave it out for the default\.$"),
    ('sft.model=""', r"^sft\.model is empty; give a value \(the default is 'smollm2-135m'\)"),
    ('reward.model=""', r"^reward\.model is empty; give a value \(the default is 'minilm-l6'\)"),
    ('data.split=""', r"^data\.split is empty; give a value \(the default is 'train'\)"),
    ('runs_dir=""', r"^runs_dir is empty; give a value \(the default is 'runs'\)"),
    ('runs_dir=" "', r"^runs_dir is blank; give a value"),
    ("sft.lora.target_modules=['']", r"^sft\.lora\.target_modules\[0\] is blank; every item needs text, got ''\.$"),
    ("evaluate.models={a: ''}", r"^evaluate\.models\.a is empty; give a value, got ''\.$"),
    ("evaluate.models={'': x}", r"^evaluate\.models has an entry whose name is empty"),
    ('pretrain.sample_prompts=["\\u200b"]', r"^pretrain\.sample_prompts\[0\] is blank"),
    ('generation.stop_token=""', r"^generation\.stop_token is empty; leave it out \(or set it to null\)"),
    ("stages=[]", r"^stages is empty: a pipeline needs at least one stage\."),
])
def test_a_float32_overflow_a_blank_string_or_no_stage_is_refused_when_the_config_loads(override, message):
    with pytest.raises(RlhfLabError, match=message):
        load_config(None, [override])


I64 = r"a whole number in 64 bits \(magnitude at most 9223372036854775807\)"


@pytest.mark.parametrize("override, message", [
    # torch reads a Python int as a C long long: these failed deep inside a run, with a traceback
    ("pretrain.batch_size=" + "1" + "0" * 30, rf"^pretrain\.batch_size must be {I64} and at least 1, got 10{{30}}\. The default is 32\.$"),
    ("sft.eval_batch_size=9223372036854775808", rf"^sft\.eval_batch_size must be {I64} and at least 1, got 9223372036854775808\."),
    ("pretrain.warmup_steps=" + "1" + "0" * 400, rf"^pretrain\.warmup_steps must be {I64} and at least 1, got 10{{400}}\."),
    ("seed=-9223372036854775809", rf"^seed must be {I64} and in \[0, 2147483647\], got -9223372036854775809\."),
    # float() of a whole number beyond float64 overflowed while the config was read
    ("pretrain.lr_mul=" + "1" + "0" * 400, rf"^pretrain\.lr_mul must be {F32}, got a whole number of 401 digits\.$"),
    # Python refused these while YAML read them: the text as typed is then the value
    ("pretrain.batch_size=" + "1" + "0" * 5000, r"^pretrain\.batch_size: expected int, got '10{5000}' \(str\)\.$"),
])
def test_a_number_beyond_what_a_run_can_hold_is_refused_when_the_config_loads(override, message):
    with pytest.raises(RlhfLabError, match=message):
        load_config(None, [override])


def test_the_largest_64_bit_whole_number_passes_and_a_month_13_date_is_text(tmp_path):
    cfg = load_config(None, ["rl.steps=9223372036854775807", "name=2024-13-45"])
    assert cfg.rl.steps == 2**63 - 1 and cfg.name == "2024-13-45"
    path = tmp_path / "dated.yaml"
    path.write_text("name: 2024-13-45\n")
    with pytest.raises(RlhfLabError, match=rf"^Config file {path} has a value that cannot be read: month must be in "
                                           r"1\.\.12\. Quote it to keep it as text\.$"):
        load_config(path)


def test_float32_limit_is_torchs_and_values_up_to_it_and_meaningful_whitespace_pass():
    import torch

    from rlhflab.config import FLOAT32_MAX

    assert FLOAT32_MAX == float(torch.finfo(torch.float32).max)
    cfg = load_config(None, ["rl.non_stop_penalty=-3.4028234663852886e38", "rl.kl_coef=3.4e38",
                             'generation.stop_token="\\n"', 'overopt.separators=["\\n", " ", ","]'])
    assert cfg.rl.non_stop_penalty == -FLOAT32_MAX and cfg.rl.kl_coef == 3.4e38
    assert cfg.generation.stop_token == "\n" and cfg.overopt.separators == ["\n", " ", ","]


def test_a_tokenizers_smallest_vocabulary_is_checked_when_the_config_loads():
    assert load_config(None, ["pretrain.tokenizer=word", "pretrain.vocab_size=100"]).pretrain.vocab_size == 100
    with pytest.raises(RlhfLabError, match=r"^pretrain\.vocab_size must be at least 259 for a bpe tokenizer, got 100\.$"):
        load_config(None, ["pretrain.tokenizer=bpe", "pretrain.vocab_size=100"])


def test_null_means_the_default_and_the_stages_fill_it_in():
    from rlhflab.algorithms.supervised import total_steps
    from rlhflab.config import TrainingConfig, resolve_rl

    cfg = load_config(None, ["evaluate.max_new_tokens=null", "rl.samples_per_prompt=null", "sft.max_steps=null"])
    assert cfg.evaluate.max_new_tokens is None and cfg.rl.samples_per_prompt is None
    assert resolve_rl(cfg.rl).samples_per_prompt == 1
    assert resolve_rl(load_config(None, ["rl.algorithm=grpo"]).rl).samples_per_prompt == 4
    assert total_steps(TrainingConfig(epochs=2, batch_size=16, max_steps=None), 100) == 14  # 2 x ceil(100 / 16)
    assert total_steps(TrainingConfig(epochs=2, batch_size=16, max_steps=3), 100) == 3


@pytest.mark.parametrize("batch, minibatch, world, message", [
    (64, 16, 1, None),
    (64, 64, 1, None),
    (64, 7, 1, r"minibatch_size \(7\) must divide rl\.batch_size \(64\)"),
    (48, 32, 1, r"minibatch_size \(32\) must divide rl\.batch_size \(48\).* 12, 16, 24, 48\.$"),
    # with two processes: a share of each minibatch per process, so only even divisors are offered
    (64, 12, 2, r"minibatch_size \(12\) must divide rl\.batch_size \(64\).* 8, 16, 32, 64\.$"),
    (8, 5, 2, r"minibatch_size \(5\) must be a multiple of the number of processes \(2\)"),
])
def test_every_minibatch_of_a_rollout_has_the_same_size(batch, minibatch, world, message):
    from rlhflab.config import PpoConfig, resolve_rl

    cfg = PpoConfig(batch_size=batch, minibatch_size=minibatch, kl_horizon=1000)
    if message is None:
        assert resolve_rl(cfg, world).minibatch_size == minibatch
    else:
        with pytest.raises(RlhfLabError, match=message):
            resolve_rl(cfg, world)


def test_minibatch_checks_under_a_launcher_run_when_the_config_loads(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RlhfLabError, match=r"rl\.minibatch_size \(5\) must be a multiple of the number of processes \(2\)"):
        load_config(None, ["rl.batch_size=8", "rl.minibatch_size=5", "rl.kl_horizon=1000"])


@pytest.mark.parametrize("overrides, fragment", [
    (["rl.minibatch_size=7"], "rl.minibatch_size (7) must divide rl.batch_size (64)"),
    (["runtime.device=gpu"], "runtime.device: must be one of"),
    (["runtime.device=cuda"], "runtime.device=cuda was requested but no CUDA GPU is visible"),
    (["runtime.mixed_precision=fp16"], "runtime.mixed_precision=fp16 needs a GPU"),
    (["seed=-1"], "seed must be in [0, 2147483647]"),
])
def test_rlhflab_config_refuses_what_a_stage_would_refuse(capsys, monkeypatch, overrides, fragment):
    import torch

    from tests.helpers import assert_user_error, cli_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on any machine
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert_user_error(cli_run(capsys, "config", *overrides), fragment)


def test_rlhflab_config_prints_a_config_that_passes_every_check(capsys):
    from tests.helpers import cli_run

    result = cli_run(capsys, "config", "rl.minibatch_size=32", "evaluate.max_new_tokens=null")
    assert result.returncode == 0
    assert load_config(None, []).rl.minibatch_size == 16
    printed = from_dict(Config, __import__("yaml").safe_load(result.stdout))
    assert printed.rl.minibatch_size == 32 and printed.evaluate.max_new_tokens is None
