"""Count-based language-model baselines that a trained LM's validation perplexity should beat."""

from __future__ import annotations

from collections.abc import Sequence

BIGRAM_WEIGHT = 0.7  # lambda of the interpolated bigram; fixed, not tuned on validation


def ngram_perplexities(
    train_ids: Sequence[int],
    validation_ids: Sequence[int],
    vocab_size: int,
    *,
    bigram_weight: float = BIGRAM_WEIGHT,
) -> dict:
    """Validation perplexity of an add-one unigram and an interpolated bigram fitted on train_ids.

    Unigram (Laplace): P(w) = (c(w) + 1) / (N + V), N training tokens, V = vocab_size.
    Bigram (Jelinek & Mercer 1980 interpolation, as in Jurafsky & Martin, SLP3 §3.5):
    P(w | u) = lambda * c(u, w) / c(u) + (1 - lambda) * P(w), with lambda = bigram_weight
    (0.7, fixed: nothing is tuned on validation); for a context u never seen in training
    (c(u) = 0) the bigram falls back to P(w). c(u) counts u as the first token of a training
    pair. The first validation token has no context and is scored with P(w) by both models.
    Perplexity = exp(-mean natural-log probability) over all M validation tokens.

    Ids are ints in [0, vocab_size) (lists, tuples, numpy or torch 1-D). Returns
    {"unigram": ppl, "bigram": ppl, "bigram_weight": lambda, "tokens": {"train": N,
    "validation": M}}. Raises ValueError for empty inputs, out-of-range ids, or a weight
    outside [0, 1]. Counting is vectorised (bincount, unique on pair codes u * V + w).
    """
    import numpy as np

    if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer (got {vocab_size!r})")
    if not 0.0 <= bigram_weight <= 1.0:
        raise ValueError(f"bigram_weight must be in [0, 1] (got {bigram_weight})")
    vocab = int(vocab_size)
    train = _ids(train_ids, "train_ids", vocab)
    valid = _ids(validation_ids, "validation_ids", vocab)

    counts = np.bincount(train, minlength=vocab).astype(np.float64)  # (V,)
    unigram = (counts + 1.0) / (train.size + vocab)  # (V,) add-one
    uni_valid = unigram[valid]  # (M,)

    # bigram counts as sorted unique pair codes u * V + w: memory O(distinct pairs), not V^2
    codes, pair_counts = np.unique(train[:-1] * vocab + train[1:], return_counts=True)
    context_counts = np.bincount(train[:-1], minlength=vocab).astype(np.float64)  # (V,) c(u)
    prev, nxt = valid[:-1], valid[1:]  # (M - 1,)
    wanted = prev * vocab + nxt
    pair = np.zeros(wanted.size)  # (M - 1,) c(u, w)
    if codes.size:  # a single training token has no pairs
        where = np.minimum(np.searchsorted(codes, wanted), codes.size - 1)
        hit = codes[where] == wanted
        pair[hit] = pair_counts[where[hit]]
    context = context_counts[prev]
    seen = context > 0
    ml = np.divide(pair, context, out=np.zeros_like(pair), where=seen)  # P_ML(w | u), 0 if u unseen
    weight = np.where(seen, bigram_weight, 0.0)
    bi_valid = np.concatenate([uni_valid[:1], weight * ml + (1.0 - weight) * uni_valid[1:]])  # (M,)

    return {
        "unigram": _perplexity(uni_valid),
        "bigram": _perplexity(bi_valid),
        "bigram_weight": float(bigram_weight),
        "tokens": {"train": int(train.size), "validation": int(valid.size)},
    }


def _ids(values: Sequence[int], name: str, vocab: int):
    import numpy as np

    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of token ids (got shape {array.shape})")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids (got dtype {array.dtype})")
    array = array.astype(np.int64)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab:
        raise ValueError(f"{name} has ids outside [0, {vocab}) (min {low}, max {high}); check vocab_size")
    return array


def _perplexity(probs) -> float:
    import numpy as np

    return float(np.exp(-np.mean(np.log(probs))))
