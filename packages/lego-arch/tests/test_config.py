"""DecoderConfig: validation, derived sizes, JSON round trip, dtype names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.arch import DecoderConfig, get_preset, list_presets, parse_dtype
from lego.protocols import ConfigError

BASE: dict[str, Any] = {
    "vocab_size": 100,
    "context_length": 32,
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "d_ff": 128,
}


def make(**changes: Any) -> DecoderConfig:
    return DecoderConfig(**{**BASE, **changes})


def test_defaults_and_derived_sizes() -> None:
    config = make()
    assert config.head_size == 16
    assert config.kv_heads == 4
    assert not config.is_moe
    qwen = make(n_kv_heads=2, head_dim=32)
    assert qwen.head_size == 32
    assert qwen.kv_heads == 2


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_round_trips_through_json(name: str, tmp_path: Path) -> None:
    config = get_preset(name)
    path = tmp_path / "config.json"
    config.to_json(path)
    assert DecoderConfig.from_json(path) == config
    data = json.loads(path.read_text(encoding="utf-8"))
    assert DecoderConfig.from_dict(data) == config
    assert data["family"] == config.family


def test_dict_form_is_plain_data() -> None:
    data = get_preset("llama-3.2-1b").to_dict()

    def plain(value: object) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (str, int, float, bool))

    assert plain(data)
    assert data["rope_scaling"]["rope_type"] == "llama3"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"n_heads": 5}, "n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"head_dim": 0}, "head_dim"),
        ({"norm": "rmsnrom"}, "norm"),
        (
            {"ffn": "moe", "mlp_bias": True, "n_experts": 4, "experts_top_k": 2, "moe_d_ff": 8},
            "mlp_bias",
        ),
        ({"positions": "rotary"}, "positions"),
        ({"ffn": "swiglue"}, "ffn"),
        ({"activation": "gelu_fancy"}, "activation"),
        ({"norm": "rmsnorm", "norm_bias": True}, "norm_bias"),
        ({"dropout": 1.0}, "dropout"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"initializer_range": -1.0}, "initializer_range"),
        ({"ffn": "moe", "mlp_bias": False, "n_experts": 4, "moe_d_ff": 8}, "experts_top_k"),
        ({"ffn": "moe", "n_experts": 2, "experts_top_k": 3, "moe_d_ff": 8}, "experts_top_k"),
        ({"n_experts": 4}, "n_experts"),
        ({"positions": "rope", "head_dim": 15}, "head_dim"),
        ({"positions": "rope", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, None),
        ({"positions": "rope", "rope_scaling": {"rope_type": "yarnish"}}, "rope_type"),
    ],
)
def test_bad_values_are_config_errors(changes: dict[str, Any], key: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        make(**changes)
    if key is not None:
        assert info.value.key == key


def test_unknown_names_suggest_close_ones() -> None:
    with pytest.raises(ConfigError, match="rmsnorm"):
        make(norm="rmsnrom", norm_bias=False)
    with pytest.raises(ConfigError, match="swiglu"):
        make(ffn="swiglue")


def test_unknown_field_and_wrong_type() -> None:
    with pytest.raises(ConfigError, match="n_heads"):
        DecoderConfig.from_dict({**BASE, "n_head": 4})
    with pytest.raises(ConfigError):
        make(d_model="64")
    with pytest.raises(ConfigError):
        get_preset("gpt2").replace(n_layer=3)


def test_activation_aliases_accepted() -> None:
    assert make(activation="gelu_new").activation == "gelu_new"


@given(
    n_kv=st.integers(1, 8),
    n_heads=st.integers(1, 8),
    head_dim=st.sampled_from([None, 8, 16]),
)
@settings(max_examples=60, deadline=None)
def test_head_rules(n_kv: int, n_heads: int, head_dim: int | None) -> None:
    ok = n_heads % n_kv == 0 and (head_dim is not None or 64 % n_heads == 0)
    try:
        config = make(n_heads=n_heads, n_kv_heads=n_kv, head_dim=head_dim)
    except ConfigError:
        assert not ok
    else:
        assert ok
        assert config.n_heads % config.kv_heads == 0


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("bf16", torch.bfloat16),
        ("BFloat16", torch.bfloat16),
        ("torch.float16", torch.float16),
        ("half", torch.float16),
    ],
)
def test_parse_dtype(name: str, dtype: torch.dtype) -> None:
    assert parse_dtype(name) is dtype
    assert parse_dtype(dtype) is dtype
    assert parse_dtype(None) is None


def test_parse_dtype_errors_name_the_value() -> None:
    with pytest.raises(ConfigError, match="bfloat61") as info:
        parse_dtype("bfloat61", key="--dtype")
    assert info.value.key == "--dtype"
    assert "bfloat16" in str(info.value)
    with pytest.raises(ConfigError, match="floating"):
        parse_dtype(torch.int64)


# -- tied fields: a component name carries its defaults ------------------------------------


def test_tied_fields_take_the_component_defaults() -> None:
    gpt2 = make()
    assert (gpt2.norm_bias, gpt2.activation, gpt2.mlp_bias) == (True, "gelu_tanh", True)
    llama = make(norm="rmsnorm", ffn="swiglu")
    assert (llama.norm_bias, llama.activation, llama.mlp_bias) == (False, "silu", True)
    assert make(ffn="geglu").activation == "gelu_tanh"
    moe = make(ffn="moe", n_experts=4, experts_top_k=2, moe_d_ff=8)
    assert (moe.activation, moe.mlp_bias) == ("silu", False)


def test_to_dict_holds_concrete_values() -> None:
    data = make(norm="rmsnorm", ffn="swiglu").to_dict()
    assert (data["norm_bias"], data["activation"], data["mlp_bias"]) == (False, "silu", True)
    assert DecoderConfig.from_dict({**BASE, "norm_bias": None}).norm_bias is True


def test_replace_of_a_component_moves_its_default_fields() -> None:
    gpt2 = get_preset("gpt2")
    swiglu = gpt2.replace(ffn="swiglu")
    assert swiglu.activation == "silu"  # a real SwiGLU, not a GeGLU
    assert swiglu.mlp_bias  # GPT-2's biases stay: they are also the SwiGLU default
    assert gpt2.replace(norm="rmsnorm").norm_bias is False
    moe = gpt2.replace(ffn="moe", n_experts=4, experts_top_k=2, moe_d_ff=32)
    assert (moe.activation, moe.mlp_bias) == ("silu", False)
    back = swiglu.replace(ffn="gelu_mlp")
    assert back.activation == "gelu_tanh"
    assert back == gpt2


def test_replace_keeps_values_that_are_not_the_old_default() -> None:
    relu = make(activation="relu")
    assert relu.replace(ffn="swiglu").activation == "relu"  # chosen, not a default: kept
    llama = get_preset("llama-tiny")  # swiglu with mlp_bias=False (not swiglu's default)
    assert llama.replace(ffn="gelu_mlp").mlp_bias is False
    assert llama.replace(ffn="gelu_mlp").activation == "gelu_tanh"


def test_replace_with_the_tied_field_given_keeps_it() -> None:
    gpt2 = get_preset("gpt2-tiny")
    geglu = gpt2.replace(ffn="swiglu", activation="gelu_tanh")
    assert geglu.activation == "gelu_tanh"
    with pytest.raises(ConfigError, match="norm_bias") as info:
        gpt2.replace(norm="rmsnorm", norm_bias=True)
    assert info.value.key == "norm_bias"


def test_replace_of_another_field_changes_no_tied_field() -> None:
    custom = make(activation="relu", mlp_bias=False)
    assert custom.replace(n_layers=3).activation == "relu"
    assert custom.replace(ffn="gelu_mlp") == custom  # the same component: nothing moves


def test_unknown_component_with_unset_tied_fields_names_the_component() -> None:
    with pytest.raises(ConfigError) as info:
        make(ffn="swiglue")
    assert info.value.key == "ffn"
    assert "swiglu" in str(info.value)
