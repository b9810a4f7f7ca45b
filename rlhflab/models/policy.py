"""The PPO policy: a causal LM with a value head, and its frozen reference.

The reference model is never a second full copy when it need not be:
- trainable decoder blocks (the CPU default): blocks below the first trainable one are
  frozen and identical in policy and reference, so their output is computed once per
  rollout and shared; the reference keeps only a frozen copy of the top blocks;
- LoRA: the reference is the same weights with the adapter switched off;
- all weights: a frozen deep copy (the only case that doubles the memory).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from rlhflab.models.causal_lm import with_lora
from rlhflab.models.blocks import (
    cache_is_exact,
    disable_dropout,
    first_trainable_block,
    freeze_all_but_blocks,
    from_hidden,
    lower_hidden,
    resolve_block_indices,
    transformer_blocks,
)


class ValueHead(nn.Module):
    """Scalar value per position from the LM's last hidden state, in fp32.

    Initialised to zero: the first advantages are then the (whitened) rewards themselves,
    instead of noise from a random critic.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


@dataclass
class Policy:
    model: nn.Module  # the causal LM being trained (a peft model for LoRA)
    value_head: ValueHead
    first: int | None  # first trainable block when the lower blocks are frozen and shared
    reference_top: nn.ModuleList | None  # frozen copy of blocks[first:]
    reference_model: nn.Module | None  # frozen full copy (trainable=all)
    lora: bool

    @property
    def lm(self) -> nn.Module:
        """The transformers model underneath (with LoRA layers injected, if any)."""
        return self.model.get_base_model() if self.lora else self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())


def build_policy(model: nn.Module, trainable, lora_cfg=None, *, cache_frozen: bool = True, probe=None) -> Policy:
    """Freeze what does not train and set up the cheapest exact reference."""
    disable_dropout(model)  # log-probs must not depend on a dropout mask
    model.config.use_cache = False
    value_head = ValueHead(model.config.get_text_config().hidden_size)
    if trainable == "lora":
        # No LoRA dropout: log-probs must not depend on a dropout mask.
        return Policy(with_lora(model, lora_cfg, dropout=0.0), value_head, None, None, None, lora=True)
    if trainable == "all":
        model.requires_grad_(True)
        reference = copy.deepcopy(model).requires_grad_(False).eval()
        return Policy(model, value_head, None, None, reference, lora=False)
    freeze_all_but_blocks(model, resolve_block_indices(trainable, len(transformer_blocks(model)), "ppo.trainable"))
    first = first_trainable_block(model)
    if first is not None and probe is not None and not cache_is_exact(model, first, *probe):
        first = None
    blocks = transformer_blocks(model)
    if first is None or not cache_frozen:
        # The frozen lower blocks cannot be shared: keep a full frozen copy as the reference.
        reference = copy.deepcopy(model).requires_grad_(False).eval()
        return Policy(model, value_head, None, None, reference, lora=False)
    reference_top = copy.deepcopy(nn.ModuleList(list(blocks)[first:])).requires_grad_(False).eval()
    return Policy(model, value_head, first, reference_top, None, lora=False)


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _last_hidden(lm: nn.Module, input_ids, attention_mask, position_ids) -> torch.Tensor:
    base = lm.base_model
    return base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False).last_hidden_state


@dataclass
class ForwardOut:
    logits: torch.Tensor  # (B, R, V) over response positions, divided by the temperature, fp32
    values: torch.Tensor  # (B, R)


def shared_lower(policy: Policy, input_ids, attention_mask) -> torch.Tensor | None:
    """Hidden states entering the first trainable block, shared by policy and reference."""
    if policy.first is None:
        return None
    return lower_hidden(policy.lm, policy.first, input_ids, attention_mask, position_ids_for(attention_mask))


def policy_forward(policy: Policy, input_ids, attention_mask, response_start: int, temperature: float,
                   lower: torch.Tensor | None = None) -> ForwardOut:
    """Logits and values at the positions that predict response tokens.

    input_ids (B, T) = left-padded prompt (width `response_start`) + response. Only the R =
    T - response_start positions that predict response tokens go through the LM head, which
    is most of the cost of a small model's forward pass.
    """
    lm = policy.lm
    position_ids = position_ids_for(attention_mask)
    if lower is not None:
        with from_hidden(lm, policy.first, lower):
            hidden = _last_hidden(lm, input_ids, attention_mask, position_ids)
    else:
        hidden = _last_hidden(lm, input_ids, attention_mask, position_ids)
    hidden = hidden[:, response_start - 1 : -1]
    logits = lm.get_output_embeddings()(hidden).float() / temperature
    return ForwardOut(logits, policy.value_head(hidden))


@torch.no_grad()
def reference_logits(policy: Policy, input_ids, attention_mask, response_start: int, temperature: float,
                     lower: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R, V) logits of the frozen reference at the response positions."""
    position_ids = position_ids_for(attention_mask)
    if policy.lora:
        with policy.model.disable_adapter():
            hidden = _last_hidden(policy.lm, input_ids, attention_mask, position_ids)
        lm = policy.lm
    elif policy.reference_model is not None:
        lm = policy.reference_model
        hidden = _last_hidden(lm, input_ids, attention_mask, position_ids)
    else:
        lm = policy.lm
        with from_hidden(lm, policy.first, lower, policy.reference_top):
            hidden = _last_hidden(lm, input_ids, attention_mask, position_ids)
    hidden = hidden[:, response_start - 1 : -1]
    return lm.get_output_embeddings()(hidden).float() / temperature
