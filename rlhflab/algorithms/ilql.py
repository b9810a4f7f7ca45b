"""Implicit language Q-learning (Snell et al. 2022) as a supervised objective over scored texts.

Every token of a text is an action taken in the state of the tokens before it; the text's reward
comes at its last token. One forward pass gives the LM's logits and, from the same last hidden
states, the Q, target-Q and V heads (rlhflab/models/ilql.py); `ilql_loss` (rlhflab/ops/ilql.py)
sums the TD, expectile, CQL and AWAC terms over real actions. After every optimizer step the
target Q heads move toward the online ones (Polyak averaging).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhflab.algorithms.supervised import Supervised, evaluation_chunks
from rlhflab.checkpoint import load_trainable_state
from rlhflab.engine.sharding import gathered
from rlhflab.models.blocks import top_forward
from rlhflab.models.encoding import EncodedSplit, LMWrapper
from rlhflab.models.ilql import IlqlHeads
from rlhflab.ops.ilql import ilql_loss

TERMS = ("loss", "q", "v", "cql", "awac")


class IlqlModule(LMWrapper):
    """The causal LM and its ILQL heads as one Module (DDP synchronises both): forward(rows of an
    EncodedSplit, with the frozen blocks' cached output when there is one) -> (logits (B, T, V),
    IlqlOut of the heads at every position, the target Qs at the next token only (B, T))."""

    def __init__(self, model: nn.Module, heads: IlqlHeads, first: int | None):
        super().__init__()
        self.model, self.heads, self.first = model, heads, first

    def forward(self, input_ids, attention_mask, hidden=None):
        captured: list[torch.Tensor] = []  # the LM head's input: the last hidden state, for any architecture
        handle = self.model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            if hidden is not None:
                logits = top_forward(self.model, self.first, hidden, input_ids, attention_mask).logits
            else:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            handle.remove()
        next_tokens = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)  # the last column's is never used
        return logits, self.heads(captured[0], next_tokens)


def rewards_at_last_token(attention_mask: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """(N, T−1) per-action rewards: each text's return (N,) on its last real action (the token
    ending the text), 0 elsewhere. Action t is token t + 1, chosen in the state of tokens 0..t."""
    actions = attention_mask[:, 1:]
    last = (actions.sum(-1) - 1).clamp(min=0)
    rewards = torch.zeros(actions.shape, dtype=torch.float32, device=attention_mask.device)
    rewards[torch.arange(len(returns), device=attention_mask.device), last] = returns.float().to(attention_mask.device)
    return rewards * actions


class IlqlObjective:
    """The ILQL loss over encoded splits of scored texts. `forward(split, rows)` runs an IlqlModule
    (make_forward of rlhflab/models/encoding.py); `rewards[name]` (N, T−1) holds the per-action rewards."""

    def __init__(self, forward, data: dict[str, EncodedSplit], rewards: dict[str, torch.Tensor], *, settings,
                 batch_size: int, model, runtime):
        self.forward, self.data, self.rewards, self.settings = forward, data, rewards, settings
        self.batch_size, self.model, self.runtime = batch_size, model, runtime

    def _terms(self, name: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        split, s = self.data[name], self.settings
        logits, out = self.forward(split, rows)
        return ilql_loss(tuple(q[:, :-1] for q in out.qs), tuple(q[:, :-1] for q in out.target_qs), out.v,
                         logits[:, :-1], split.input_ids[rows, 1:], self.rewards[name][rows], split.attention_mask[rows, 1:],
                         gamma=s.gamma, tau=s.tau, cql_scale=s.cql_scale, awac_scale=s.awac_scale, awac_beta=s.awac_beta,
                         q_target=s.q_target)

    def train_loss(self, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(the loss summed over the real actions of `rows`, their count): the Supervised contract."""
        terms = self._terms("train", rows)
        return terms["loss"], int(terms["count"])

    @torch.no_grad()
    def metrics(self, name: str) -> dict[str, float]:
        """Each term per action over the whole split (each process its share, summed before dividing)."""
        self.model.eval()
        device = self.data[name].input_ids.device
        rows = torch.arange(len(self.data[name]), device=device)[self.runtime.rank :: self.runtime.world_size]
        totals = torch.zeros(len(TERMS) + 1, dtype=torch.float64)
        chunks, counted = evaluation_chunks(rows, self.batch_size)
        # under FSDP whole weights: the processes' shares may take different numbers of forward passes,
        # and a sharded forward is a collective
        with gathered(self.model):
            for chunk in chunks:
                terms = self._terms(name, chunk)
                totals += counted * torch.tensor([float(terms[k]) for k in (*TERMS, "count")], dtype=torch.float64)
        totals = self.runtime.sum(totals.to(device)).cpu()
        count = max(float(totals[-1]), 1.0)
        return {**{k: float(totals[i]) / count for i, k in enumerate(TERMS)}, "actions": int(totals[-1])}


class Ilql(Supervised):
    """Supervised steps over the ILQL loss, each followed by the Polyak update of the target Q heads,
    which are part of the resumable state (they never train, so the checkpoint's trainable weights miss them)."""

    def __init__(self, *, heads: IlqlHeads, polyak: float, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.polyak = heads, polyak

    def step(self, step: int) -> dict[str, float]:
        record = super().step(step)
        self.heads.sync_targets(self.polyak)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "target_q_heads": {k: v.clone() for k, v in self.heads.target_q_heads.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_trainable_state(self.heads.target_q_heads, state["target_q_heads"])  # under FSDP: into the shards
