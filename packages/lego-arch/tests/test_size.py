"""Size estimation: parameters by part and memory, checked on hand-computed examples."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from rich.table import Table

from lego.arch import DecoderConfig, build, estimate_size, size_tables
from lego.arch.size import MEMORY_DTYPES, format_bytes, format_count
from lego.protocols import ConfigError

# A model small enough to count by hand: vocab 10, 8 positions, width 4, one block of two
# heads (head size 2), MLP width 8, LayerNorm with bias, learned positions, tied head.
HAND = DecoderConfig(vocab_size=10, context_length=8, d_model=4, n_layers=1, n_heads=2, d_ff=8)


def test_hand_computed_parameter_counts() -> None:
    counts = estimate_size(HAND).parameters
    assert counts.embeddings == 10 * 4 + 8 * 4  # token and position tables
    assert counts.attention == 4 * (4 * 4 + 4)  # q, k, v, out with biases
    assert counts.ffn == (4 * 8 + 8) + (8 * 4 + 4)  # fc and proj with biases
    assert counts.norms == 3 * (4 + 4)  # two block norms and the final norm
    assert counts.head == 0  # tied
    assert counts.experts == 0
    assert counts.other == 0
    assert counts.total == 252
    assert counts.active == 252
    assert counts.total == sum(p.numel() for p in build(HAND).parameters())


def test_hand_computed_memory() -> None:
    estimate = estimate_size(HAND, batch_size=2, seq_len=3)
    fp32, bf16, int8, nf4 = (estimate.for_dtype(d) for d in MEMORY_DTYPES)
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (1008, 1008, 2016)
    assert (bf16.weights, bf16.gradients, bf16.optimizer) == (504, 504, 3024)
    # int8: 1 byte per matrix weight + 4 bytes per row; vectors in bf16 (2 bytes)
    int8_expected = (
        (40 + 10 * 4)  # token table, 10 rows
        + (32 + 8 * 4)  # position table, 8 rows
        + 4 * (16 + 4 * 4)  # q, k, v, out weights (4 x 4)
        + 4 * 4 * 2  # their biases
        + (32 + 8 * 4)  # fc weight (8 x 4)
        + 8 * 2  # fc bias
        + (32 + 4 * 4)  # proj weight (4 x 8)
        + 4 * 2  # proj bias
        + 24 * 2  # norm scales and biases
    )
    assert int8.weights == int8_expected == 488
    # nf4: half a byte per weight + 4 bytes per block of 64 (every matrix here is one block)
    nf4_expected = 24 + 20 + 4 * 12 + 32 + 20 + 16 + 20 + 8 + 48
    assert nf4.weights == nf4_expected == 236
    assert int8.gradients is None
    assert nf4.optimizer is None
    assert int8.training is None
    # activations: 6 tokens; per token attention 4*(2d+2q+2kv) = 96, ffn 4*d + 4*(d+2f) = 96;
    # outside: final-norm input 4*d = 16 and logits 10 * (4 + 4) = 80
    assert fp32.activations == 6 * 192 + 6 * 96 == 1728
    assert fp32.activations_checkpointed == 6 * 4 * 4 + 1728
    assert fp32.kv_cache == 2 * 1 * 6 * 4 * 4
    assert bf16.kv_cache == fp32.kv_cache // 2
    assert fp32.inference == 1008 + 192
    assert fp32.training == 1008 + 1008 + 2016 + 1728


def test_korthikanti_formula_for_gpt2_shapes() -> None:
    """Math attention with dropout: 34 s b h + 5 a s^2 b bytes per layer in 16-bit."""
    config = DecoderConfig(
        vocab_size=50,
        context_length=64,
        d_model=32,
        n_layers=3,
        n_heads=4,
        d_ff=128,
        dropout=0.1,
        attention_backend="math",
    )
    s, b, h, a = 16, 2, 32, 4
    estimate = estimate_size(config, batch_size=b, seq_len=s, dtypes=("bf16",))
    per_layer = 34 * s * b * h + 5 * a * s * s * b
    outside = s * b * (2 * h + 50 * (2 + 4)) + s * b * h  # final norm, logits, embedding mask
    assert estimate.memory[0].activations == 3 * per_layer + outside


def test_moe_active_parameters() -> None:
    estimate = estimate_size("qwen3-moe-tiny")
    counts = estimate.parameters
    config = estimate.config
    per_expert = 3 * 64 * 32
    assert counts.experts == config.n_layers * 8 * per_expert
    assert counts.ffn == counts.experts + config.n_layers * 8 * 64  # plus the routers
    assert counts.active == counts.total - config.n_layers * 6 * per_expert
    assert counts.head == 1000 * 64  # untied


def test_full_presets_on_meta() -> None:
    big = estimate_size("llama-3.1-8b", batch_size=1, seq_len=4096)
    assert big.parameters.total == 8_030_261_248
    assert big.parameters.head == 128256 * 4096
    assert big.for_dtype("bf16").weights == 2 * 8_030_261_248
    assert big.for_dtype("nf4").weights < big.for_dtype("int8").weights
    assert big.for_dtype("int8").weights < big.for_dtype("bf16").weights
    moe = estimate_size("qwen3-30b-a3b").parameters
    assert 3.2e9 < moe.active < 3.5e9  # "A3B": about 3.3B active


def test_accepts_a_built_model() -> None:
    model = build("gpt2-tiny")
    assert estimate_size(model).parameters.total == sum(p.numel() for p in model.parameters())
    assert estimate_size(model).name == "gpt2"
    assert estimate_size("gpt2-tiny").name == "gpt2-tiny"
    assert estimate_size("gpt2-tiny").seq_len == 128  # the context length (< 2048)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="sequence length"):
        estimate_size("gpt2-tiny", seq_len=129)
    with pytest.raises(ConfigError, match="batch"):
        estimate_size("gpt2-tiny", batch_size=0)
    with pytest.raises(ConfigError, match="fp8"):
        estimate_size("gpt2-tiny", dtypes=("fp8",))
    with pytest.raises(ConfigError, match="unknown preset"):
        estimate_size("gpt3")
    with pytest.raises(ConfigError):
        estimate_size("gpt2-tiny", dtypes=("bf16",)).for_dtype("fp32")


def test_tables_render() -> None:
    params, memory = size_tables(estimate_size("qwen3-moe-tiny", batch_size=2, seq_len=16))
    assert isinstance(params, Table)
    assert isinstance(memory, Table)
    console = Console(width=120, record=True, file=None)
    with console.capture() as capture:
        console.print(params)
        console.print(memory)
    text = capture.get()
    assert "active per token (top 2 of 8)" in text
    assert "nf4" in text
    assert "276,928" in text


def test_formatting() -> None:
    assert format_count(124_439_808) == "124.44M"
    assert format_count(8_030_261_248) == "8.03B"
    assert format_count(999) == "999"
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 1024**3 // 2) == "1.50 GiB"
    assert format_bytes(2 * 1024**4) == "2.00 TiB"


def test_counts_follow_the_dtype_independent_model() -> None:
    model = build("llama-tiny").to(torch.bfloat16)
    assert (
        estimate_size(model).for_dtype("fp32").weights == 4 * estimate_size(model).parameters.total
    )
