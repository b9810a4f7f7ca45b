"""ILQL heads on a causal LM (Snell et al. 2022): two Q heads with Polyak targets, a V head, their
files beside a saved LM, and steered generation through a hook on the LM head.

A Q head maps the last hidden state h (h,) to a vector f(h) in hidden space plus one number c(h),
and reads the vector out with the LM's own output embedding E (V, h), frozen and shared:
Q(s, ·) = E f(h_s) + c(h_s). A head then costs ~4h² parameters instead of h·V (SmolLM2: V = 49152,
h = 576). c is the state's level, which every action shares: without it (format 1) Q(s, a) is
e_a · f(h), so a value that does not depend on the action (the review's label, on whatever token
ends it) has to be spelled out in every embedding's direction at once (trlX's heads read out
through an h -> 2h -> V layer of their own, which can hold such a level).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rlhflab.errors import RlhfLabError
from rlhflab.io import atomic_open, write_json
from rlhflab.ops.ilql import polyak_update, steered_logits

HEADS_FILE = "ilql_heads.safetensors"
HEADS_META = "ilql_heads.json"
FORMAT = 2  # 1: Q heads without the state level c(h); read as c = 0, the same function


@dataclass
class IlqlOut:
    qs: tuple[torch.Tensor, torch.Tensor]  # (B, T, V) each, fp32, trainable
    target_qs: tuple[torch.Tensor, torch.Tensor]  # (B, T, V) each, or (B, T) at given actions; fp32, no grad
    v: torch.Tensor  # (B, T) fp32


def _mlp(hidden_size: int, out_size: int) -> nn.Sequential:
    """h -> 2h -> ReLU -> out with the last layer zero: the head starts at exactly 0, like
    ValueHead, so the first TD targets are the rewards rather than noise."""
    net = nn.Sequential(nn.Linear(hidden_size, 2 * hidden_size), nn.ReLU(), nn.Linear(2 * hidden_size, out_size))
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class IlqlHeads(nn.Module):
    """Two Q heads, their two frozen target copies (moved only by `sync_targets`) and a V head,
    all fp32. `output_embeddings` is the LM's head module (`.weight` (V, h)); it is used detached
    and is not a submodule (not in state_dict, not moved by `.to`). Raises RlhfLabError when its
    width is not `hidden_size`."""

    def __init__(self, hidden_size: int, output_embeddings: nn.Module):
        super().__init__()
        weight = getattr(output_embeddings, "weight", None)
        if weight is None or weight.dim() != 2 or weight.shape[1] != hidden_size:
            shape = None if weight is None else tuple(weight.shape)
            raise RlhfLabError(f"ILQL heads of hidden size {hidden_size} do not fit this model's output embedding "
                               f"(weight {shape}, expected (vocab, {hidden_size})); use the model they were trained with.")
        self.hidden_size = hidden_size
        self.q_heads = nn.ModuleList(_mlp(hidden_size, hidden_size + 1) for _ in range(2))  # f(h), then c(h)
        self.target_q_heads = copy.deepcopy(self.q_heads).requires_grad_(False)
        self.v_head = _mlp(hidden_size, 1)
        self._output_embeddings = [output_embeddings]  # a list: the LM's module, not registered here

    def _q(self, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """E f(h) + c(h): (B, T, h) fp32 -> (B, T, V); E detached, it belongs to (and trains with) the LM."""
        out = head(hidden)
        return F.linear(out[..., :-1], self._output_embeddings[0].weight.detach().float()) + out[..., -1:]

    def _q_at(self, head: nn.Module, hidden: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Q(s_t, a_t) only, (B, T): e_{a_t} · f(h_t) + c(h_t), without reading out the vocabulary."""
        out = head(hidden)
        rows = self._output_embeddings[0].weight.detach()[actions].float()  # (B, T, h)
        return (out[..., :-1] * rows).sum(-1) + out[..., -1]

    def forward(self, hidden: torch.Tensor, actions: torch.Tensor | None = None) -> IlqlOut:
        """hidden (B, T, h), the LM's last hidden states (gradients flow into them) -> IlqlOut.
        actions (B, T) token ids: the target Qs only at them, (B, T) (E's rows of the actions
        against f(h): training needs no other, and skips two (B, T, V) readouts)."""
        hidden = hidden.float()
        qs = tuple(self._q(head, hidden) for head in self.q_heads)
        with torch.no_grad():  # the targets are regression targets only
            if actions is None:
                target_qs = tuple(self._q(head, hidden) for head in self.target_q_heads)
            else:
                target_qs = tuple(self._q_at(head, hidden, actions) for head in self.target_q_heads)
        return IlqlOut(qs, target_qs, self.v_head(hidden).squeeze(-1))

    def steering(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, T, h) -> (min of the target Q heads (B, T, V), V (B, T)), fp32, what
        generation steers by (as trlX: the targets are the slower, more conservative estimate)."""
        hidden = hidden.float()
        q = torch.minimum(*(self._q(head, hidden) for head in self.target_q_heads))
        return q, self.v_head(hidden).squeeze(-1)

    def sync_targets(self, alpha: float) -> None:
        """Polyak update target ← alpha·online + (1 − alpha)·target of both Q heads."""
        polyak_update(self.target_q_heads, self.q_heads, alpha)


def save_heads(heads: IlqlHeads, folder: Path, *, beta: float, top_k: int = 0, state: dict | None = None) -> None:
    """Write `ilql_heads.safetensors` (the heads' own weights, targets included) and
    `ilql_heads.json` ({"hidden_size", "beta": the default generation β, "top_k": the steered
    tokens kept (0: all), "format": 2}) into a model folder, each atomically. `state`: the heads' whole
    state dict when they are FSDP-sharded (rlhflab/engine/sharding.py whole_state). Raises RlhfLabError
    for β < 0 or an unwritable folder."""
    from safetensors.torch import save

    if not 0 <= beta < float("inf"):
        raise RlhfLabError(f"The ILQL generation beta must be a finite number >= 0, got {beta}.")
    folder = Path(folder)
    tensors = {name: value.detach().cpu().contiguous() for name, value in (state or heads.state_dict()).items()}
    with atomic_open(folder / HEADS_FILE, "wb") as handle:
        handle.write(save(tensors))
    # the metadata last: a folder with it has complete weights
    write_json(folder / HEADS_META, {"hidden_size": heads.hidden_size, "beta": float(beta), "top_k": int(top_k),
                                     "format": FORMAT})


def load_heads(folder: Path, output_embeddings: nn.Module) -> tuple[IlqlHeads, float, int] | None:
    """(heads on the embeddings' device, default generation β, top_k) from a model folder (top_k 0,
    the whole vocabulary, for heads saved before it was a setting); None when it has no ILQL heads
    (a plain LM). Raises RlhfLabError for a missing, corrupt or mismatched file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, meta = folder / HEADS_FILE, folder / HEADS_META
    if not weights.exists() and not meta.exists():
        return None
    fix = f"save the ILQL model again, or delete {HEADS_FILE} and {HEADS_META} from {folder} to use it as a plain LM"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        hidden_size, beta, fmt = int(info["hidden_size"]), float(info["beta"]), info["format"]
        top_k = int(info.get("top_k", 0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RlhfLabError(f"{meta} is missing or unreadable ({type(exc).__name__}: {exc}); {fix}.") from None
    if fmt not in (1, FORMAT):
        raise RlhfLabError(f"{meta} has format {fmt!r}; this rlhflab reads formats 1 and {FORMAT}; {fix}.")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise RlhfLabError(f"{weights} is missing or corrupt ({exc}); {fix}.") from None
    if fmt == 1:
        state = _with_zero_level(state)
    heads = IlqlHeads(hidden_size, output_embeddings)
    try:
        heads.load_state_dict(state)
    except RuntimeError as exc:
        raise RlhfLabError(f"{weights} does not hold ILQL heads of hidden size {hidden_size} "
                           f"({str(exc).splitlines()[0]}); {fix}.") from None
    return heads.to(output_embeddings.weight.device), beta, top_k


def _with_zero_level(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Format-1 Q heads (f(h) only) as format 2: the last layer gains c(h) = 0 (a zero output row
    and bias), so every Q value stays what it was."""
    last = {k for k in state if k.startswith(("q_heads.", "target_q_heads.")) and k.split(".")[2] == "2"}
    return {k: torch.cat([v, v.new_zeros(1, *v.shape[1:])]) if k in last else v for k, v in state.items()}


def attach_steering(model: nn.Module, heads: IlqlHeads, beta: float, top_k: int = 0) -> torch.utils.hooks.RemovableHandle:
    """Make `model` (and its `generate`) an ILQL policy: a forward hook on the LM head replaces its
    logits (B, T, V) by `steered_logits` from the head's input, the last hidden state (B, T, h)
    for any architecture ((B, 1, h) per step under the KV cache). The logits keep their dtype.
    β = 0 with top_k 0 gives log-probs: the same distribution as the model, hence the same samples,
    under shift-invariant sampling (temperature, top-k/p; not a repetition penalty); top_k > 0 keeps
    the k highest steered logits (see `steered_logits`). Sets `model.ilql_beta`; `handle.remove()`
    restores the plain model. Raises RlhfLabError for β < 0, top_k < 0 or a model without an LM head."""
    if not 0 <= beta < float("inf"):
        raise RlhfLabError(f"The ILQL steering strength beta must be a finite number >= 0, got {beta}.")
    if top_k < 0:
        raise RlhfLabError(f"The ILQL top_k must be >= 0 (0: the whole vocabulary), got {top_k}.")
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise RlhfLabError(f"{type(model).__name__} has no LM head to steer; ILQL needs a causal language model.")

    def steer(module: nn.Module, inputs: tuple, logits: torch.Tensor) -> torch.Tensor:
        if heads.v_head[0].weight.device != inputs[0].device:  # the heads follow the model to its device
            heads.to(inputs[0].device)
        q, v = heads.steering(inputs[0])
        return steered_logits(logits, q, v, beta, top_k).to(logits.dtype)

    handle = lm_head.register_forward_hook(steer)
    model.ilql_beta = float(beta)
    return handle
