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

from rlhflab.checkpoint import load_checkpoint, save_checkpoint
from rlhflab.errors import RlhfLabError


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
