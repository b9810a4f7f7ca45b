"""The LM head's logits at the response positions, divided by the sampling temperature."""

import torch
from torch import nn

from rlhflab.models.policy import _head


class _LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 7, bias=False)

    def get_output_embeddings(self):
        return self.head


def test_temperature_one_gives_the_logits_to_the_bit_and_others_divide():
    torch.manual_seed(0)
    lm, hidden = _LM(), torch.randn(2, 5, 4)
    expected = lm.head(hidden[:, 2:-1])  # response_start 3: positions 2..3 predict tokens 3..4
    assert torch.equal(_head(lm, hidden, 3, 1.0), expected)
    torch.testing.assert_close(_head(lm, hidden, 3, 0.7), expected / 0.7, rtol=0, atol=0)
