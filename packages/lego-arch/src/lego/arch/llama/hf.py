"""Llama 3 <-> transformers' ``LlamaForCausalLM``: config fields and weight names.

Llama's checkpoints already store ``nn.Linear`` weights ``(out, in)`` with separate
``q_proj`` / ``k_proj`` / ``v_proj``, so every tensor maps by name alone. ``attention_bias``
puts a bias on the query/key/value *and* output projections in transformers, so lego's
``attention_bias`` and ``out_bias`` must agree. RoPE's scaling (``"llama3"`` for Llama 3.1 /
3.2) travels as HF's ``rope_scaling`` mapping unchanged.

[`base_config_from_hf()`][lego.arch.llama.hf.base_config_from_hf] and
[`base_config_to_hf()`][lego.arch.llama.hf.base_config_to_hf] hold the fields every
Llama-shaped architecture shares; Qwen 3 builds on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lego.arch.config import DecoderConfig
from lego.arch.convert.fields import (
    activation_from_hf,
    activation_to_hf,
    expect_field,
    get_bool,
    get_float,
    get_int,
    get_optional_int,
    reject,
    rope_from_hf,
    rope_to_hf,
)
from lego.arch.convert.mapping import WeightRule, WeightTable

__all__ = [
    "ARCHITECTURE",
    "MODEL_TYPE",
    "WEIGHTS",
    "ATTENTION_RULES",
    "DENSE_FFN_RULES",
    "EDGE_RULES",
    "base_config_from_hf",
    "base_config_to_hf",
    "config_from_hf",
    "config_to_hf",
]

MODEL_TYPE = "llama"
"""transformers' ``model_type``."""

ARCHITECTURE = "LlamaForCausalLM"
"""The transformers class a Llama directory loads as."""

_LAYER = "model.layers.{i}."

ATTENTION_RULES: tuple[WeightRule, ...] = (
    WeightRule(_LAYER + "input_layernorm.weight", "blocks.{i}.attention_norm.weight"),
    *(
        WeightRule(_LAYER + f"self_attn.{proj}.{kind}", f"blocks.{{i}}.attention.{proj}.{kind}")
        for proj in ("q_proj", "k_proj", "v_proj")
        for kind in ("weight", "bias")
    ),
    WeightRule(_LAYER + "self_attn.o_proj.weight", "blocks.{i}.attention.out_proj.weight"),
    WeightRule(_LAYER + "self_attn.o_proj.bias", "blocks.{i}.attention.out_proj.bias"),
    WeightRule(_LAYER + "post_attention_layernorm.weight", "blocks.{i}.ffn_norm.weight"),
)
"""The per-layer attention half of a Llama-shaped block (norms included)."""

DENSE_FFN_RULES: tuple[WeightRule, ...] = tuple(
    WeightRule(_LAYER + f"mlp.{proj}.{kind}", f"blocks.{{i}}.feed_forward.{proj}.{kind}")
    for proj in ("gate_proj", "up_proj", "down_proj")
    for kind in ("weight", "bias")
)
"""The gated MLP (SwiGLU) of a Llama-shaped block."""

EDGE_RULES: tuple[WeightRule, ...] = (
    WeightRule("model.embed_tokens.weight", "token_embedding.weight"),
    WeightRule("model.norm.weight", "final_norm.weight"),
    WeightRule("lm_head.weight", "lm_head.weight"),
)
"""The embedding, the final norm and the head."""

ROTARY_BUFFERS = (r"(model\.)?(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq",)
"""Old checkpoints' saved RoPE frequencies: recomputed, never read."""

WEIGHTS = WeightTable(
    rules=(*EDGE_RULES, *ATTENTION_RULES, *DENSE_FFN_RULES),
    ignore=ROTARY_BUFFERS,
    base_prefix="model.",
)
"""Llama's weight names, lego <-> HF."""


def base_config_from_hf(data: Mapping[str, Any], *, family: str) -> dict[str, Any]:
    """The [`DecoderConfig`][lego.arch.config.DecoderConfig] fields of a Llama-shaped config.

    Args:
        data: The parsed ``config.json``.
        family: The lego family to record (``"llama"``, ``"qwen3"``).

    Returns:
        Keyword arguments for ``DecoderConfig`` (RMSNorm, RoPE, SwiGLU, separate q/k/v).

    Raises:
        CompatibilityError: A missing/mistyped field, an unsupported RoPE scaling or
            activation, or ``pretraining_tp`` other than 1, naming the key.
    """
    reject(data, "pretraining_tp", 1, why="it splits projections into slices (use 1)")
    d_model = get_int(data, "hidden_size")
    n_heads = get_int(data, "num_attention_heads")
    theta, scaling = rope_from_hf(data, default_theta=10000.0)
    attention_bias = get_bool(data, "attention_bias", False)
    head_dim = get_optional_int(data, "head_dim")
    return {
        "family": family,
        "vocab_size": get_int(data, "vocab_size"),
        "context_length": get_int(data, "max_position_embeddings", 2048),
        "d_model": d_model,
        "n_layers": get_int(data, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": get_int(data, "num_key_value_heads", n_heads),
        "head_dim": None if head_dim in (None, d_model // n_heads) else head_dim,
        "d_ff": get_int(data, "intermediate_size"),
        "norm": "rmsnorm",
        "norm_eps": get_float(data, "rms_norm_eps", 1e-6),
        "norm_bias": False,
        "positions": "rope",
        "rope_theta": theta,
        "rope_scaling": scaling,
        "ffn": "swiglu",
        "activation": activation_from_hf(data, "hidden_act", "silu"),
        "mlp_bias": get_bool(data, "mlp_bias", False),
        "attention_bias": attention_bias,
        "out_bias": attention_bias,
        "fused_qkv": False,
        "tie_embeddings": get_bool(data, "tie_word_embeddings", False),
        "dropout": get_float(data, "attention_dropout", 0.0),
        "initializer_range": get_float(data, "initializer_range", 0.02),
    }


def base_config_to_hf(
    config: DecoderConfig, *, architecture: str, model_type: str
) -> dict[str, Any]:
    """The ``config.json`` fields every Llama-shaped architecture shares.

    Args:
        config: A config with RMSNorm, RoPE, separate q/k/v and matching attention biases.
        architecture: The transformers class name.
        model_type: transformers' ``model_type``.

    Returns:
        The mapping (without the dtype, added by [`to_hf()`][lego.arch.hf.writing.to_hf]).

    Raises:
        CompatibilityError: A field the architecture cannot express, naming it.
    """
    expect_field(config, "norm", "rmsnorm", architecture=architecture)
    expect_field(config, "positions", "rope", architecture=architecture)
    expect_field(config, "fused_qkv", False, architecture=architecture)
    expect_field(config, "out_bias", config.attention_bias, architecture=architecture)
    expect_field(config, "sliding_window", None, architecture=architecture)
    assert config.activation is not None  # a tied field: filled by DecoderConfig
    return {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "hidden_act": activation_to_hf(config.activation),
        "rms_norm_eps": config.norm_eps,
        **rope_to_hf(config.rope_theta, config.rope_scaling),
        "attention_bias": config.attention_bias,
        "attention_dropout": config.dropout,
        "mlp_bias": config.mlp_bias,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range,
        "use_cache": True,
    }


def config_from_hf(data: Mapping[str, Any]) -> DecoderConfig:
    """Translate a Llama ``config.json`` into a [`DecoderConfig`][lego.arch.config.DecoderConfig].

    Args:
        data: The parsed ``config.json``.

    Returns:
        The config of the same model.

    Raises:
        CompatibilityError: A value lego does not reproduce, naming the key.
    """
    return DecoderConfig(**base_config_from_hf(data, family="llama"))


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    """Translate a Llama-shaped config into the fields of ``LlamaConfig``.

    Args:
        config: A config with RMSNorm, RoPE, a SwiGLU feed-forward, no QK-norm.

    Returns:
        The ``config.json`` mapping; Llama 3's token ids (bos 128000, eos 128001) are
        written when the vocabulary is Llama 3's (128256).

    Raises:
        CompatibilityError: A field Llama cannot express, naming it.
    """
    expect_field(config, "ffn", "swiglu", architecture=ARCHITECTURE)
    expect_field(config, "qk_norm", False, architecture=ARCHITECTURE)
    data = base_config_to_hf(config, architecture=ARCHITECTURE, model_type=MODEL_TYPE)
    llama3 = config.vocab_size == 128256
    data["bos_token_id"] = 128000 if llama3 else None
    data["eos_token_id"] = 128001 if llama3 else None
    data["pretraining_tp"] = 1
    return data
