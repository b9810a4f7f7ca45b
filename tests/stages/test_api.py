"""`rlhflab.train`: one call per kind of training data, trlX's reward_fn signature, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import rlhflab
from rlhflab.api import adapt_reward_fn
from rlhflab.errors import RlhfLabError
from tests.helpers import synthetic_reviews


def test_reward_fn_signatures_are_told_apart_by_parameter_names():
    prompts, responses = ["Good", "Bad"], ["film", " plot"]
    trlx = adapt_reward_fn(lambda samples, prompts, outputs: [len(s) for s in samples])
    assert trlx(prompts, responses) == [9, 8]  # samples = prompt + output, joined as the reward models read them
    seen = {}

    def keywords(samples, **kwargs):
        seen.update(kwargs)
        return [0.0] * len(samples)

    adapt_reward_fn(keywords)(prompts, responses)
    assert seen["prompts"] == prompts and seen["outputs"] == responses and "tokenizer" in seen
    assert adapt_reward_fn(lambda prompts, responses: [len(r) for r in responses])(prompts, responses) == [4, 5]
    with pytest.raises(RlhfLabError, match=r"parameters \(x, y\) fit neither"):
        adapt_reward_fn(lambda x, y: [0.0])


def config(tmp_path, reviews_csv, **sections):
    return {"runs_dir": str(tmp_path / "runs"), "runtime": {"device": "cpu", "mixed_precision": "no"},
            "data": {"source": str(reviews_csv), "per_class": 30}, "ppo": {"max_new_tokens": 5}, **sections}


def test_train_with_prompts_and_a_trlx_reward_runs_ppo(tmp_path, tiny_llama_dir, reviews_csv):
    prompts = ["the film was", "a plot", "the cast", "an ending"]
    cfg = config(tmp_path, reviews_csv)
    cfg["rl"] = cfg.pop("ppo") | {"steps": 2, "batch_size": 4, "minibatch_size": 2, "eval_every": 1, "checkpoint_every": 10}
    result = rlhflab.train(model=str(tiny_llama_dir), prompts=prompts, eval_prompts=prompts[:2],
                           reward_fn=lambda samples, prompts, outputs: [s.count("e") / len(s) for s in samples],
                           config=cfg, progress=False)
    assert result.algorithm == "ppo" and result.summary["steps"] == 2
    assert result.run_dir == tmp_path / "runs" / "api" / "rl"
    (inputs,) = (tmp_path / "runs/api/inputs").glob("prompts-*.jsonl")
    assert [json.loads(line)["prompt"] for line in inputs.read_text().splitlines()] == prompts
    ids = result.tokenizer(["the film"], return_tensors="pt").input_ids
    assert result.model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def test_train_with_samples_and_rewards_runs_ilql(tmp_path, tiny_llama_dir, reviews_csv):
    texts, labels = zip(*synthetic_reviews(8))
    result = rlhflab.train(str(tiny_llama_dir), samples=list(texts), rewards=[float(x) for x in labels], name="offline",
                           config=config(tmp_path, reviews_csv, ilql={"max_steps": 2, "batch_size": 4, "eval_prompts": 2,
                                                                      "eval_betas": [0.0], "max_length": 24}),
                           progress=False)
    assert result.algorithm == "ilql" and result.run_dir.name == "ilql" and result.run_dir.parent.name == "offline"
    assert result.model.ilql_beta == 1.0  # loaded as a steered model
    assert result.summary["samples"]["train"] + result.summary["samples"]["validation"] == 16


def test_train_with_pairs_runs_dpo(tmp_path, tiny_llama_dir, reviews_csv):
    pairs = [{"prompt": "the film was", "chosen": " great and moving.", "rejected": " dull."}] * 6
    result = rlhflab.train(str(tiny_llama_dir), pairs=pairs, progress=False,
                           config=config(tmp_path, reviews_csv, dpo={"max_steps": 2, "batch_size": 2, "eval_prompts": 2,
                                                                     "pairs": {"fractions": [0.5, 0.5, 0.0]}}))
    assert result.algorithm == "dpo" and result.summary["pairs"]["train"] == 3


@pytest.mark.parametrize("kwargs, message", [
    ({}, "Nothing to train on"),
    ({"samples": ["a"], "rewards": [1.0, 2.0]}, "same length"),
    ({"samples": ["a"], "rewards": [1.0], "pairs": [{"chosen": "a", "rejected": "b"}]}, "one kind"),
    ({"pairs": [{"chosen": "a"}]}, "'chosen' and 'rejected'"),
    ({"prompts": ["a"], "reward_fn": lambda a, b: [0.0]}, "fit neither"),
    ({"pairs": [{"chosen": "a", "rejected": "b"}], "config": 3}, "config must be"),
    ({"samples": ["a", "b"], "rewards": [1.0, "abc"]}, r"rewards\[1\] is 'abc'"),
    ({"samples": ["a"], "rewards": [float("nan")]}, "finite"),
    ({"prompts": ["a", 3], "reward_fn": lambda prompts, responses: [0.0]}, r"prompts\[1\] is 3 \(int\)"),
    ({"prompts": "This movie was", "reward_fn": lambda prompts, responses: [0.0]}, r"not one string; wrap it in a list: "
                                                                                  r"prompts=\['This movie was'\]"),
    ({"samples": "abc", "rewards": [1.0, 0.0, 1.0]}, "samples must be a list, not one string"),
    ({"samples": {"a": 1.0}, "rewards": [1.0]}, "samples must be a list, not a dict"),
    ({"samples": 3, "rewards": [1.0]}, r"samples must be a list, got 3 \(int\)"),
    ({"pairs": [{"chosen": "a", "rejected": "b"}, {"chosen": "same", "rejected": "same"}]},
     r"1 row of pairs has the same text in 'chosen' and 'rejected'; the first is at pairs\[1\]"),
    ({"pairs": [{"chosen": "a", "rejected": "b"}], "config": {"rl": {"learning_rate": 1e-5}}}, "set them in the 'dpo' section"),
    ({"prompts": [], "reward_fn": lambda prompts, responses: [0.0]}, "prompts is empty"),
    # unordered containers: the rewards would be re-paired with other samples
    ({"samples": ["good film", "bad film"], "rewards": {1.0, 0.0}}, "rewards is a set, which has no order"),
    ({"samples": ["good film"], "rewards": frozenset([1.0])}, "rewards is a frozenset"),
    ({"samples": {"good film": 1.0, "bad film": 0.0}.keys(), "rewards": [1.0, 0.0]}, "samples is a dict_keys"),
    ({"samples": ["good film", "bad film"], "rewards": {"a": 1.0, "b": 0.0}.values()}, "rewards is a dict_values"),
    ({"prompts": {"a film", "the plot"}, "reward_fn": lambda prompts, responses: [0.0]}, "prompts is a set"),
    ({"samples": ["good film", "bad film"], "rewards": iter({1.0, 0.0})}, "rewards is an iterator"),
    ({"samples": ["good film", "bad film"], "rewards": [0.0, 1e39]}, r"^rewards\[1\] is 1e\+39: beyond the .* 32-bit floats"),
    ({"samples": ["good film", "bad film"], "rewards": map(float, {1, 0})}, "rewards is an iterator .map."),
    ({"samples": (s for s in ["good film", "bad film"]), "rewards": [1.0, 0.0]}, "samples is an iterator .generator."),
    ({"samples": ["good film", "bad film"], "rewards": np.array({1.0, 0.0})}, "rewards is a set"),
    ({"samples": ["good film"], "rewards": [1.0], "config": {"ilql": {"max_steps": object()}}}, "config holds a object"),
    ({"pairs": [{"chosen": "a", "rejected": "b"}], "config": {"dpo": {"pairs": {"fractions": {0.5, 0.25}}}}},
     r"config\['dpo'\]\['pairs'\]\['fractions'\] is a set"),
    # empty or all-blank inputs are named as the caller gave them, before any file is written
    ({"prompts": ["a film"], "eval_prompts": [], "reward_fn": lambda prompts, responses: [0.0]}, "^eval_prompts is empty"),
    ({"prompts": ["  ", "", "\n"], "reward_fn": lambda prompts, responses: [0.0]},
     r"^prompts holds no prompt with text \(all 3 are empty or only spaces\)"),
    ({"prompts": ["a film"], "eval_prompts": [" "], "reward_fn": lambda prompts, responses: [0.0]},
     r"^eval_prompts holds no prompt with text \(the one given is empty or only spaces\)"),
    ({"samples": [" ", ""], "rewards": [1.0, 0.0]}, r"^samples holds no text \(all 2"),
    ({"pairs": []}, "^pairs is empty"),
])
def test_bad_calls_are_clear_errors_and_leave_nothing(tmp_path, kwargs, message):
    config = kwargs.setdefault("config", {})
    if isinstance(config, dict):
        config["runs_dir"] = str(tmp_path / "runs")
    with pytest.raises(RlhfLabError, match=message):
        rlhflab.train("some-model", **kwargs)
    assert not (tmp_path / "runs").exists()


def test_numpy_torch_and_pandas_inputs_are_read_as_lists(tmp_path, tiny_llama_dir, reviews_csv):
    import numpy as np
    import pandas as pd
    import torch

    texts, labels = zip(*synthetic_reviews(4))
    cfg = config(tmp_path, reviews_csv, ilql={"max_steps": 1, "batch_size": 4, "eval_prompts": 2, "eval_betas": [0.0],
                                              "max_length": 16})
    result = rlhflab.train(str(tiny_llama_dir), samples=pd.Series(texts), rewards=torch.tensor(labels, dtype=torch.float32),
                           config=cfg, progress=False)
    assert result.summary["samples"]["train"] + result.summary["samples"]["validation"] == 8
    assert repr(result).startswith("TrainResult(algorithm='ilql', run_dir=") and len(repr(result)) < 300
    (inputs,) = (tmp_path / "runs/api/inputs").glob("samples-*.jsonl")
    assert [json.loads(line)["reward"] for line in inputs.read_text().splitlines()] == [float(x) for x in labels]
    frame = pd.DataFrame({"prompt": ["the film"] * 4, "chosen": [" great."] * 4, "rejected": [" dull."] * 4})
    from rlhflab.api import _listed

    assert _listed(frame, "pairs")[0] == {"prompt": "the film", "chosen": " great.", "rejected": " dull."}
    assert _listed(np.array(["a", "b"]), "prompts") == ["a", "b"] and _listed(("a",), "prompts") == ["a"]


def test_inputs_are_named_by_content_and_the_reward_by_its_function(tmp_path, tiny_llama_dir, reviews_csv):
    def sentiment(samples, prompts, outputs):
        return [s.count("e") / len(s) for s in samples]

    cfg = config(tmp_path, reviews_csv)
    cfg["rl"] = cfg.pop("ppo") | {"steps": 1, "batch_size": 2, "minibatch_size": 2, "eval_prompts": 2}
    first = rlhflab.train(str(tiny_llama_dir), prompts=["a film", "the plot"], reward_fn=sentiment, config=cfg, progress=False)
    assert "sentiment_" in first.summary["reward"]  # the user's function, by name
    with pytest.raises(RlhfLabError, match="raised ZeroDivisionError"):  # fails while training
        rlhflab.train(str(tiny_llama_dir), prompts=["other prompts"], reward_fn=lambda samples: [1 / 0 for _ in samples],
                      config=cfg, progress=False)
    # the finished run is still there and still names the file it was trained on, unchanged
    used = yaml.safe_load((first.run_dir / "config.yaml").read_text())["data"]["prompts"]
    assert [json.loads(line)["prompt"] for line in open(used)] == ["a film", "the plot"]
    assert first.run_dir.joinpath("summary.json").exists()


def test_a_call_that_fails_before_its_stage_starts_leaves_no_inputs(tmp_path, monkeypatch):
    """The inputs files exist while the stage runs; a failure that leaves no stage folder takes them
    away again (and the folders the call made), while a resumable stage that names them keeps them."""
    import rlhflab.stages.common as common

    seen = []

    def failing(stage, cfg, **_):
        seen.append(sorted(p.name.split("-")[0] for p in (tmp_path / "runs/api/inputs").iterdir()))
        raise RlhfLabError("the model could not be loaded")

    monkeypatch.setattr(common, "run_stage", failing)
    call = dict(prompts=["a film"], eval_prompts=["the plot"], reward_fn=lambda prompts, responses: [0.0] * len(prompts),
                config={"runs_dir": str(tmp_path / "runs"), "runtime": {"device": "cpu"}}, progress=False)
    with pytest.raises(RlhfLabError, match="could not be loaded"):
        rlhflab.train("some-model", **call)
    assert seen == [["eval_prompts", "prompts"]] and not (tmp_path / "runs").exists()

    def interrupted(stage, cfg, **_):  # stopped with a checkpoint: its config.yaml names the inputs
        partial = tmp_path / "runs/api/rl.partial"
        partial.mkdir()
        (partial / "config.yaml").write_text(yaml.safe_dump({"data": {"prompts": cfg.data.prompts}}))
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rlhflab.train("some-model", **call)
    assert [p.name.split("-")[0] for p in (tmp_path / "runs/api/inputs").iterdir()] == ["prompts"]  # eval_prompts: unnamed


def test_numpy_numbers_in_a_config_dict_are_read_as_plain_numbers(tmp_path):
    from rlhflab.api import _config

    cfg, _ = _config({"ilql": {"max_steps": np.int64(2), "beta": np.float32(0.5)}, "runs_dir": str(tmp_path)},
                     None, None, ["a"], [1.0], None, None)
    assert cfg.ilql.max_steps == 2 and isinstance(cfg.ilql.max_steps, int)
    assert cfg.ilql.beta == 0.5
