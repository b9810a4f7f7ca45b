"""Length-grouped batches and trimmed rows (rlhflab/models/encoding.py), which the reward stage
trains and scores with: every row exactly once, deterministic given the seed, less padding, and
the same outputs as the untrimmed forward."""

from __future__ import annotations

import pytest
import torch

from rlhflab.errors import RlhfLabError
from rlhflab.models.encoding import EncodedSplit, length_grouped_batches, make_forward, row_lengths, take_rows


def _lengths(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 257, (n,), generator=torch.Generator().manual_seed(seed))


def _batches(lengths, batch_size, seed, **options):
    return length_grouped_batches(lengths, batch_size, torch.Generator().manual_seed(seed), **options)


@pytest.mark.parametrize("n, batch_size, megabatch", [(3000, 32, 50), (100, 7, 3), (5, 8, 50), (64, 32, 1), (1, 1, 1)])
def test_every_row_is_in_exactly_one_batch_of_the_plain_count_and_sizes(n, batch_size, megabatch):
    batches = _batches(_lengths(n), batch_size, seed=3, megabatch=megabatch)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(n))
    assert len(batches) == -(-n // batch_size)  # the step count Supervised plans with
    sizes = sorted(len(b) for b in batches)
    assert sizes == [n % batch_size or batch_size] + [batch_size] * (len(batches) - 1)


def test_same_seed_same_batches_other_seed_other_batches():
    lengths = _lengths(500)
    first, again, other = _batches(lengths, 16, 7), _batches(lengths, 16, 7), _batches(lengths, 16, 8)
    assert [b.tolist() for b in first] == [b.tolist() for b in again]
    assert [b.tolist() for b in first] != [b.tolist() for b in other]


def test_equal_lengths_still_give_a_seeded_shuffle():
    """Ties keep the random permutation's order (stable sort), so capped reviews are not batched
    in file order."""
    lengths = torch.full((256,), 256)
    first, other = _batches(lengths, 32, 0), _batches(lengths, 32, 1)
    assert [b.tolist() for b in first] != [b.tolist() for b in other]
    assert torch.cat(first).tolist() != list(range(256))


def test_grouped_batches_compute_far_fewer_padded_tokens_than_random_ones():
    lengths = _lengths(3000)

    def padded(batches):  # tokens computed when each batch is trimmed to its longest row
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    grouped = padded(_batches(lengths, 32, 0))
    random = padded(list(torch.randperm(3000, generator=torch.Generator().manual_seed(0)).split(32)))
    assert grouped < 0.6 * random
    assert grouped <= 1.05 * int(lengths.sum())  # nearly no padding left


@pytest.mark.parametrize("batch_size, megabatch", [(0, 50), (8, 0)])
def test_bad_sizes_are_refused(batch_size, megabatch):
    with pytest.raises(RlhfLabError, match="at least 1"):
        _batches(_lengths(10), batch_size, 0, megabatch=megabatch)


def _split(lengths: list[int], width: int, hidden: bool = False) -> EncodedSplit:
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = torch.randint(5, 50, (len(lengths), width)) * mask
    return EncodedSplit(ids, mask, torch.randn(len(lengths), width, 4) if hidden else None)


def test_take_rows_cuts_the_columns_to_the_longest_row_taken():
    split = _split([3, 9, 5, 2], width=12, hidden=True)
    assert row_lengths(split).tolist() == [3, 9, 5, 2]
    part = take_rows(split, torch.tensor([3, 0, 2]))
    assert part.input_ids.shape == part.attention_mask.shape == (3, 5)
    assert part.hidden.shape == (3, 5, 4)
    assert torch.equal(part.input_ids, split.input_ids[[3, 0, 2], :5])
    assert torch.equal(part.hidden, split.hidden[[3, 0, 2], :5])
    assert row_lengths(part).tolist() == [2, 3, 5]


def test_trimmed_forward_gives_the_untrimmed_classifier_scores(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from rlhflab.models.encoding import SplitForward

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1).eval()
    split = _split([4, 17, 9, 30, 1], width=40)
    rows = torch.tensor([0, 2, 4])
    forward = SplitForward(model, None)
    full = make_forward(forward, _no_autocast)(split, rows)
    trimmed = make_forward(forward, _no_autocast, trim=True)(split, rows)
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def _no_autocast():
    import contextlib

    return contextlib.nullcontext()
