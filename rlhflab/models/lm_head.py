"""The LM head as a plain `hidden @ weight.T`, so losses can skip materialising the logits."""

from __future__ import annotations

import torch
from torch import nn

from rlhflab.ops.lm_loss import next_token_targets, token_nll_sum
from rlhflab.ops.token_logprobs import token_logprobs


def head_weight(lm: nn.Module) -> torch.Tensor | None:
    """The LM head's weight (V, H) when the head is exactly `hidden @ weight.T`, else None.

    A head with a bias, a LoRA adapter (target_modules naming lm_head) or hooks is not, and
    goes through the module instead."""
    head = lm.get_output_embeddings()
    if type(head) is nn.Linear and head.bias is None and not head._forward_hooks and not head._forward_pre_hooks:
        return head.weight
    return None


def next_token_nll(lm: nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(sum of next-token NLLs in nats, fp32 scalar with grad; how many tokens) from the LM's last
    hidden states (B, T, H), as `token_nll_sum(lm_head(hidden), ...)` gives it (same masking:
    position t counts when t and t + 1 are real tokens).

    With a plain linear head the log-probs come chunk by chunk from the hidden states
    (rlhflab/ops/token_logprobs.py): no (B, T, V) logits, their fp32 copy or their gradient exist
    (an SFT batch of 16 x 64 tokens of SmolLM2 had 200 MB of each; an evaluation batch of 64 x 64,
    800 MB). Other heads take the plain path."""
    weight = head_weight(lm)
    if weight is None:
        return token_nll_sum(lm.get_output_embeddings()(hidden), input_ids, attention_mask)
    targets, valid = next_token_targets(input_ids, attention_mask)
    # Every position, padding too, then masked: the chunks' temporaries then have the batch's fixed
    # shape. Selecting the real positions first made their row count change at every batch, and
    # glibc, told to keep freed memory (rlhflab/malloc.py), fragmented its heap on the new sizes:
    # the default SFT stage peaked at 6.5 GB instead of 3.5.
    logprobs, _ = token_logprobs(hidden[:, :-1], weight, targets)
    return -logprobs[valid].sum(), int(valid.sum())
