"""token_nll_sum and perplexity against values worked out by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhflab.ops.lm_loss import perplexity, token_nll_sum


def log_softmax_at(row: list[float], index: int) -> float:
    """log p(index) for one row of logits, with math only."""
    return row[index] - math.log(sum(math.exp(x) for x in row))


LOGITS_A = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]
IDS_A = [0, 1, 2]
LOGITS_B = [[0.3, -0.2, 1.5], [4.0, 0.0, -4.0], [0.1, 0.2, 0.3]]
IDS_B = [2, 0, 1]


def test_single_sequence_matches_hand_computation():
    logits = torch.tensor([LOGITS_A])
    ids = torch.tensor([IDS_A])
    mask = torch.ones(1, 3, dtype=torch.long)
    nll, count = token_nll_sum(logits, ids, mask)
    # position 0 predicts ids[1] = 1, position 1 predicts ids[2] = 2; the last position predicts nothing
    expected = -(log_softmax_at(LOGITS_A[0], 1) + log_softmax_at(LOGITS_A[1], 2))
    assert count == 2
    assert nll.item() == pytest.approx(expected, rel=1e-6)
    # a number worked out on paper: -log(e^2/(e+e^2+e^.5)) - log(e^3/(1+e^-1+e^3))
    assert nll.item() == pytest.approx(0.46437 + 0.06588, abs=1e-4)


def test_batch_of_two_sums_both_rows():
    logits = torch.tensor([LOGITS_A, LOGITS_B])
    ids = torch.tensor([IDS_A, IDS_B])
    mask = torch.ones(2, 3, dtype=torch.long)
    nll, count = token_nll_sum(logits, ids, mask)
    expected = -(
        log_softmax_at(LOGITS_A[0], 1)
        + log_softmax_at(LOGITS_A[1], 2)
        + log_softmax_at(LOGITS_B[0], 0)
        + log_softmax_at(LOGITS_B[1], 1)
    )
    assert count == 4
    assert nll.item() == pytest.approx(expected, rel=1e-6)


def test_padding_never_counts_even_when_pad_id_equals_a_real_id():
    logits = torch.tensor([LOGITS_A, LOGITS_B])
    # row B is right-padded after two tokens, and its pad id (0) is a real token id in row A
    ids = torch.tensor([IDS_A, [2, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    nll, count = token_nll_sum(logits, ids, mask)
    expected = -(log_softmax_at(LOGITS_A[0], 1) + log_softmax_at(LOGITS_A[1], 2) + log_softmax_at(LOGITS_B[0], 0))
    assert count == 3
    assert nll.item() == pytest.approx(expected, rel=1e-6)


def test_left_padding_is_skipped_too():
    logits = torch.tensor([LOGITS_A])
    ids = torch.tensor([[1, 1, 2]])
    mask = torch.tensor([[0, 1, 1]])
    nll, count = token_nll_sum(logits, ids, mask)
    assert count == 1
    assert nll.item() == pytest.approx(-log_softmax_at(LOGITS_A[1], 2), rel=1e-6)


def test_all_padding_gives_zero_and_zero_count():
    nll, count = token_nll_sum(torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    assert count == 0
    assert nll.item() == 0.0


def test_single_real_token_has_no_pair():
    nll, count = token_nll_sum(torch.randn(1, 3, 3), torch.tensor([[1, 0, 0]]), torch.tensor([[1, 0, 0]]))
    assert count == 0
    assert nll.item() == 0.0


def test_returns_float32_sum_for_bf16_logits_and_int_count():
    logits = torch.tensor([LOGITS_A]).to(torch.bfloat16)
    nll, count = token_nll_sum(logits, torch.tensor([IDS_A]), torch.ones(1, 3, dtype=torch.long))
    assert nll.dtype == torch.float32
    assert type(count) is int
    expected = -(log_softmax_at(LOGITS_A[0], 1) + log_softmax_at(LOGITS_A[1], 2))
    assert nll.item() == pytest.approx(expected, abs=2e-2)


def test_gradient_flows_only_through_counted_positions():
    logits = torch.tensor([LOGITS_A, LOGITS_B], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    nll, _ = token_nll_sum(logits, torch.tensor([IDS_A, [2, 0, 0]]), mask)
    nll.backward()
    grad = logits.grad
    assert torch.all(grad[:, 2] == 0)  # the last position predicts nothing
    assert torch.all(grad[1, 1] == 0)  # predicts a padded token
    assert torch.any(grad[1, 0] != 0)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=4),
    extra=st.integers(min_value=1, max_value=4),
    pad_id=st.integers(min_value=0, max_value=4),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_extra_right_padding_changes_nothing_and_count_is_valid_pairs(lengths, extra, pad_id, seed):
    gen = torch.Generator().manual_seed(seed)
    batch, width, vocab = len(lengths), max(max(lengths), 1), 5
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros(batch, width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(0, vocab, (n,), generator=gen)
        mask[i, :n] = 1
    logits = torch.randn(batch, width, vocab, generator=gen)
    nll, count = token_nll_sum(logits, ids, mask)
    assert count == sum(max(n - 1, 0) for n in lengths)

    # wider batch: extra columns of padding with arbitrary logits and the pad id
    wide_ids = torch.cat([ids, torch.full((batch, extra), pad_id, dtype=torch.long)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(batch, extra, dtype=torch.long)], dim=1)
    wide_logits = torch.cat([logits, 100 * torch.randn(batch, extra, vocab, generator=gen)], dim=1)
    wide_nll, wide_count = token_nll_sum(wide_logits, wide_ids, wide_mask)
    assert wide_count == count
    assert wide_nll.item() == pytest.approx(nll.item(), rel=1e-6, abs=1e-6)

    # and it equals the sum of each row scored on its own, unpadded
    per_row = 0.0
    for i, n in enumerate(lengths):
        if n >= 2:
            row_nll, _ = token_nll_sum(logits[i : i + 1, :n], ids[i : i + 1, :n], torch.ones(1, n, dtype=torch.long))
            per_row += row_nll.item()
    assert nll.item() == pytest.approx(per_row, rel=1e-5, abs=1e-5)


def test_uniform_logits_give_log_vocab_per_token_and_perplexity_vocab():
    vocab = 7
    logits = torch.zeros(2, 5, vocab)
    ids = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.long)
    nll, count = token_nll_sum(logits, ids, mask)
    assert count == 8
    assert nll.item() / count == pytest.approx(math.log(vocab), rel=1e-6)
    assert perplexity(nll.item() / count) == pytest.approx(vocab, rel=1e-6)


def test_perplexity_values():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(5)) == pytest.approx(5.0, rel=1e-12)
    assert perplexity(1.0) == pytest.approx(math.e)


@pytest.mark.parametrize("huge", [710.0, 1e6, 1e300, float("inf")])
def test_perplexity_does_not_overflow(huge):
    value = perplexity(huge)
    assert math.isfinite(value)
    assert value >= perplexity(699.0)
