"""Checkpoints load safely (issue 10): a pickle that would run code is refused unrun, garbage and
old-format files are one-line errors, and a normal round trip restores everything exactly."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from rlhflab.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rlhflab.errors import RlhfLabError
from rlhflab.io import truncate_jsonl


class _WritesMarker:
    """Unpickling this calls os.system, as a malicious checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model[0].requires_grad_(False)  # frozen weights are not stored
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = get_scheduler("cosine", optimizer, 2, 20)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def _checkpoint(folder, model, optimizer, scheduler, **kwargs):
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, loop={"step": 3}, **kwargs)


def _load(folder):
    model, optimizer, scheduler = _training_state()
    return load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)


def _draws():
    return random.random(), np.random.normal(), np.random.rand(), torch.rand(3).tolist()


def _same_optimizer_state(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(torch.equal(a["state"][i][k], b["state"][i][k]) for i in a["state"] for k in a["state"][i])


def test_round_trip_restores_weights_optimizer_scheduler_and_rng_exactly(tmp_path):
    model, optimizer, scheduler = _training_state()
    _train(model, optimizer, scheduler, 3)
    random.seed(11)
    np.random.seed(12)
    np.random.normal()  # numpy now holds a cached gaussian: it must come back too
    torch.manual_seed(13)
    best = {name: p.detach().clone() * 2 for name, p in model.named_parameters() if p.requires_grad}
    _checkpoint(tmp_path / "latest", model, optimizer, scheduler, extra={"best": best, "note": "x"})
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer, saved_scheduler = copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict())
    expected_draws = _draws()
    _train(model, optimizer, scheduler, 2)
    expected_next = model.state_dict()

    fresh, fresh_optimizer, fresh_scheduler = _training_state(seed=1)  # other weights, no optimizer state
    fresh[0].load_state_dict(model[0].state_dict())  # frozen weights come back from the base model
    loop, extra = load_checkpoint(tmp_path / "latest", model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert loop == {"step": 3}
    assert extra["note"] == "x" and all(torch.equal(extra["best"][k], best[k]) for k in best)
    assert all(torch.equal(v, saved_weights[k]) for k, v in fresh.state_dict().items())
    assert _same_optimizer_state(fresh_optimizer.state_dict(), saved_optimizer)
    assert fresh_scheduler.state_dict() == saved_scheduler
    assert _draws() == expected_draws
    _train(fresh, fresh_optimizer, fresh_scheduler, 2)
    assert all(torch.equal(v, expected_next[k]) for k, v in fresh.state_dict().items())


def test_the_state_file_loads_with_the_safe_loader(tmp_path):
    model, optimizer, scheduler = _training_state()
    _train(model, optimizer, scheduler, 1)
    _checkpoint(tmp_path / "latest", model, optimizer, scheduler)
    state = torch.load(tmp_path / "latest" / "state.pt", weights_only=True)
    assert state["format"] == 2 and set(state["rng"]) >= {"python", "numpy", "torch"}


def _saved_folder(tmp_path):
    model, optimizer, scheduler = _training_state()
    _checkpoint(tmp_path / "latest", model, optimizer, scheduler)
    return tmp_path / "latest"


@pytest.mark.parametrize("how", ["pickle protocol 2", "pickle protocol 5", "torch.save", "inside a real checkpoint"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    folder = _saved_folder(tmp_path)
    marker = tmp_path / "pwned"
    payload = _WritesMarker(marker)
    if how.startswith("pickle"):
        (folder / "state.pt").write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    elif how == "torch.save":
        torch.save({"format": 2, "model": payload}, folder / "state.pt")
    else:
        state = torch.load(folder / "state.pt", weights_only=True)
        state["extra"] = {"best": payload}
        torch.save(state, folder / "state.pt")
    with pytest.raises(RlhfLabError) as exc:
        _load(folder)
    message = str(exc.value)
    assert "\n" not in message and str(folder / "state.pt") in message and "--overwrite" in message
    # torch's safe loader names the function it refused, except for opcodes it does not read at all.
    expected = "is corrupt or not an rlhflab checkpoint" if how == "pickle protocol 5" else "could run code"
    assert expected in message
    assert not marker.exists()


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01garbage bytes" * 20, b"hello world\n", os.urandom(400)])
def test_garbage_in_the_state_file_is_a_one_line_error(tmp_path, garbage):
    folder = _saved_folder(tmp_path)
    (folder / "state.pt").write_bytes(garbage)
    with pytest.raises(RlhfLabError) as exc:
        _load(folder)
    message = str(exc.value)
    assert "\n" not in message and str(folder / "state.pt") in message and "--overwrite" in message


def test_a_damaged_zip_is_a_one_line_error(tmp_path):
    folder = _saved_folder(tmp_path)
    data = bytearray((folder / "state.pt").read_bytes())
    data[len(data) // 2:] = b"\x00" * (len(data) - len(data) // 2)
    (folder / "state.pt").write_bytes(bytes(data))
    with pytest.raises(RlhfLabError, match="is corrupt or not an rlhflab checkpoint. Start again with --overwrite"):
        _load(folder)


def test_a_checkpoint_of_the_old_format_says_so(tmp_path):
    """The old format pickled numpy's RNG state (an ndarray): only an unsafe load could read it."""
    model, optimizer, scheduler = _training_state()
    folder = tmp_path / "latest"
    folder.mkdir()
    old = {"model": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
           "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
           "extra": {}}
    torch.save(old, folder / "state.pt")
    (folder / "state.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(RlhfLabError, match="older rlhflab.*--overwrite"):
        _load(folder)


def test_a_safe_file_without_our_format_is_refused(tmp_path):
    folder = _saved_folder(tmp_path)
    buffer = io.BytesIO()
    torch.save({"model": {}}, buffer)
    (folder / "state.pt").write_bytes(buffer.getvalue())
    with pytest.raises(RlhfLabError, match="older rlhflab"):
        _load(folder)


def test_a_damaged_state_json_is_a_one_line_error(tmp_path):
    folder = _saved_folder(tmp_path)
    (folder / "state.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(RlhfLabError, match="Cannot read the checkpoint"):
        _load(folder)


def test_a_missing_state_file_is_a_one_line_error(tmp_path):
    folder = _saved_folder(tmp_path)
    (folder / "state.pt").unlink()
    with pytest.raises(RlhfLabError, match="state.pt cannot be read .*--overwrite"):
        _load(folder)


# ---------------------------------------------------------------------------------------------
# A damaged or foreign checkpoint is one line on --resume (issue 19 follow-up): odd content in
# state.json / state.pt and a half-written or odd metrics.jsonl never end in a traceback.


CORRUPT = "is corrupt or not an rlhflab checkpoint. Start again with --overwrite."


def _unfrozen_training_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def _saved(tmp_path):
    model, optimizer, scheduler = _unfrozen_training_state()
    folder = tmp_path / "latest"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler,
                    loop={"step": 3, "evaluated_at": None}, extra={"algorithm": {}})
    return folder


def _load_unfrozen(folder):
    model, optimizer, scheduler = _unfrozen_training_state()
    return load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler)


def _edit_state(folder, change):
    state = torch.load(folder / "state.pt", weights_only=True)
    change(state)
    torch.save(state, folder / "state.pt")


def test_an_intact_checkpoint_still_loads(tmp_path):
    loop, extra = _load_unfrozen(_saved(tmp_path))
    assert loop == {"step": 3, "evaluated_at": None} and extra == {"algorithm": {}}


@pytest.mark.parametrize("loop", [{"step": "x"}, {"step": None}, {"step": True}, {"step": -1}, {"step": 2.5},
                                  {"evaluated_at": 1}, {"step": 3, "evaluated_at": "x"}, [1, 2, 3], "step"])
def test_a_state_json_with_an_odd_step_is_one_line(tmp_path, loop):
    folder = _saved(tmp_path)
    (folder / "state.json").write_text(json.dumps(loop))
    with pytest.raises(RlhfLabError) as exc:
        _load_unfrozen(folder)
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
        _load_unfrozen(folder)
    assert str(exc.value) == f"The checkpoint {folder / 'state.pt'} {CORRUPT}"


def test_weights_of_the_wrong_shape_are_one_line_naming_the_weight(tmp_path):
    folder = _saved(tmp_path)
    _edit_state(folder, lambda s: s.update(model={k: torch.zeros(3) for k in s["model"]}))
    model, optimizer, scheduler = _unfrozen_training_state()
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
        _load_unfrozen(folder)


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
    model, optimizer, scheduler = _unfrozen_training_state()
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    folder = tmp_path / "latest"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=scheduler, loop={"step": 1}, extra={})
    _edit_state(folder, lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)))
    with pytest.raises(RlhfLabError) as exc:
        _load_unfrozen(folder)
    assert str(exc.value) == f"The checkpoint {folder / 'state.pt'} {CORRUPT}"

