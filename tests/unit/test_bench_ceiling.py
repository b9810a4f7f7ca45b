"""benchmarks/ceiling.py: FLOPs per token from a config (hand counts), the GEMM ceiling, pass factors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from rlhflab.errors import RlhfLabError

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "ceiling.py"


@pytest.fixture(scope="module")
def ceiling():
    # benchmarks/ is not a package: the scripts import it from their own folder, the test by path.
    spec = importlib.util.spec_from_file_location("bench_ceiling", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ceiling"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_ceiling", None)


def smollm2_135m():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       head_dim=64, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)


def test_smollm2_135m_matches_a_hand_count(ceiling):
    flops = ceiling.flops_per_token(smollm2_135m())
    # Per block: q and o 576x576, k and v 576x192 (3 of 9 heads), gate and up 576x1536, down 1536x576.
    per_block_params = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert per_block_params == 3_538_944
    assert flops.per_block == 2 * per_block_params
    assert flops.blocks == 2 * per_block_params * 30 == 212_336_640  # "about 212 MFLOP/token"
    assert flops.lm_head == 2 * 576 * 49152 == 56_623_104  # "about 57"
    assert flops.attention == 0  # no context asked for
    assert flops.total == pytest.approx(268.96e6, rel=1e-4)
    assert sorted(flops.shapes()) == sorted([(576, 576, 60), (576, 192, 60), (576, 1536, 60), (1536, 576, 30),
                                             (576, 49152, 1)])


def test_attention_scores_count_two_gemms_over_the_context(ceiling):
    flops = ceiling.flops_per_token(smollm2_135m(), context=100)
    assert flops.attention == 2 * 2 * 100 * 576 * 30  # Q K^T and P V, 9 heads x 64 wide, 30 blocks
    assert flops.total == flops.blocks + flops.lm_head + flops.attention


def test_minilm_and_gpt2_hand_counts(ceiling):
    from transformers import BertConfig, GPT2Config

    minilm = ceiling.flops_per_token(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                intermediate_size=1536, vocab_size=30522))
    assert minilm.per_block == 2 * (4 * 384 * 384 + 2 * 384 * 1536) == 3_538_944
    assert minilm.blocks == 6 * 3_538_944
    assert minilm.lm_head == 0 and minilm.head_shape is None  # a classifier: one row per sequence
    gpt2 = ceiling.flops_per_token(GPT2Config())  # GPT-2 small: 768 wide, 12 blocks
    assert gpt2.per_block == 2 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) == 14_155_776
    assert gpt2.lm_head == 2 * 768 * 50257


def test_an_unknown_architecture_is_refused(ceiling):
    from transformers import T5Config

    with pytest.raises(RlhfLabError, match="model_type 't5'"):
        ceiling.flops_per_token(T5Config())


def tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=64, vocab_size=100, tie_word_embeddings=True)


def test_gemm_ceiling_times_each_of_the_models_shapes(ceiling):
    result = ceiling.gemm_ceiling(tiny_llama(), rows=8, dtype=torch.float32, device="cpu", budget=0.005)
    assert set(result.per_shape) == {(32, 32), (32, 16), (32, 64), (64, 32), (32, 100)}
    assert all(rate > 0 for rate in result.per_shape.values())
    # FLOP-weighted over one token's pass: between the slowest and the fastest shape.
    # (to the last bit: the rates are ratios of sums, which round)
    assert min(result.per_shape.values()) * (1 - 1e-12) <= result.rate <= max(result.per_shape.values()) * (1 + 1e-12)
    assert result.head_rate == pytest.approx(result.per_shape[(32, 100)], rel=1e-12)
    assert result.label == "fp32 GEMM at 8 rows"
    # seconds() is the work over the rates: the whole pass at `rate` takes its FLOPs / rate.
    flops = ceiling.flops_per_token(tiny_llama())
    assert result.seconds(flops.blocks, flops.lm_head) == pytest.approx((flops.blocks + flops.lm_head) / (result.rate * 1e9))
    with pytest.raises(RlhfLabError):
        ceiling.gemm_ceiling(tiny_llama(), rows=0, dtype=torch.float32)


def test_pass_factors_follow_what_trains(ceiling):
    from transformers import LlamaForCausalLM

    from rlhflab.models.blocks import freeze_all_but_blocks

    model = LlamaForCausalLM(tiny_llama())
    assert ceiling.pass_factors(model, train=False).blocks == (1, 1, 1, 1)
    model.requires_grad_(True)
    everything = ceiling.pass_factors(model, train=True)
    assert everything.blocks == (3, 3, 3, 3) and everything.head == 3  # tied embeddings train too
    freeze_all_but_blocks(model, [2, 3])
    top = ceiling.pass_factors(model, train=True)
    # Frozen blocks below: forward only; trained ones: forward + input and weight gradients;
    # the frozen (tied) lm_head: forward + input gradient.
    assert top.blocks == (1, 1, 3, 3) and top.head == 2
    assert ceiling.pass_factors(model, train=True, skip_below=2).blocks == (0, 0, 3, 3)
    freeze_all_but_blocks(model, [1])
    assert ceiling.pass_factors(model, train=True).blocks == (1, 3, 2, 2)  # above a trained block: input gradient
    assert top.describe() == "2 blocks x3, 2 blocks x1, lm_head x2"
    assert top.describe(head=False) == "2 blocks x3, 2 blocks x1"


def test_work_counts_blocks_attention_and_head(ceiling):
    flops = ceiling.flops_per_token(tiny_llama())
    factors = ceiling.PassFactors((0, 1, 3, 3), 2)
    keys = ceiling.causal_keys([3, 2])
    assert keys == 6 + 3
    blocks, head = ceiling.work(flops, factors, tokens=5, head_tokens=2, attention_keys=keys)
    assert blocks == 7 * flops.per_block * 5 + (1 + 3 + 3) * 4 * 32 * keys
    assert head == 2 * flops.lm_head * 2
    assert ceiling.encoder_keys([3, 2]) == 13


def test_phase_line_says_rate_fraction_and_ceiling(ceiling):
    phase = ceiling.Phase("sampling", tokens=352.0, seconds=1.0, flops=95e9, ideal_seconds=95 / 780,
                          ceiling="bf16 GEMM at 64 rows", steps=1, step_seconds=2.0)
    line = ceiling.phase_line(phase, width=10)
    assert line.startswith("sampling")
    assert "352 tok/s" in line and "50% of step" in line
    assert "=   95.0 GFLOP/s =  12% of  780.0 GFLOP/s (bf16 GEMM at 64 rows, this host)" in line
