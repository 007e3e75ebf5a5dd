"""Per-family config.json translation: both spellings read, unsupported values named."""

from __future__ import annotations

from typing import Any

import pytest

from lego.arch import get_preset, presets
from lego.arch.gpt2 import hf as gpt2_hf
from lego.arch.hf.families import architecture_for_config, architecture_for_hf
from lego.arch.llama import hf as llama_hf
from lego.arch.qwen3 import hf as qwen3_hf
from lego.protocols import CompatibilityError


@pytest.mark.parametrize("name", sorted(presets()))
def test_every_preset_round_trips_through_its_hf_config(name: str) -> None:
    config = get_preset(name)
    arch = architecture_for_config(config)
    data = arch.config_to_hf(config)
    assert data["architectures"] == [arch.name]
    assert architecture_for_hf(data) is arch
    assert arch.config_from_hf(data) == config


def test_llama_3_2_1b_fields() -> None:
    data = llama_hf.config_to_hf(get_preset("llama-3.2-1b"))
    assert data["rope_scaling"]["rope_type"] == "llama3"
    assert data["rope_theta"] == 500000.0
    assert data["tie_word_embeddings"] is True
    assert data["head_dim"] == 64
    assert (data["bos_token_id"], data["eos_token_id"]) == (128000, 128001)


def test_qwen3_moe_fields() -> None:
    data = qwen3_hf.config_to_hf(get_preset("qwen3-30b-a3b"))
    assert data["model_type"] == "qwen3_moe"
    assert data["num_experts"] == 128
    assert data["num_experts_per_tok"] == 8
    assert data["decoder_sparse_step"] == 1
    assert data["mlp_only_layers"] == []
    assert data["moe_intermediate_size"] == 768


def _llama(**extra: Any) -> dict[str, Any]:
    data = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
    }
    data.update(extra)
    return data


def test_transformers_5_spelling_is_read() -> None:
    data = _llama(
        rope_parameters={
            "rope_theta": 500000.0,
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        dtype="bfloat16",
    )
    config = llama_hf.config_from_hf(data)
    assert config.rope_theta == 500000.0
    assert config.rope_scaling is not None
    assert config.rope_scaling["factor"] == 8.0
    assert "rope_theta" not in config.rope_scaling
    plain = llama_hf.config_from_hf(
        _llama(rope_parameters={"rope_theta": 1e4, "rope_type": "default"})
    )
    assert plain.rope_scaling is None


def test_old_rope_scaling_type_key_is_read() -> None:
    data = _llama(rope_scaling={"type": "linear", "factor": 2.0})
    config = llama_hf.config_from_hf(data)
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_qwen3_moe_num_local_experts_spelling() -> None:
    data = qwen3_hf.config_to_hf(get_preset("qwen3-moe-tiny"))
    data["num_local_experts"] = data.pop("num_experts")
    assert qwen3_hf.config_from_hf(data) == get_preset("qwen3-moe-tiny")


@pytest.mark.parametrize(
    ("family", "key", "value"),
    [
        ("gpt2", "scale_attn_by_inverse_layer_idx", True),
        ("gpt2", "scale_attn_weights", False),
        ("gpt2", "add_cross_attention", True),
        ("gpt2", "activation_function", "mish"),
        ("llama", "pretraining_tp", 2),
        ("llama", "rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
        ("llama", "hidden_act", "tanhshrink"),
        ("llama", "num_attention_heads", "4"),
        ("qwen3", "use_sliding_window", True),
        ("qwen3_moe", "mlp_only_layers", [0]),
        ("qwen3_moe", "decoder_sparse_step", 2),
    ],
)
def test_unsupported_values_name_their_key(family: str, key: str, value: Any) -> None:
    preset = {
        "gpt2": "gpt2-tiny",
        "llama": "llama-tiny",
        "qwen3": "qwen3-tiny",
        "qwen3_moe": "qwen3-moe-tiny",
    }[family]
    arch = architecture_for_config(get_preset(preset))
    data = arch.config_to_hf(get_preset(preset))
    data[key] = value
    with pytest.raises(CompatibilityError) as info:
        arch.config_from_hf(data)
    assert info.value.key == key


def test_missing_required_field_is_named() -> None:
    data = _llama()
    del data["hidden_size"]
    with pytest.raises(CompatibilityError) as info:
        llama_hf.config_from_hf(data)
    assert info.value.key == "hidden_size"


def test_gpt2_defaults() -> None:
    config = gpt2_hf.config_from_hf(
        {"model_type": "gpt2", "vocab_size": 50, "n_embd": 32, "n_layer": 1, "n_head": 4}
    )
    assert config.d_ff == 128
    assert config.context_length == 1024
    assert config.activation == "gelu_tanh"
    assert config.tie_embeddings
    assert config.fused_qkv


@pytest.mark.parametrize(
    ("preset", "override", "key"),
    [
        ("gpt2-tiny", {"norm": "rmsnorm", "norm_bias": False}, "norm"),
        ("gpt2-tiny", {"n_kv_heads": 2}, "n_kv_heads"),
        ("llama-tiny", {"out_bias": True}, "out_bias"),
        ("llama-tiny", {"ffn": "gelu_mlp", "activation": "gelu_tanh"}, "ffn"),
        ("qwen3-tiny", {"qk_norm": False}, "qk_norm"),
        ("qwen3-tiny", {"mlp_bias": True}, "mlp_bias"),
        ("llama-tiny", {"sliding_window": 16}, "sliding_window"),
    ],
)
def test_configs_the_architecture_cannot_express(
    preset: str, override: dict[str, Any], key: str
) -> None:
    config = get_preset(preset).replace(**override)
    with pytest.raises(CompatibilityError) as info:
        architecture_for_config(config).config_to_hf(config)
    assert info.value.key == key
