"""The benchmarks' yardstick: each phase as a fraction of this host's GEMM rate, measured in the same run.

Imported by the scripts next to it (`python benchmarks/ppo.py` puts benchmarks/ on sys.path).

- `flops_per_token(config)`: a model's forward FLOPs per token from its transformers config:
  the weight GEMMs of the blocks, the lm_head, and the attention scores for a context length.
- `gemm_ceiling(config, rows, dtype, device)`: the rate of those same weight GEMMs on this host,
  at `rows` rows (64 for a decode step of 64 sequences, the tokens of one forward otherwise).
- `pass_factors(model, ...)`: how many GEMM passes each block and the lm_head pay per token
  (1 forward, +1 input gradient, +1 weight gradient), from which parameters train.
- `Phase` / `phase_line`: "sampling 352 tok/s = 95 GFLOP/s = 12% of 780 GFLOP/s (...)".

Conventions (so that figures from two hosts or two commits compare):
- A FLOP is one multiply or one add: a (rows x n) @ (n x m) GEMM is 2 * rows * n * m.
- Work counts the real tokens only (no padding, no rows that already stopped): what padding
  and finished rows cost shows up as a lower fraction, because it is waste.
- A backward GEMM is judged at the forward GEMM rate at the same rows (it has the same FLOPs;
  its shapes are transposed).
- Attention scores (Q K^T and P V, 2 * 2 * ctx * width per token per block) count as work and
  are judged at the blocks' GEMM rate; norms, activations, softmax and the value head are not
  counted (they are memory-bound and small next to the GEMMs).
- The ceiling of a phase is the time its GEMMs would take at the measured rates; its % is that
  time over the measured time, so a phase whose parts run at different row counts (prefill and
  decode) is judged at each part's own rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from rlhflab.errors import RlhfLabError
from rlhflab.models.sampling import onednn_bf16

# Architectures whose blocks are q, k, v, o (k and v narrower with grouped-query attention) and a
# gated MLP (gate, up, down).
GATED_DECODERS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "olmo2", "granite")
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "mpnet", "deberta", "deberta-v2")


@dataclass(frozen=True)
class ModelFlops:
    """Forward FLOPs per token of one model. Shapes are (in_features, out_features, count per block)."""

    family: str
    layers: int
    attention_width: int  # heads x head_dim: the width of Q K^T and P V
    block_shapes: tuple[tuple[int, int, int], ...]
    head_shape: tuple[int, int] | None  # (hidden, vocab); None for an encoder (its classifier is negligible)
    context: float = 0.0  # the context length `attention` was asked for

    @property
    def per_block(self) -> float:
        """Weight-GEMM FLOPs per token of one block."""
        return float(sum(2 * n_in * n_out * count for n_in, n_out, count in self.block_shapes))

    @property
    def blocks(self) -> float:
        """Weight-GEMM FLOPs per token of all blocks."""
        return self.per_block * self.layers

    @property
    def lm_head(self) -> float:
        return float(2 * self.head_shape[0] * self.head_shape[1]) if self.head_shape else 0.0

    @property
    def attention(self) -> float:
        """Attention-score FLOPs per token over all blocks at `context` keys: 2 * 2 * ctx * width per block."""
        return self.attention_per_block(self.context) * self.layers

    def attention_per_block(self, context: float) -> float:
        return 4.0 * context * self.attention_width

    @property
    def total(self) -> float:
        return self.blocks + self.lm_head + self.attention

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every weight GEMM of one token's pass, (in, out, how many per token), the lm_head last."""
        merged: dict[tuple[int, int], int] = {}
        for n_in, n_out, count in self.block_shapes:
            merged[(n_in, n_out)] = merged.get((n_in, n_out), 0) + count * self.layers
        rows = [(n_in, n_out, count) for (n_in, n_out), count in merged.items()]
        return rows + ([(*self.head_shape, 1)] if self.head_shape else [])


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def flops_per_token(config, context: float = 0.0) -> ModelFlops:
    """Forward FLOPs per token of a transformers model, from its config.

    config: a transformers PretrainedConfig (a multimodal one is read through get_text_config()).
    context: keys each token attends to (for the attention-score FLOPs; 0 leaves them out).
    Covers Llama-style decoders (q, k, v, o with num_key_value_heads, gated MLP, lm_head of vocab x
    hidden, tied or not), GPT-2 and BERT-family encoders (q, k, v, o, two-layer MLP; the classifier
    and pooler, one row per sequence, are left out). Raises RlhfLabError for another architecture.
    """
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    kind = getattr(config, "model_type", "")
    if kind == "gpt2":
        hidden = config.n_embd
        inner = config.n_inner or 4 * hidden
        return ModelFlops("gpt2", config.n_layer, hidden,
                          ((hidden, 3 * hidden, 1), (hidden, hidden, 1), (hidden, inner, 1), (inner, hidden, 1)),
                          (hidden, config.vocab_size), context)
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = _get(config, "head_dim", default=hidden // heads)
    if kind in GATED_DECODERS:
        kv_heads = _get(config, "num_key_value_heads", default=heads)
        q, kv, inner = heads * head_dim, kv_heads * head_dim, config.intermediate_size
        shapes = ((hidden, q, 1), (hidden, kv, 2), (q, hidden, 1), (hidden, inner, 2), (inner, hidden, 1))
        return ModelFlops(kind, layers, q, shapes, (hidden, config.vocab_size), context)
    if kind in ENCODERS:
        inner = _get(config, "intermediate_size", "hidden_dim", default=4 * hidden)
        width = heads * head_dim
        shapes = ((hidden, width, 3), (width, hidden, 1), (hidden, inner, 1), (inner, hidden, 1))
        return ModelFlops(kind, layers, width, shapes, None, context)
    raise RlhfLabError(f"benchmarks/ceiling.py counts FLOPs of Llama-style decoders, GPT-2 and BERT-family "
                       f"encoders; not model_type {kind!r}.")


@dataclass
class Ceiling:
    """Measured GEMM rates (GFLOP/s) at one row count and dtype on this host."""

    rows: int
    dtype: torch.dtype
    device: str
    per_shape: dict[tuple[int, int], float]  # (in, out) -> GFLOP/s
    blocks_rate: float  # FLOP-weighted over one token's pass through the blocks' GEMMs
    head_rate: float  # the lm_head's (0 for an encoder)
    rate: float  # FLOP-weighted over the whole pass (blocks + lm_head)

    @property
    def label(self) -> str:
        return f"{str(self.dtype).replace('torch.', '').replace('bfloat16', 'bf16').replace('float32', 'fp32')} GEMM at {self.rows} rows"

    def seconds(self, block_flops: float, head_flops: float = 0.0) -> float:
        """Time the given FLOPs take at this ceiling (the blocks' and the lm_head's own rates)."""
        return block_flops / (self.blocks_rate * 1e9) + (head_flops / (self.head_rate * 1e9) if head_flops else 0.0)


def _gemm_rate(rows: int, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device, budget: float) -> float:
    """GFLOP/s of x (rows, n_in) @ W (n_out, n_in)^T after warm-up: the best of three timings of >= budget
    seconds, and in bf16 on a CPU with oneDNN's bf16 kernels the better of F.linear and oneDNN's linear
    on a weight reordered once into its own layout (what sampling runs: rlhflab/models/sampling.py),
    which is up to 1.3x faster at 64 rows: the ceiling is the faster way this host has."""
    cuda = device.type == "cuda"
    x = torch.randn(rows, n_in, dtype=dtype, device=device)
    w = torch.randn(n_out, n_in, dtype=dtype, device=device) * n_in ** -0.5
    rate = _linear_rate(torch.nn.functional.linear, x, w, torch.cuda.synchronize if cuda else (lambda: None), budget)
    if dtype == torch.bfloat16 and device.type == "cpu" and onednn_bf16():
        packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
        onednn = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")  # noqa: E731
        rate = max(rate, _linear_rate(onednn, x, packed, lambda: None, budget))
    return rate


def _linear_rate(linear, x: torch.Tensor, w: torch.Tensor, sync, budget: float) -> float:
    rows, n_in, n_out = x.shape[0], x.shape[1], w.shape[0]
    with torch.no_grad():
        for _ in range(2):  # kernel choice, oneDNN primitive cache, first touch of the output's pages
            linear(x, w)
        sync()
        calls = 1
        while True:  # double the calls until one timing lasts `budget` (timer and sync noise < 1%)
            elapsed = _timed(linear, x, w, calls, sync)
            if elapsed >= budget:
                break
            calls = max(calls * 2, int(calls * budget / max(elapsed, 1e-9) * 1.1))
        # A ceiling is what the host can do: the best of three timings, so that a neighbour's
        # burst on a shared machine lowers it less.
        best = min([elapsed] + [_timed(linear, x, w, calls, sync) for _ in range(2)])
    return 2.0 * rows * n_in * n_out * calls / best / 1e9


def _timed(linear, x, w, calls: int, sync) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        linear(x, w)
    sync()
    return time.perf_counter() - start


def gemm_ceiling(config, rows: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                 budget: float = 0.1) -> Ceiling:
    """Time F.linear at each of the model's own weight shapes with `rows` rows; FLOP-weighted rates.

    config: as for flops_per_token. rows: rows of activations per GEMM (>= 1). dtype: what the run
    computes in (torch.bfloat16 under bf16 autocast, torch.float32 otherwise). budget: seconds per
    timing, three timings per shape after warm-up (5 shapes for a Llama: about 2 s on a CPU, 4 in bf16). Returns a Ceiling whose
    rate is the FLOPs of one token's pass through all those GEMMs over the time they took.
    """
    if rows < 1:
        raise RlhfLabError(f"gemm_ceiling needs rows >= 1, not {rows}")
    from rlhflab.malloc import keep_freed_memory

    # As every stage does (idempotent): otherwise glibc serves each large output (the lm_head's,
    # 100+ MB) with a fresh mmap, and page faults halve the rate measured at 1,000+ rows.
    keep_freed_memory()
    device = torch.device(device)
    flops = flops_per_token(config)
    per_shape: dict[tuple[int, int], float] = {}
    block_flops = block_seconds = head_flops = head_seconds = 0.0
    shapes = flops.shapes()
    for index, (n_in, n_out, count) in enumerate(shapes):
        rate = per_shape.get((n_in, n_out)) or _gemm_rate(rows, n_in, n_out, dtype, device, budget)
        per_shape[(n_in, n_out)] = rate
        work = 2.0 * n_in * n_out * count
        if flops.head_shape and index == len(shapes) - 1:  # shapes() lists the lm_head last
            head_flops, head_seconds = work, work / (rate * 1e9)
        else:
            block_flops, block_seconds = block_flops + work, block_seconds + work / (rate * 1e9)
    return Ceiling(rows, dtype, str(device), per_shape,
                   blocks_rate=block_flops / block_seconds / 1e9,
                   head_rate=head_flops / head_seconds / 1e9 if head_seconds else 0.0,
                   rate=(block_flops + head_flops) / (block_seconds + head_seconds) / 1e9)


def run_dtype(precision: str) -> torch.dtype:
    """The GEMM dtype of a run: bf16 autocast -> bfloat16, fp16 -> float16, anything else float32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


# --- what a pass costs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PassFactors:
    """GEMM passes per token: 1 forward, +1 input gradient, +1 weight gradient; 0 for a skipped block."""

    blocks: tuple[int, ...]
    head: int

    def describe(self, head: bool = True) -> str:
        """'2 blocks x3, 28 blocks x0, lm_head x2' (head=False: a model without an lm_head)."""
        runs: list[str] = []
        for factor in sorted(set(self.blocks), reverse=True):
            n = self.blocks.count(factor)
            runs.append(f"{n} block{'s' * (n != 1)} x{factor}")
        return ", ".join(runs + ([f"lm_head x{self.head}"] if head else []))


def pass_factors(model: torch.nn.Module, *, train: bool, skip_below: int | None = None) -> PassFactors:
    """How many GEMM passes each block and the lm_head pay per token in one step.

    train: whether the step runs a backward. skip_below: blocks below this index are not run (their
    output is cached). Under train, a block pays +1 (input gradient) when any parameter at or
    below it trains (its own norms come before its GEMMs) and +1 (weight gradient) when its
    Linear weights train (LoRA adapters are small and not counted); the lm_head likewise.
    """
    from rlhflab.models.blocks import transformer_blocks

    blocks = transformer_blocks(model)
    below = any(p.requires_grad for p in model.get_input_embeddings().parameters())
    factors = []
    for index, block in enumerate(blocks):
        if skip_below is not None and index < skip_below:
            factors.append(0)
            continue
        if not train:
            factors.append(1)
            continue
        below = below or any(p.requires_grad for p in block.parameters())
        weights = [m.weight for name, m in block.named_modules()  # a LoRA adapter's own small Linears aside
                   if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D") and "lora_" not in name]
        factors.append(1 + int(below) + int(any(w.requires_grad for w in weights)))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_trains = head is not None and head.weight.requires_grad
    return PassFactors(tuple(factors), 1 if not train else 1 + int(below) + int(head_trains))


def work(flops: ModelFlops, factors: PassFactors, *, tokens: float, head_tokens: float,
         attention_keys: float) -> tuple[float, float]:
    """(blocks FLOPs, lm_head FLOPs) of one pass.

    tokens: real tokens through the blocks; head_tokens: real tokens through the lm_head;
    attention_keys: the sum over those tokens of the keys each attends to (causal: its position
    + 1; an encoder: its row's length). Attention has no weights: its backward is 2x its forward
    whenever the block runs a backward at all.
    """
    blocks = sum(factors.blocks) * flops.per_block * tokens
    attention = sum((3 if f >= 2 else f) for f in factors.blocks) * flops.attention_per_block(1.0) * attention_keys
    return blocks + attention, factors.head * flops.lm_head * head_tokens


def causal_keys(lengths: Sequence[int] | torch.Tensor) -> float:
    """Sum over the tokens of causal rows of the keys each token attends to (n (n + 1) / 2 per row)."""
    return float(sum(int(n) * (int(n) + 1) // 2 for n in lengths))


def encoder_keys(lengths: Sequence[int] | torch.Tensor) -> float:
    """Sum over the tokens of bidirectional rows of the keys each token attends to (n^2 per row)."""
    return float(sum(int(n) ** 2 for n in lengths))


# --- printing ----------------------------------------------------------------------------------

@dataclass
class Phase:
    """One timed phase: the tokens it produced, its time, and its work against the ceiling(s)."""

    name: str
    tokens: float  # real tokens it handled (for tok/s)
    seconds: float  # measured, all timed steps together
    flops: float  # work, all timed steps together
    ideal_seconds: float  # the same work at the measured GEMM rates
    ceiling: str  # which ceiling(s), e.g. "bf16 GEMM at 64 rows"
    steps: int = 1
    step_seconds: float | None = None  # one whole step, for the share column
    notes: list[str] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / self.seconds / 1e9

    @property
    def ceiling_gflops(self) -> float:
        return self.flops / self.ideal_seconds / 1e9

    @property
    def fraction(self) -> float:
        return self.ideal_seconds / self.seconds


def phase_line(phase: Phase, width: int = 38) -> str:
    """'<name> 352 tok/s  0.61 s/step  59% of step = 95 GFLOP/s = 12% of 780 GFLOP/s (<ceiling>, this host)'."""
    share = ""
    if phase.step_seconds:
        share = f"{phase.seconds / phase.steps:6.2f} s/step {phase.seconds / phase.steps / phase.step_seconds:4.0%} of step "
    return (f"{phase.name:<{width}}{phase.tokens / phase.seconds:8.0f} tok/s {share}= {phase.gflops:6.1f} GFLOP/s = "
            f"{phase.fraction:4.0%} of {phase.ceiling_gflops:6.1f} GFLOP/s ({phase.ceiling}, this host)")


def ceiling_header(flops: ModelFlops, name: str) -> str:
    return (f"{name}: {flops.blocks / 1e6:.1f} MFLOP/token in {flops.layers} blocks ({flops.per_block / 1e6:.2f} each)"
            + (f" + {flops.lm_head / 1e6:.1f} in the lm_head" if flops.lm_head else "")
            + " (forward; attention scores extra: 4 x keys x "
            + f"{flops.attention_width} per block)")


def ceiling_table(ceilings: Sequence[Ceiling]) -> list[str]:
    """One line per measured ceiling: the weighted rates and each shape's."""
    lines = []
    for c in ceilings:
        shapes = ", ".join(f"{n_in}x{n_out} {rate:.0f}" for (n_in, n_out), rate in c.per_shape.items())
        lines.append(f"  {c.label:<26} {c.rate:7.1f} GFLOP/s (blocks {c.blocks_rate:.1f}"
                     + (f", lm_head {c.head_rate:.1f}" if c.head_rate else "") + f"; {shapes})")
    return lines
