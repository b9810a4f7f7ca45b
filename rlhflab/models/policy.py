"""The RL policy: a causal LM with a value head, and its frozen reference policy.

The reference is never a second full copy when it need not be; three small classes, one
interface (`logprobs`, of the response tokens):
- SharedFrozenBlocks (trainable decoder blocks, the CPU default): blocks below the first
  trainable one are frozen and identical in policy and reference, so their output is computed
  once per rollout and shared; the reference keeps only a frozen copy of the top blocks;
- AdapterOff (LoRA): the same weights with the adapter switched off;
- FrozenCopy (all weights): a frozen deep copy (the only case that doubles the memory).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from rlhflab.models.causal_lm import with_lora
from rlhflab.ops.ppo import entropy_per_token, logprobs_from_logits
from rlhflab.models.encoding import LMWrapper
from rlhflab.models.lm_head import head_weight
from rlhflab.ops.token_logprobs import token_logprobs
from rlhflab.models.blocks import (
    cache_is_exact,
    disable_dropout,
    first_trainable_block,
    freeze_all_but_blocks,
    last_hidden,
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
    reference: "Reference"
    lora: bool

    @property
    def lm(self) -> nn.Module:
        """The transformers model underneath (with LoRA layers injected, if any)."""
        return self.model.get_base_model() if self.lora else self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())


class PolicyWithValue(LMWrapper):
    """The trainable part (LM + value head) as one Module: checkpoints hold both, and
    `accelerator.prepare` (DDP) wraps this forward so gradients are synchronised."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.model, self.value_head = policy.model, policy.value_head
        self._policy = [policy]  # a list: not registered as a submodule twice

    def forward(self, input_ids, attention_mask, response_start: int, temperature: float, lower=None):
        """-> (logprobs (B, R) fp32 with grad, entropy (B, R) fp32 without, values (B, R)) of the response tokens.

        The log-probs are computed here, not by the caller, so that everything carrying a gradient
        (the LM head too, when it trains) runs inside the forward DDP wraps."""
        out = policy_forward(self._policy[0], input_ids, attention_mask, response_start, temperature, lower, entropy=True)
        return out.logprobs, out.entropy, out.values


class Reference:
    """The frozen reference policy: log-probs (B, R) of the response tokens."""

    description = ""

    def to(self, device) -> "Reference":
        return self

    def logprobs(self, policy: Policy, input_ids, attention_mask, response_start: int, temperature: float,
                 lower: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class SharedFrozenBlocks(Reference):
    """The policy's own frozen lower blocks (their output `lower` is shared) + a frozen copy of the top."""

    description = "shared frozen blocks + copy of the trainable top"

    def __init__(self, top: nn.ModuleList):
        self.top = top

    def to(self, device) -> "SharedFrozenBlocks":
        self.top.to(device)
        return self

    def logprobs(self, policy, input_ids, attention_mask, response_start, temperature, lower):
        hidden = last_hidden(policy.lm, input_ids, attention_mask, position_ids_for(attention_mask),
                             first=policy.first, hidden=lower, top_blocks=self.top)
        return response_logprobs(policy.lm, hidden, input_ids, response_start, temperature)[0]


class AdapterOff(Reference):
    """LoRA: the same weights with the adapter switched off (no second copy)."""

    description = "adapter switched off"

    def logprobs(self, policy, input_ids, attention_mask, response_start, temperature, lower):
        with policy.model.disable_adapter():
            hidden = last_hidden(policy.lm, input_ids, attention_mask, position_ids_for(attention_mask))
            # inside: an adapter on the LM head (target_modules naming it) must be off here too
            return response_logprobs(policy.lm, hidden, input_ids, response_start, temperature)[0]


class FrozenCopy(Reference):
    """A frozen deep copy of the starting model."""

    description = "frozen full copy"

    def __init__(self, model: nn.Module):
        self.model = model

    def to(self, device) -> "FrozenCopy":
        self.model.to(device)
        return self

    def logprobs(self, policy, input_ids, attention_mask, response_start, temperature, lower):
        hidden = last_hidden(self.model, input_ids, attention_mask, position_ids_for(attention_mask))
        return response_logprobs(self.model, hidden, input_ids, response_start, temperature)[0]


def build_policy(model: nn.Module, trainable, lora_cfg=None, *, cache_frozen: bool = True, probe=None) -> Policy:
    """Freeze what does not train and set up the cheapest exact reference."""
    disable_dropout(model)  # log-probs must not depend on a dropout mask
    model.config.use_cache = False
    value_head = ValueHead(model.config.get_text_config().hidden_size)
    if trainable == "lora":
        # No LoRA dropout: log-probs must not depend on a dropout mask.
        return Policy(with_lora(model, lora_cfg, dropout=0.0), value_head, None, AdapterOff(), lora=True)
    if trainable == "all":
        model.requires_grad_(True)
        return Policy(model, value_head, None, FrozenCopy(_frozen(model)), lora=False)
    freeze_all_but_blocks(model, resolve_block_indices(trainable, len(transformer_blocks(model)), "rl.trainable"))
    first = first_trainable_block(model)
    if first is not None and probe is not None and not cache_is_exact(model, first, *probe):
        first = None
    if first is None or not cache_frozen:
        # The frozen lower blocks cannot be shared: keep a full frozen copy as the reference.
        return Policy(model, value_head, None, FrozenCopy(_frozen(model)), lora=False)
    top = _frozen(nn.ModuleList(list(transformer_blocks(model))[first:]))
    return Policy(model, value_head, first, SharedFrozenBlocks(top), lora=False)


def _frozen(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).requires_grad_(False).eval()


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class ForwardOut:
    logprobs: torch.Tensor  # (B, R) fp32: log softmax(logits / temperature) of each response token
    entropy: torch.Tensor | None  # (B, R) fp32 nats of that softmax, no grad; None unless asked for
    values: torch.Tensor  # (B, R)


def shared_lower(policy: Policy, input_ids, attention_mask) -> torch.Tensor | None:
    """Hidden states entering the first trainable block, shared by policy and reference."""
    if policy.first is None:
        return None
    return lower_hidden(policy.lm, policy.first, input_ids, attention_mask, position_ids_for(attention_mask))


def policy_forward(policy: Policy, input_ids, attention_mask, response_start: int, temperature: float,
                   lower: torch.Tensor | None = None, *, entropy: bool = False) -> ForwardOut:
    """Log-probs of the response tokens (and their entropy, if asked) and values at the positions that predict them.

    input_ids (B, T) = left-padded prompt (width `response_start`) + response (R = T -
    response_start tokens, the labels; padding included, mask the result). Only the R positions
    that predict response tokens go through the LM head, which is most of the cost of a small
    model's forward pass, and their (B, R, V) logits are never materialised (response_logprobs).
    """
    lm = policy.lm
    hidden = last_hidden(lm, input_ids, attention_mask, position_ids_for(attention_mask), first=policy.first, hidden=lower)
    logprobs, ent = response_logprobs(lm, hidden, input_ids, response_start, temperature, entropy=entropy)
    return ForwardOut(logprobs, ent, policy.value_head(hidden[:, response_start - 1 : -1]))


def response_logprobs(lm: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, response_start: int,
                      temperature: float, *, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs (B, R) fp32, entropy (B, R) fp32 or None) of the response tokens input_ids[:, response_start:].

    hidden (B, T, H) is the LM's last hidden state; position t predicts token t + 1. The log-probs
    are of softmax(lm_head(hidden) / temperature), computed chunk by chunk from the hidden states
    (rlhflab/ops/token_logprobs.py) so no (B, R, V) fp32 logits exist; a head that is not a plain
    linear map takes the plain path (full logits, then log_softmax).
    """
    labels = input_ids[:, response_start:]
    states = hidden[:, response_start - 1 : -1]
    weight = head_weight(lm)
    if weight is not None:
        return token_logprobs(states, weight, labels, temperature, entropy=entropy)
    logits = _head(lm, hidden, response_start, temperature)
    return logprobs_from_logits(logits, labels), entropy_per_token(logits.detach()) if entropy else None


def _head(lm: nn.Module, hidden: torch.Tensor, response_start: int, temperature: float) -> torch.Tensor:
    """LM-head logits (fp32, / temperature) at the positions that predict response tokens."""
    logits = lm.get_output_embeddings()(hidden[:, response_start - 1 : -1]).float()
    # x / 1.0 is x to the bit, but over (B, R, V) it reads and writes the whole tensor once more
    # (0.70 of 1.82 s of a default PPO step's scoring, and a second copy of the logits in memory).
    return logits if temperature == 1.0 else logits / temperature


@torch.no_grad()
def reference_logprobs(policy: Policy, input_ids, attention_mask, response_start: int, temperature: float,
                       lower: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R) fp32 log-probs of the response tokens input_ids[:, response_start:] under the frozen reference."""
    return policy.reference.logprobs(policy, input_ids, attention_mask, response_start, temperature, lower)
