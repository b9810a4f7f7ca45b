"""Policy snapshots: what training changed, saved beside a pointer to the model it started from.

A full copy of SmolLM2-135M is 517 MB; the default RL run trains two of its 30 blocks, so a
snapshot of those is 14 MB in bfloat16. A snapshot folder holds `snapshot.json` ({"base": the
starting model, "kind": "tensors" | "lora", "dtype"}) and either `weights.safetensors` (the
trainable tensors, by their names in the model) or peft's adapter files (LoRA). Every loader
of causal LMs (`load_causal_lm`) reads a snapshot folder as the model it describes, so
`evaluate.models`, `rl.policy` and the over-optimisation study take one like any model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rlhflab.errors import RlhfLabError
from rlhflab.io import atomic_dir, read_json, write_json

SNAPSHOT_FILE = "snapshot.json"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def is_snapshot(name: str) -> bool:
    return (Path(name).expanduser() / SNAPSHOT_FILE).is_file()


def trainable_tensors(policy) -> dict[str, torch.Tensor]:
    """The trainable parameters of `policy` by name, whole: under FSDP each is gathered from its
    shards (a collective: every process calls this at the same point; rlhflab/engine/sharding.py)."""
    from rlhflab.engine.sharding import whole

    return {name: whole(p.detach()) for name, p in policy.model.named_parameters() if p.requires_grad}


def save_snapshot(policy, base: str, folder: Path, dtype: str = "bfloat16",
                  tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Save the trainable tensors of `policy` (a rlhflab.models.policy.Policy) to `folder`.

    `base` is the model the policy started from (a name, hub id or folder). A folder is written
    relative to the snapshot, so a runs directory can be moved whole. The value head is not
    saved: a snapshot is for sampling and scoring, not for resuming (checkpoints do that).
    `tensors`: the policy's `trainable_tensors`, gathered by every process beforehand when it is
    sharded (None: read here, which is right only for an unsharded policy).
    """
    folder = Path(folder)
    local = Path(base).expanduser().exists()
    with atomic_dir(folder) as tmp:
        if policy.lora:
            policy.model.save_pretrained(tmp)  # peft: adapter_config.json + adapter weights only
            kind = "lora"
        else:
            from safetensors.torch import save_file

            tensors = trainable_tensors(policy) if tensors is None else tensors
            save_file({name: t.to(DTYPES[dtype]).cpu().contiguous() for name, t in tensors.items()},
                      str(tmp / "weights.safetensors"))
            kind = "tensors"
        write_json(tmp / SNAPSHOT_FILE, {
            "base": os.path.relpath(Path(base).expanduser().resolve(), folder.resolve()) if local else base,
            "base_is_path": local, "kind": kind, "dtype": dtype if kind == "tensors" else "float32",
        })


def snapshot_base(folder: str | Path) -> str:
    """The model a snapshot starts from, as a name load_causal_lm takes."""
    folder = Path(folder).expanduser()
    meta = read_json(folder / SNAPSHOT_FILE)
    base = meta["base"]
    if meta.get("base_is_path"):
        path = (folder / base).resolve()
        if not path.exists():
            raise RlhfLabError(f"The snapshot {folder} starts from {path}, which no longer exists; "
                               f"a snapshot holds only what training changed, so its base model must stay.")
        return str(path)
    return base


def load_snapshot(folder: str | Path, **kwargs):
    """(model, tokenizer) of a snapshot: its base model with the saved tensors put in."""
    from safetensors import SafetensorError

    from rlhflab.models.causal_lm import load_causal_lm, refuse_unsafe_pickles

    folder = Path(folder).expanduser()
    meta = read_json(folder / SNAPSHOT_FILE)
    # The snapshot is the trained policy itself: a base that is an ILQL run starts it as a plain LM.
    model, tokenizer = load_causal_lm(snapshot_base(folder), steering=False, **kwargs)
    if meta.get("kind") == "lora":
        from peft import PeftModel

        with refuse_unsafe_pickles():  # an adapter_model.bin is unpickled by peft
            return PeftModel.from_pretrained(model, str(folder)).merge_and_unload(), tokenizer
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(folder / "weights.safetensors"))
    except (SafetensorError, FileNotFoundError) as exc:
        raise RlhfLabError(f"{folder / 'weights.safetensors'} cannot be read ({exc}); the snapshot {folder} is "
                           "incomplete or corrupt: copy it again, or use the run's full model.") from None
    own = dict(model.named_parameters())
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise RlhfLabError(f"The snapshot {folder} holds tensors its base model lacks ({', '.join(unknown[:3])}); "
                           f"its base is not the model it was trained from.")
    with torch.no_grad():
        for name, value in tensors.items():
            if own[name].shape != value.shape:
                raise RlhfLabError(f"The snapshot {folder} has {name} of shape {tuple(value.shape)}, its base "
                                   f"{tuple(own[name].shape)}; its base is not the model it was trained from.")
            own[name].copy_(value.to(own[name].dtype))
    return model, tokenizer
