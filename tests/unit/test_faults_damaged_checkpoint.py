"""A damaged or foreign checkpoint is one line on --resume (issue 19 follow-up): odd content in
state.json / state.pt and a half-written or odd metrics.jsonl never end in a traceback."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rlhflab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rlhflab.errors import RlhfLabError
from rlhflab.io import truncate_jsonl

CORRUPT = "is corrupt or not an rlhflab checkpoint. Start again with --overwrite."


def _training_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _saved(tmp_path):
    model, optimizer, scheduler = _training_state()
    folder = tmp_path / "latest"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler,
                    loop={"step": 3, "evaluated_at": None}, extra={"algorithm": {}})
    return folder


def _load(folder):
    model, optimizer, scheduler = _training_state()
    return load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)


def _edit_state(folder, change):
    state = torch.load(folder / "state.pt", weights_only=True)
    change(state)
    torch.save(state, folder / "state.pt")


def test_an_intact_checkpoint_still_loads(tmp_path):
    loop, extra = _load(_saved(tmp_path))
    assert loop == {"step": 3, "evaluated_at": None} and extra == {"algorithm": {}}


@pytest.mark.parametrize("loop", [{"step": "x"}, {"step": None}, {"step": True}, {"step": -1}, {"step": 2.5},
                                  {"evaluated_at": 1}, {"step": 3, "evaluated_at": "x"}, [1, 2, 3], "step"])
def test_a_state_json_with_an_odd_step_is_one_line(tmp_path, loop):
    folder = _saved(tmp_path)
    (folder / "state.json").write_text(json.dumps(loop))
    with pytest.raises(RlhfLabError) as exc:
        _load(folder)
    message = str(exc.value)
    assert "\n" not in message and "--overwrite" in message and str(folder) in message


@pytest.mark.parametrize("change", [
    lambda s: s.pop("model"), lambda s: s.pop("optimizer"), lambda s: s.pop("rng"), lambda s: s.pop("extra"),
    lambda s: s.update(model="x"), lambda s: s.update(optimizer=[1]), lambda s: s.update(extra=3),
    lambda s: s.update(rng="x"), lambda s: s.update(rng={}), lambda s: s.update(rng={**s["rng"], "torch": torch.zeros(3)}),
    lambda s: s.update(optimizer={"state": {}, "param_groups": "x"}), lambda s: s.update(scheduler={"x": 1, "base_lrs": 5}),
], ids=["no-model", "no-optimizer", "no-rng", "no-extra", "model-str", "optimizer-list", "extra-int", "rng-str",
        "rng-empty", "rng-torch-wrong", "optimizer-groups-str", "scheduler-odd"])
def test_a_state_pt_with_missing_or_odd_parts_is_the_corrupt_line(tmp_path, change):
    folder = _saved(tmp_path)
    _edit_state(folder, change)
    with pytest.raises(RlhfLabError) as exc:
        _load(folder)
    assert str(exc.value) == f"The checkpoint {folder / 'state.pt'} {CORRUPT}"


def test_weights_of_the_wrong_shape_are_one_line_naming_the_weight(tmp_path):
    folder = _saved(tmp_path)
    _edit_state(folder, lambda s: s.update(model={k: torch.zeros(3) for k in s["model"]}))
    model, optimizer, scheduler = _training_state()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RlhfLabError) as exc:
        load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)
    message = str(exc.value)
    assert "\n" not in message and "0.weight is (3,)" in message and "(8, 4)" in message and "--overwrite" in message
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing half-copied


def test_weights_that_are_not_tensors_are_one_line(tmp_path):
    folder = _saved(tmp_path)
    _edit_state(folder, lambda s: s["model"].update({"0.weight": [1.0]}))
    with pytest.raises(RlhfLabError, match="0.weight is list.*--overwrite"):
        _load(folder)


def test_a_bad_rng_state_is_one_line_and_leaves_the_generators_as_they_were():
    good = rng_state()
    random.seed(5)
    np.random.seed(5)
    expected = (random.getstate(), np.random.get_state()[1].tolist())
    for bad in ["x", {}, {**good, "torch": "x"}, {**good, "numpy": {**good["numpy"], "keys": torch.zeros(3, dtype=torch.int64)}}]:
        with pytest.raises(RlhfLabError, match="random-number state is corrupt.*--overwrite"):
            set_rng_state(bad)
        assert (random.getstate(), np.random.get_state()[1].tolist()) == expected


def test_truncate_drops_a_half_written_or_odd_line_instead_of_failing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"split": "x"}\n[1,2,3]\n"text"\n{"step": "abc"}\n{"step": null}\n'
                    '{"step": 3}\n{"step": 2, "loss": 1.0}\n\n{"step": 4, "split": "tra', encoding="utf-8")
    truncate_jsonl(path, after_step=2)
    assert path.read_text(encoding="utf-8") == '{"step": 1, "loss": 2.0}\n{"split": "x"}\n{"step": 2, "loss": 1.0}\n'


def test_optimizer_moments_of_the_wrong_shape_are_the_corrupt_line(tmp_path):
    model, optimizer, scheduler = _training_state()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    folder = tmp_path / "latest"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, loop={"step": 1}, extra={})
    _edit_state(folder, lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)))
    with pytest.raises(RlhfLabError) as exc:
        _load(folder)
    assert str(exc.value) == f"The checkpoint {folder / 'state.pt'} {CORRUPT}"
