"""Numbers stay numbers and a full disk is one line (issue 19 §2): rewards are checked as the float32
they train in, a NaN or infinite loss stops the loop at its step (whatever the stage calls its loss),
non-finite weights are never checkpointed, and torch's zip-writer error on a full disk says so."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from rlhflab.checkpoint import load_checkpoint, save_checkpoint
from rlhflab.data.scored import ScoredTexts, load_scored_texts
from rlhflab.engine.loop import non_finite_loss, run_loop
from rlhflab.engine.runtime import Runtime
from rlhflab.errors import RlhfLabError
from rlhflab.io import RunDir
from rlhflab.stages.ilql import normalised_returns

# What torch.save raised when a small tmpfs filled up under it.
ZIP_WRITER_ERROR = "[enforce fail at inline_container.cc:603] . unexpected pos 4352 vs 4246"


# --- rewards, in the dtype they are used in -------------------------------------------------------

@pytest.mark.parametrize("reward, shown", [(1e39, "1e+39"), (-1e39, "-1e+39"), ("1e39", "'1e39'"),
                                           (10**400, "1000000000")])
def test_a_reward_finite_in_float64_but_not_in_float32_is_refused_naming_its_row(tmp_path, reward, shown):
    path = tmp_path / "scored.jsonl"
    rows = [{"text": "a fine film", "reward": 1.0}, {"text": "dull", "reward": 0.0}, {"text": "huge", "reward": reward}]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    with pytest.raises(RlhfLabError) as info:
        load_scored_texts(str(path))
    message = str(info.value)
    assert message.startswith(f"The reward ('reward') at line 3 of {path} is {shown}")
    assert "32-bit floats" in message and "rescale the rewards" in message and "\n" not in message


def test_the_largest_float32_rewards_are_kept_as_given(tmp_path):
    path = tmp_path / "scored.csv"
    path.write_text("text,score\nfine,3.4e38\ndull,-3.4028234e38\nok,1e-50\n")
    assert load_scored_texts(str(path)).rewards == [3.4e38, -3.4028234e38, 1e-50]


def test_normalised_returns_are_finite_float32_or_refused():
    def scored(train, validation=(0.0,)):
        return {"train": ScoredTexts(["t"] * len(train), list(train)), "validation": ScoredTexts(["v"] * len(validation), list(validation))}

    returns, mean, std = normalised_returns(scored([3e37, -3e37, 0.0]), "s.jsonl")
    assert mean == 0.0 and std == pytest.approx(3e37, rel=1e-6) and returns["train"].dtype == torch.float32
    assert returns["train"].tolist() == [1.0, -1.0, 0.0] and returns["validation"].tolist() == [0.0]
    # a validation reward far outside the training ones overflows once normalised
    with pytest.raises(RlhfLabError, match=r"^A validation reward of s\.jsonl, 3e\+38, becomes inf when normalised "
                                           r"in the 32-bit floats .* standard deviation 0\.707107\)\. Check that reward"):
        normalised_returns(scored([0.0, 1.0], [1.0, 3e38]), "s.jsonl")
    # rewards each within float32 whose sum is not: a NaN mean would make every return NaN
    with pytest.raises(RlhfLabError, match=r"^The training rewards of s\.jsonl overflow the 32-bit floats ILQL trains in "
                                           r"\(their mean comes out as nan, .*\): rescale all rewards"):
        normalised_returns(scored([3e38, 3e38, -3e38, -3e38] * 5), "s.jsonl")


# --- a non-finite loss stops the loop -------------------------------------------------------------

class Toy:
    """An Algorithm (rlhflab/engine/loop.py) over one linear layer whose step returns what `records` says."""

    eval_split = "validation"

    def __init__(self, records: dict[int, dict], blow_up_at: int | None = None):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(3, 2)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.5)
        self.scheduler = None
        self.records, self.blow_up_at, self.evaluated = records, blow_up_at, []

    def step(self, step: int) -> dict[str, float]:
        with torch.no_grad():
            self.module.weight.add_(0.1)
            if step + 1 == self.blow_up_at:  # the update blew up; the loss, computed before it, was finite
                self.module.weight.fill_(math.inf)
        return self.records.get(step + 1, {})

    def evaluation_due(self, step: int) -> bool:
        return False

    def evaluate(self, step: int) -> dict:
        self.evaluated.append(step)
        return {}

    def should_stop(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def progress(self) -> dict:
        return {}


def _run_dir(tmp_path, finished: bool = False) -> RunDir:
    run_dir = RunDir(tmp_path / "runs" / "tiny" / "rl")
    if finished:
        run_dir.final.mkdir(parents=True)
        (run_dir.final / "summary.json").write_text("{}")
    run_dir.prepare(resume=False, overwrite=True)
    return run_dir


def _loop(algorithm, run_dir, total_steps=6, checkpoint_every=2):
    return run_loop(algorithm, runtime=Runtime.create("cpu", "no"), run_dir=run_dir, total_steps=total_steps,
                    checkpoint_every=checkpoint_every, resume=False, progress=False, desc="rl")


@pytest.mark.parametrize("key, value", [("loss", math.nan), ("policy_loss", math.inf), ("value_loss", -math.inf)])
def test_a_non_finite_loss_under_any_loss_key_stops_the_run_at_its_step(tmp_path, key, value):
    run_dir = _run_dir(tmp_path)
    algorithm = Toy({1: {"score_mean": 0.5, key: 1.0}, 3: {"score_mean": 0.5, key: value}})
    with pytest.raises(RlhfLabError) as info:
        _loop(algorithm, run_dir)
    message = str(info.value)
    assert message.startswith(f"rl stopped at step 3: the training {key} became {value}. Likely causes: a learning "
                              f"rate too high (0.5 at this step; lower it in the rl: settings)")
    assert f"The checkpoint of step 2 in {run_dir.checkpoint_dir} is kept" in message and "\n" not in message
    assert "mixed precision" not in message  # fp32: not a cause here
    # nothing of the bad step was logged, evaluated or saved
    assert [row["step"] for row in run_dir.read_metrics()] == [1]
    assert json.loads((run_dir.checkpoint_dir / "latest" / "state.json").read_text())["step"] == 2
    assert algorithm.evaluated == []


def test_the_divergence_line_says_when_nothing_was_kept_and_that_the_finished_run_is(tmp_path):
    run_dir = _run_dir(tmp_path, finished=True)
    with pytest.raises(RlhfLabError, match=r"stopped at step 1: the training loss became nan\. .* No checkpoint had "
                                           rf"been saved, so nothing of this run is kept; the finished run "
                                           rf"{run_dir.final} is unchanged\. Fix the cause and start again with --overwrite\.$"):
        _loop(Toy({1: {"loss": math.nan}}), run_dir)
    assert (run_dir.final / "summary.json").read_text() == "{}"


def test_weights_that_blow_up_are_never_checkpointed(tmp_path):
    run_dir = _run_dir(tmp_path)
    with pytest.raises(RlhfLabError, match=r"^rl stopped at step 4: the trainable weights became NaN or infinite\. "
                                           r".* The checkpoint of step 2 in "):
        _loop(Toy({}, blow_up_at=3), run_dir)  # step 3 is no checkpoint step: caught at step 4's
    model = torch.nn.Linear(3, 2)
    loop, _ = load_checkpoint(run_dir.checkpoint_dir / "latest", model=model,
                              optimizer=torch.optim.SGD(model.parameters(), lr=0.5), scheduler=None)
    assert loop["step"] == 2 and torch.isfinite(model.weight).all()


def test_only_loss_keys_count_and_only_when_not_finite():
    assert non_finite_loss({"loss": 1e30, "kl": math.nan, "score_mean": math.inf}) is None
    assert non_finite_loss({"epoch": 0, "loss": 2.0, "kl_loss": math.nan}) == ("kl_loss", pytest.approx(math.nan, nan_ok=True))


# --- a full disk while a checkpoint is written ------------------------------------------------------

def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _full_disk(monkeypatch, *, free_bytes: int, fail_after: int = 0):
    """torch.save fails as the zip writer does on a full disk after `fail_after` good saves; statvfs reports `free_bytes`."""
    real_save, calls = torch.save, {"n": 0}

    def save(obj, path, *args, **kwargs):
        if not isinstance(path, (str, os.PathLike)):  # in-memory saves are not on the disk
            return real_save(obj, path, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > fail_after:
            with open(path, "wb") as handle:  # the partial file a full disk leaves
                handle.write(b"PK" * 100)
            raise RuntimeError(ZIP_WRITER_ERROR)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=free_bytes // 4096, f_frsize=4096))


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_stays(tmp_path, monkeypatch):
    model, optimizer = _model_and_optimizer()
    folder = tmp_path / "checkpoints" / "latest"
    save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=None, loop={"step": 2})
    before = (folder / "state.pt").read_bytes()
    _full_disk(monkeypatch, free_bytes=8192)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(RlhfLabError) as info:
        save_checkpoint(folder, model=model, optimizer=optimizer, scheduler=None, loop={"step": 4})
    message = str(info.value)
    assert message.startswith(f"Cannot save the checkpoint {folder}: the disk is full (8 KB free, the checkpoint needs about ")
    assert message.endswith(" KB); the previous checkpoint there is unchanged; free space and run again.") and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback to print
    assert (folder / "state.pt").read_bytes() == before and json.loads((folder / "state.json").read_text()) == {"step": 2}
    assert sorted(p.name for p in folder.parent.iterdir()) == ["latest"]  # the partial write was removed


def test_a_zip_writer_error_with_room_on_the_disk_is_not_called_a_full_disk(tmp_path, monkeypatch):
    model, optimizer = _model_and_optimizer()
    _full_disk(monkeypatch, free_bytes=10 * 2**30)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        save_checkpoint(tmp_path / "latest", model=model, optimizer=optimizer, scheduler=None, loop={"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_no_space_for_the_state_file_is_a_full_disk_too(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    model, optimizer = _model_and_optimizer()
    real_write = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "state.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(RlhfLabError, match=r"the disk is full .*; no checkpoint was written; free space and run again\.$"):
        save_checkpoint(tmp_path / "latest", model=model, optimizer=optimizer, scheduler=None, loop={"step": 1})


def test_a_full_disk_in_the_loop_names_the_checkpoint_kept_and_the_finished_run(tmp_path, monkeypatch):
    run_dir = _run_dir(tmp_path, finished=True)
    _full_disk(monkeypatch, free_bytes=0, fail_after=1)  # the checkpoint of step 2 is written, step 4's is not
    with pytest.raises(RlhfLabError) as info:
        _loop(Toy({}), run_dir)
    message = str(info.value)
    assert message.startswith(f"Cannot save the checkpoint {run_dir.checkpoint_dir / 'latest'}: the disk is full (0 KB free")
    assert message.endswith(f"; the checkpoint of step 2 is kept (free space, then continue with --resume); "
                            f"the finished run {run_dir.final} is unchanged.")
    assert json.loads((run_dir.checkpoint_dir / "latest" / "state.json").read_text())["step"] == 2


def test_a_full_disk_while_the_model_is_saved_is_one_line_naming_the_checkpoint_to_resume(tmp_path):
    from safetensors import SafetensorError

    from rlhflab.stages.sft import save_model

    class FillsTheDisk(torch.nn.Linear):
        def save_pretrained(self, folder, **_options):
            (folder / "model.safetensors").write_bytes(b"\0" * 100)
            # what safetensors raised when a small tmpfs filled up under it
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    run_dir = _run_dir(tmp_path, finished=True)
    model = FillsTheDisk(64, 64)  # 4,160 float32 weights: 16 KB
    save_checkpoint(run_dir.checkpoint_dir / "latest", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    scheduler=None, loop={"step": 6})
    with pytest.raises(RlhfLabError) as info:
        save_model(model, tokenizer=None, run_dir=run_dir)
    message = str(info.value)
    assert message.startswith(f"Cannot save the model {run_dir.model_dir}: the disk is full (")
    assert message.endswith(f"the model needs about 16 KB); the checkpoint of step 6 is kept (free space, then continue "
                            f"with --resume); the finished run {run_dir.final} is unchanged.")
    assert not run_dir.model_dir.exists() and [p.name for p in run_dir.path.iterdir()] == ["checkpoints"]


class _FillsTheDisk(torch.nn.Linear):
    """A model whose save_pretrained fails as safetensors does when a small tmpfs fills up under it."""

    def save_pretrained(self, folder, **_options):
        from safetensors import SafetensorError

        (folder / "model.safetensors").write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _save_reward_model(folder):
    from rlhflab.models.reward_model import RewardMeta, save_reward_model

    save_reward_model(_FillsTheDisk(4, 4), tokenizer=None, meta=RewardMeta("labels", 1.0, 0.0, "train", "base-model"), folder=folder)


def _save_policy(folder):
    from rlhflab.models.policy import ValueHead
    from rlhflab.stages.rl import save_policy

    policy = SimpleNamespace(lora=False, model=_FillsTheDisk(4, 4), value_head=ValueHead(4))
    save_policy(policy, SimpleNamespace(padding_side="left"), folder)


def _save_snapshot(folder):
    from rlhflab.models.snapshot import save_snapshot

    save_snapshot(SimpleNamespace(lora=True, model=_FillsTheDisk(4, 4)), "base-model", folder)


@pytest.mark.parametrize("save", [_save_reward_model, _save_policy, _save_snapshot])
def test_a_full_disk_while_a_model_folder_is_saved_is_one_line(tmp_path, save):
    folder = tmp_path / "model"
    with pytest.raises(RlhfLabError) as info:
        save(folder)
    assert str(info.value).startswith(f"Cannot write {folder}: the disk is full (No space left on device); nothing was "
                                      "written. Fix that") and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # the partial folder was removed

