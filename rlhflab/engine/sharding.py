"""Whole tensors from FSDP-sharded models, and back (the checkpoint, best-weights and saving paths).

Under FSDP 2 (`accelerate launch` with an FSDP config) every parameter of a prepared model is a
DTensor: each process holds one shard of it. What rlhflab writes or keeps (checkpoints, the best
weights, model/ folders) holds whole tensors, so that a checkpoint or a model folder does not
depend on how many processes wrote it, and `model/` loads with plain transformers.

Gathering a shard is a collective: every process must call these functions, in the same order,
even where only the main process writes. Without DTensors (one process, DDP) they change nothing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


def _dtensor():
    from torch.distributed.tensor import DTensor

    return DTensor


def settle() -> None:
    """Put every FSDP unit of the models this process prepared back into its sharded state.

    FSDP 2 leaves the root and the embedding/head unit gathered after a forward pass without
    backward (accelerate prepares them with reshard_after_forward False): their parameters are
    then plain views of a buffer that the next reshard frees, so a weight read there would be
    dropped, and one written there lost. Settled, every parameter is its DTensor shard."""
    from rlhflab.engine import runtime

    if runtime._ACCELERATOR is None:
        return
    from torch.distributed.fsdp import FSDPModule

    for model in runtime._ACCELERATOR._models:
        for unit in model.modules():
            if isinstance(unit, FSDPModule):
                unit.reshard()


def is_sharded(module: nn.Module) -> bool:
    """Whether any of the module's parameters is an FSDP shard (a DTensor)."""
    settle()
    dtensor = _dtensor()
    return any(isinstance(p, dtensor) for p in module.parameters())


def whole(value: Any) -> Any:
    """`value` with every DTensor in it (nested dicts, lists, tuples) gathered into a plain tensor.

    A collective when there is a DTensor: every process calls it on the same structure."""
    dtensor = _dtensor()
    if isinstance(value, dtensor):
        return value.full_tensor()
    if isinstance(value, dict):
        return {key: whole(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(whole(item) for item in value)
    return value


def shard_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's shard of a whole tensor `value` that every process holds, laid out as the
    DTensor `like` (no communication); `value` itself when `like` is a plain tensor."""
    dtensor = _dtensor()
    if not isinstance(like, dtensor) or isinstance(value, dtensor):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def whole_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """optimizer.state_dict() with whole tensors (a collective under FSDP), in the layout it has
    without FSDP, so a checkpoint reads the same whoever resumes it.

    A process whose shard of a parameter is empty (a (1, H) reward head split over 2 processes)
    may hold no state for it (Adam skips a parameter without a gradient), so the main process's
    entries decide what is gathered; a missing moment is gathered from an empty shard."""
    settle()
    state = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    dtensor = _dtensor()
    # {parameter index: {key: whether it is sharded}}, as the main process has it
    layout = _broadcast({i: {key: isinstance(value, dtensor) for key, value in entry.items()}
                         for i, entry in state["state"].items()})
    gathered = {}
    for i, keys in layout.items():
        own = state["state"].get(i, {})
        entry = {}
        for key, sharded in keys.items():
            value = own.get(key)
            # unsharded values (Adam's step): the main process's are kept
            entry[key] = _concat_shards(value, params[i]) if sharded else value
        gathered[i] = entry
    return {"state": gathered, "param_groups": state["param_groups"]}


def _concat_shards(value: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor:
    """The whole tensor of one sharded moment: each process's local shard (an empty one where the
    process holds none) gathered as objects and concatenated along the sharded dimension. gloo's
    tensor all-gather does not line up when one process's shard of a moment does not exist."""
    import torch.distributed as dist

    local = value.to_local() if value is not None else param.to_local().new_zeros(param.to_local().shape)
    pieces = [None] * dist.get_world_size()
    dist.all_gather_object(pieces, local.detach().cpu())
    return torch.cat(pieces, dim=param.placements[0].dim)


def _broadcast(value: Any) -> Any:
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a state from `whole_optimizer_state`: each moment shaped like its parameter goes back
    to this process's shard of it; scalars (Adam's step) stay as they are."""
    settle()
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.dim() and value.shape == param.shape:
                    optimizer.state[param][key] = shard_like(value, param)


def whole_state(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """The module's state dict with whole tensors when it is sharded (a collective: every process
    calls it), for `save_pretrained(state_dict=...)` on the main process; None when it is not
    sharded (the module's own state dict is whole already)."""
    if not is_sharded(module):
        return None
    gathered: dict[int, torch.Tensor] = {}  # tied weights (embeddings and LM head) stay one tensor,
    state = {}                              # so save_pretrained still sees them as tied
    for name, value in module.state_dict(keep_vars=True).items():
        if id(value) not in gathered:
            gathered[id(value)] = whole(value.detach())
        state[name] = gathered[id(value)]
    # FSDP may hold a tied LM head as its own shard; one tensor again, as transformers ties it (the
    # LM may be a submodule: PPO's PolicyWithValue names its weights model.<key>)
    for prefix, sub in module.named_modules():
        for target, source in (getattr(sub, "all_tied_weights_keys", None) or {}).items():
            target, source = (f"{prefix}.{target}", f"{prefix}.{source}") if prefix else (target, source)
            if target in state and source in state and torch.equal(state[target], state[source]):
                state[target] = state[source]
    return state


@contextlib.contextmanager
def gathered(root: nn.Module) -> Iterator[None]:
    """Every FSDP unit of the prepared model `root` unsharded (whole plain tensors on every process)
    for the duration, for calls into its parts outside the root's forward pass: sampling, scoring a
    rollout, held-out evaluations. Resharded on exit. Without FSDP it does nothing.

    A collective on entry (one all-gather per unit, in the same order everywhere): every process
    enters it the same number of times, around the whole sampling, not per decode step or per
    batch of its own prompts. Inside, no collective runs, so each process may decode its own
    number of steps. This is FSDP 2's own way (FSDPModule.unshard/reshard; TRL's
    unwrap_model_for_generation does the same): without it, a block's forward hook all-gathers
    and reshards around each call and the LM's embedding sees a plain tensor beside DTensor
    weights ("aten.embedding.default got mixed torch.Tensor and DTensor").

    Costs the whole model's memory on each process while it lasts."""
    from torch.distributed.fsdp import FSDPModule

    units = [unit for unit in root.modules() if isinstance(unit, FSDPModule)]
    if not units:
        yield
        return
    # FSDP takes the first unit to run forward as its root: were a block to run first (sampling
    # before any training step), the real root could not run afterwards. Initialise it as the root.
    root._get_fsdp_state()._lazy_init()
    # the blocks' forward hooks would reshard after each call (and all-gather again at the next
    # decode step): kept unsharded until exit, then each unit's own setting restored
    kept = []
    for unit in units:
        unit.unshard()
        state = unit._get_fsdp_state()
        kept.append((state, state._auto_reshard_after_forward, [group.post_forward_mesh_info for group in state._fsdp_param_groups]))
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for (state, auto, infos), unit in zip(kept, units):
            state._auto_reshard_after_forward = auto
            for group, info in zip(state._fsdp_param_groups, infos):
                group.post_forward_mesh_info = info
            unit.reshard()

