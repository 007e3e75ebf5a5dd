"""The preset registry and build(): names, overrides, errors, meta builds, published sizes."""

from __future__ import annotations

import re

import pytest
import torch

import lego.arch
from lego.arch import DecoderConfig, DecoderLM, build, get_preset, list_presets, presets
from lego.arch.registry import register_preset
from lego.protocols import ConfigError

EXPECTED_PRESETS = {
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl",
    "llama-3.2-1b", "llama-3.2-3b", "llama-3.1-8b",
    "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-30b-a3b",
    "gpt2-tiny", "llama-tiny", "qwen3-tiny", "qwen3-moe-tiny",
}  # fmt: skip

# Parameter counts published with the checkpoints (the HF model cards and papers), with tied
# embeddings counted once. GPT-2 and Llama are the exact totals of the released weights; the
# Qwen 3 model cards give rounded figures ("0.6B", "8.2B", "30.5B"), checked to that precision.
PUBLISHED_EXACT = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.2-3b": 3_212_749_824,
    "llama-3.1-8b": 8_030_261_248,
}
PUBLISHED_ROUNDED = {  # billions, as the Qwen 3 model cards round them
    "qwen3-0.6b": (0.6, 0.05),
    "qwen3-1.7b": (1.7, 0.05),
    "qwen3-4b": (4.0, 0.05),
    "qwen3-8b": (8.2, 0.05),
    "qwen3-30b-a3b": (30.5, 0.05),
}


def test_the_presets_are_all_there() -> None:
    assert set(list_presets()) == EXPECTED_PRESETS
    assert set(presets()) == EXPECTED_PRESETS
    assert all(isinstance(c, DecoderConfig) for c in presets().values())


def test_presets_returns_a_copy() -> None:
    table = presets()
    table.clear()
    assert presets()


@pytest.mark.parametrize("name", sorted(EXPECTED_PRESETS))
def test_every_preset_builds_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = build(name)
    assert isinstance(model, DecoderLM)
    assert model.config == get_preset(name)
    assert all(p.is_meta for p in model.parameters())
    assert len(model.blocks) == model.config.n_layers
    assert model.tied is model.config.tie_embeddings


@pytest.mark.parametrize("name", sorted(PUBLISHED_EXACT))
def test_exact_published_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = build(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_EXACT[name]


@pytest.mark.parametrize("name", sorted(PUBLISHED_ROUNDED))
def test_rounded_published_parameter_counts(name: str) -> None:
    with torch.device("meta"):
        model = build(name)
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    target, tolerance = PUBLISHED_ROUNDED[name]
    assert abs(billions - target) <= tolerance


def test_official_config_values() -> None:
    llama = get_preset("llama-3.1-8b")
    assert (llama.d_model, llama.n_layers, llama.n_heads, llama.kv_heads) == (4096, 32, 32, 8)
    assert llama.d_ff == 14336
    assert llama.rope_theta == 500000.0
    assert llama.rope_scaling is not None
    assert llama.rope_scaling["factor"] == 8.0
    assert llama.context_length == 131072
    assert not llama.tie_embeddings
    small = get_preset("llama-3.2-1b")
    assert small.tie_embeddings
    assert small.rope_scaling is not None
    assert small.rope_scaling["factor"] == 32.0
    qwen = get_preset("qwen3-0.6b")
    assert (qwen.head_size, qwen.n_heads, qwen.d_model) == (128, 16, 1024)
    assert qwen.qk_norm
    assert qwen.norm_eps == 1e-6
    moe = get_preset("qwen3-30b-a3b")
    assert (moe.n_experts, moe.experts_top_k, moe.moe_d_ff, moe.kv_heads) == (128, 8, 768, 4)
    gpt2 = get_preset("gpt2")
    assert gpt2.fused_qkv
    assert gpt2.context_length == 1024
    assert gpt2.vocab_size == 50257


def test_overrides() -> None:
    model = build("llama-tiny", n_layers=3, n_kv_heads=1)
    assert len(model.blocks) == 3
    assert model.config.kv_heads == 1
    assert model.blocks[0].attention.n_kv_heads == 1
    assert get_preset("llama-tiny").n_layers == 2  # the preset is unchanged


def test_swap_bricks_by_config() -> None:
    config = get_preset("gpt2-tiny").replace(
        family="custom",
        norm="rmsnorm",
        norm_bias=False,
        positions="rope",
        n_kv_heads=2,
        ffn="swiglu",
        activation="silu",
        fused_qkv=False,
    )
    model = build(config).eval()
    assert model.position_embedding is None
    assert model.blocks[0].attention.rotary is not None
    assert type(model.blocks[0].feed_forward).__name__ == "GatedMLP"
    assert type(model.final_norm).__name__ == "RMSNorm"
    assert model(torch.randint(0, 1000, (1, 6))).shape == (1, 6, 1000)
    moe = build(
        config.replace(ffn="moe", mlp_bias=False, n_experts=4, experts_top_k=2, moe_d_ff=16)
    )
    assert type(moe.blocks[0].feed_forward).__name__ == "MoEFeedForward"


def test_build_from_config_is_identical() -> None:
    torch.manual_seed(3)
    a = build("qwen3-tiny")
    torch.manual_seed(3)
    b = build(get_preset("qwen3-tiny"))
    torch.manual_seed(3)
    c = build(DecoderConfig.from_dict(get_preset("qwen3-tiny").to_dict()))
    for other in (b, c):
        assert a.state_dict().keys() == other.state_dict().keys()
        for key, value in a.state_dict().items():
            assert torch.equal(value, other.state_dict()[key]), key


def test_rope_tables_are_shared() -> None:
    model = build("llama-tiny")
    rotaries = {id(block.attention.rotary) for block in model.blocks}
    assert len(rotaries) == 1
    assert not any("cos_cached" in key for key in model.state_dict())


def test_unknown_preset_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match=re.escape("llama-3.2-1b")) as info:
        build("llama-3.2-1")
    assert info.value.key == "preset"
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("mistral-7b")
    with pytest.raises(ConfigError, match="preset name or a DecoderConfig"):
        build(42)  # type: ignore[arg-type]
    assert get_preset("GPT2") == get_preset("gpt2")


def test_bad_override() -> None:
    with pytest.raises(ConfigError, match="n_layers"):
        build("gpt2-tiny", n_layer=3)
    with pytest.raises(ConfigError, match="n_kv_heads"):
        build("llama-tiny", n_kv_heads=3)


def test_register_preset() -> None:
    config = get_preset("llama-tiny").replace(family="custom", n_layers=1)
    register_preset("test-one-layer", config)
    try:
        assert build("test-one-layer").config.n_layers == 1
        with pytest.raises(ConfigError, match="already exists"):
            register_preset("test-one-layer", config)
        register_preset("test-one-layer", config.replace(n_layers=2), replace=True)
        assert get_preset("test-one-layer").n_layers == 2
    finally:
        lego.arch.registry._PRESETS.pop("test-one-layer", None)
    with pytest.raises(ConfigError, match="lower-case"):
        register_preset("Bad Name", config)
    with pytest.raises(ConfigError, match="DecoderConfig"):
        register_preset("bad", config.to_dict())  # type: ignore[arg-type]
