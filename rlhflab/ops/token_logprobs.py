"""Token log-probs (and entropy) straight from hidden states, without materialising the logits.

For hidden states h (N, H), the LM head weight W (V, H), labels y (N,) and a temperature T:

    z = h W^T / T                       (N, V) logits over the vocabulary
    log p(y) = z[y] - logsumexp(z)      (N,)   nats
    entropy = logsumexp(z) - sum_v p_v z_v   (N,)   nats, p = softmax(z)

The rows are processed in chunks, so no (N, V) fp32 tensor for the whole batch ever exists
(a default PPO scoring pass is 1,536 rows x 49,152 vocabulary ids: 302 MB per fp32 copy, and the
plain path made several: the logits, their logsumexp, and in training their gradient).

Gradient: the softmax-cross-entropy gradient, d log p(y) / d z = onehot(y) - softmax(z)
(e.g. Goodfellow, Bengio, Courville, Deep Learning, section 6.2.2.3), so with the upstream
gradient g (N,) of the log-probs:

    grad_logits = g * (onehot(y) - p) / T      (N, V), per chunk
    grad_h = grad_logits @ W                   (N, H)
    grad_W = grad_logits^T @ h                 (V, H), only when W requires grad

The logits are computed as the plain path computes them (`lm_head(h).float() / T`): one GEMM in
the autocast dtype when autocast is on (bf16 on CPU), else in the inputs' dtype, then fp32 for
every softmax step. The gradient GEMMs run in the same dtype, as autograd runs them for a linear
layer. Backward reuses the forward's logits (kept in the GEMM's dtype: 2 bytes per entry in
bf16, half of the plain path's fp32 copy) while they fit in `keep_logits_bytes`, and recomputes
each chunk's GEMM beyond that.
"""

from __future__ import annotations

import weakref

import torch

# Rows per chunk: at SmolLM2's 49,152-id vocabulary 512 rows are ~100 MB of fp32 logits per
# temporary, and the GEMM at 512 rows already runs near its large-batch rate.
CHUNK_ROWS = 512
# Logits kept for backward instead of recomputing their GEMM (a PPO minibatch of 16 x 24 tokens
# in bf16 is 38 MB); above this the GEMM is recomputed in backward.
KEEP_LOGITS_BYTES = 512 * 2**20


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype `F.linear(hidden, weight)` runs in here: autocast's, if it is on, else the inputs'."""
    kind = hidden.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return torch.promote_types(hidden.dtype, weight.dtype)


class _CastCache:
    """The last weight cast to a GEMM dtype, kept while that weight is alive and unchanged.

    A PPO update calls token_logprobs once per minibatch with the same frozen LM head (SmolLM2's
    is tied to the 28 M-entry embedding): casting it to bf16 at every call cost 9 ms each, 74 ms
    of a 1.8 s update on the 2-core host. A weight that changes in place (an optimizer step on a
    trainable head) bumps its version counter, which invalidates the entry."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._ref: weakref.ref | None = None
        self._cast: torch.Tensor | None = None

    def get(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if weight.dtype == dtype:
            return weight.detach()
        key = (weight._version, dtype, weight.data_ptr(), weight.shape)
        if self._ref is None or self._ref() is not weight or self._key != key:
            self._cast = None  # free the old copy before making the new one
            self._cast = weight.detach().to(dtype)
            self._ref, self._key = weakref.ref(weight), key
        return self._cast


_CAST = _CastCache()


def _softmax_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for the softmax math, or fp64 when the GEMM ran in fp64 (gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def _shifted(logits: torch.Tensor, shift: torch.Tensor, temperature: float) -> torch.Tensor:
    """A fresh fp32 (c, V) tensor float(logits) / T - shift, shift (c, 1) fp32, in as few passes as possible.

    The fp32 math is the plain path's (`logits.float() / T`, then subtract); with T = 1 the
    upcast and the subtraction are one pass (bf16 - fp32 computes in fp32)."""
    if temperature == 1.0:  # x / 1.0 is x to the bit: skip a pass over (rows, V)
        return torch.sub(logits, shift)
    acc = _softmax_dtype(logits.dtype)
    z = logits.to(acc).div_(temperature) if logits.dtype != acc else torch.div(logits, temperature)
    return z.sub_(shift)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, temperature, dtype, chunk_rows, want_entropy, keep_logits):
        n = hidden.shape[0]
        device = hidden.device
        acc = _softmax_dtype(dtype)
        logprobs = torch.empty(n, dtype=acc, device=device)
        entropy = torch.empty(n, dtype=acc, device=device) if want_entropy else None
        lse_all = torch.empty(n, dtype=acc, device=device)
        kept = []
        with torch.autocast(device.type, enabled=False):
            w = _CAST.get(weight, dtype)  # autocast would re-cast the frozen weight at every call
            for start in range(0, n, chunk_rows):
                stop = min(start + chunk_rows, n)
                logits = hidden[start:stop].to(dtype) @ w.T  # (c, V) in the GEMM's dtype
                if keep_logits:
                    kept.append(logits)
                # logsumexp's shift, the row maximum (of the GEMM's output: max commutes with the exact
                # upcast and with dividing by T > 0), keeps exp finite for any logit scale
                top = logits.amax(dim=1, keepdim=True).to(acc)
                if temperature != 1.0:
                    top = top / temperature
                d = _shifted(logits, top, temperature)  # (c, V) z - max z
                picked = logits.gather(1, labels[start:stop].unsqueeze(1)).to(acc)  # z[y], as the plain path has it
                if temperature != 1.0:
                    picked = picked / temperature
                e = torch.exp(d) if want_entropy else d.exp_()  # exp(z - max z)
                total = e.sum(dim=1, keepdim=True)
                log_total = total.log()
                lse = top + log_total  # (c, 1) logsumexp(z)
                lse_all[start:stop] = lse.squeeze(1)
                logprobs[start:stop] = (picked - lse).squeeze(1)
                if want_entropy:
                    # H = -sum p log p with p = e / total, log p = d - log total:
                    # H = log total - sum(e * d) / total (row-wise dot products, no (c, V) temporary;
                    # 3x faster than the same as a bmm of (c, 1, V) x (c, V, 1))
                    dot = torch.linalg.vecdot(e, d).unsqueeze(1)
                    entropy[start:stop] = (log_total - dot / total).squeeze(1)
                del d, e
        ctx.temperature, ctx.dtype, ctx.chunk_rows = temperature, dtype, chunk_rows
        # Saved (not ctx attributes) so that autograd frees them once backward has run.
        ctx.keep_logits = keep_logits
        ctx.save_for_backward(hidden, weight, labels, lse_all, w, *kept)
        if entropy is None:
            entropy = torch.zeros(0, dtype=acc, device=device)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):
        hidden, weight, labels, lse_all, w, *kept = ctx.saved_tensors
        T, dtype, chunk_rows = ctx.temperature, ctx.dtype, ctx.chunk_rows
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = _softmax_dtype(dtype)
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        minus_g = grad_logprobs.to(acc).div(-T).unsqueeze(1)  # (N, 1): d loss / d logits = -g / T * (p - onehot)
        with torch.autocast(hidden.device.type, enabled=False):
            for i, start in enumerate(range(0, hidden.shape[0], chunk_rows)):
                stop = min(start + chunk_rows, hidden.shape[0])
                h = hidden[start:stop].to(dtype)
                logits = kept[i] if ctx.keep_logits else h @ w.T
                p = _shifted(logits, lse_all[start:stop].unsqueeze(1), T).exp_()  # softmax(z) in fp32, as in forward
                y = labels[start:stop].unsqueeze(1)
                p.scatter_add_(1, y, p.new_full(y.shape, -1.0))  # p - onehot, in fp32 (no cancellation in bf16)
                # times -g / T, written straight in the GEMM's dtype (fp32 math, one rounding on the store)
                grad_logits = torch.mul(p, minus_g[start:stop], out=torch.empty(p.shape, dtype=dtype, device=p.device))
                del p
                if need_h:
                    grad_h[start:stop] = (grad_logits @ w).to(hidden.dtype)
                if need_w:
                    grad_w += grad_logits.T @ h
                del grad_logits
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, *,
                   entropy: bool = False, chunk_rows: int = CHUNK_ROWS,
                   keep_logits_bytes: int = KEEP_LOGITS_BYTES) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(hidden @ weight.T / temperature)[labels] in fp32, chunk by chunk, and optionally the entropy.

    hidden (N, H) fp32 or bf16 (any leading shape is flattened: (..., H) with labels (...)),
    weight (V, H) (the LM head, tied to the embeddings in SmolLM2; may require grad), labels (N,)
    integer ids in [0, V) everywhere (padding included; mask the result instead).
    Returns (logprobs (N,) fp32 (fp64 for fp64 inputs) nats, differentiable w.r.t. hidden and weight; entropy (N,) fp32
    nats without grad, or None unless `entropy=True`). The GEMM runs in autocast's dtype when
    autocast is on, as `lm_head(hidden)` would. Raises ValueError on mismatched shapes, a
    non-positive temperature or chunk size.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"token_logprobs: hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"token_logprobs: weight {tuple(weight.shape)} is not (V, {hidden.shape[-1]})")
    if not temperature > 0 or chunk_rows < 1:
        raise ValueError(f"token_logprobs needs temperature > 0 and chunk_rows >= 1, got {temperature}, {chunk_rows}")
    shape = labels.shape
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1).long()
    dtype = compute_dtype(hidden, weight)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    keep = grad and flat_h.shape[0] * weight.shape[0] * torch.empty((), dtype=dtype).element_size() <= keep_logits_bytes
    logprobs, ent = _TokenLogprobs.apply(flat_h, weight, flat_y, float(temperature), dtype, int(chunk_rows), entropy, keep)
    return logprobs.reshape(shape), ent.reshape(shape) if entropy else None
