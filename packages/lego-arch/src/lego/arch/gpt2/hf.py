"""GPT-2 <-> transformers' ``GPT2LMHeadModel``: config fields and weight names.

GPT-2's checkpoints store every projection as a ``Conv1D`` whose weight is ``(in, out)``,
the transpose of ``nn.Linear``'s ``(out, in)``; the table transposes them both ways. The
fused ``c_attn`` (``[q | k | v]`` along the output) is kept fused: it becomes lego's
``attention.qkv_proj`` as it is, transposed. Loaded parameters are always contiguous, so
these four weights per block are copied on reading (the embeddings, norms and biases stay
zero-copy views of the file). The Hub's original ``gpt2`` checkpoints store the
base model's names without the ``transformer.`` prefix and carry the old causal-mask
buffers ``attn.bias`` / ``attn.masked_bias``; both are accepted on reading. transformers
saves no ``lm_head.weight`` (it is tied to ``wte``), and neither does
[`to_hf()`][lego.arch.hf.writing.to_hf].
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
    reject,
)
from lego.arch.convert.mapping import WeightRule, WeightTable, transpose
from lego.protocols import CompatibilityError

__all__ = ["ARCHITECTURE", "MODEL_TYPE", "WEIGHTS", "config_from_hf", "config_to_hf"]

MODEL_TYPE = "gpt2"
"""transformers' ``model_type``."""

ARCHITECTURE = "GPT2LMHeadModel"
"""The transformers class a GPT-2 directory loads as."""

WEIGHTS = WeightTable(
    rules=(
        WeightRule("transformer.wte.weight", "token_embedding.weight"),
        WeightRule("transformer.wpe.weight", "position_embedding.weight"),
        WeightRule("transformer.h.{i}.ln_1.weight", "blocks.{i}.attention_norm.weight"),
        WeightRule("transformer.h.{i}.ln_1.bias", "blocks.{i}.attention_norm.bias"),
        WeightRule(
            "transformer.h.{i}.attn.c_attn.weight",
            "blocks.{i}.attention.qkv_proj.weight",
            to_lego=transpose,
            to_hf=transpose,
        ),
        WeightRule("transformer.h.{i}.attn.c_attn.bias", "blocks.{i}.attention.qkv_proj.bias"),
        WeightRule(
            "transformer.h.{i}.attn.c_proj.weight",
            "blocks.{i}.attention.out_proj.weight",
            to_lego=transpose,
            to_hf=transpose,
        ),
        WeightRule("transformer.h.{i}.attn.c_proj.bias", "blocks.{i}.attention.out_proj.bias"),
        WeightRule("transformer.h.{i}.ln_2.weight", "blocks.{i}.ffn_norm.weight"),
        WeightRule("transformer.h.{i}.ln_2.bias", "blocks.{i}.ffn_norm.bias"),
        WeightRule(
            "transformer.h.{i}.mlp.c_fc.weight",
            "blocks.{i}.feed_forward.fc.weight",
            to_lego=transpose,
            to_hf=transpose,
        ),
        WeightRule("transformer.h.{i}.mlp.c_fc.bias", "blocks.{i}.feed_forward.fc.bias"),
        WeightRule(
            "transformer.h.{i}.mlp.c_proj.weight",
            "blocks.{i}.feed_forward.proj.weight",
            to_lego=transpose,
            to_hf=transpose,
        ),
        WeightRule("transformer.h.{i}.mlp.c_proj.bias", "blocks.{i}.feed_forward.proj.bias"),
        WeightRule("transformer.ln_f.weight", "final_norm.weight"),
        WeightRule("transformer.ln_f.bias", "final_norm.bias"),
        WeightRule("lm_head.weight", "lm_head.weight"),
    ),
    ignore=(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)",),
    base_prefix="transformer.",
)
"""GPT-2's weight names, lego <-> HF."""


def config_from_hf(data: Mapping[str, Any]) -> DecoderConfig:
    """Translate a GPT-2 ``config.json`` into a [`DecoderConfig`][lego.arch.config.DecoderConfig].

    Args:
        data: The parsed ``config.json``.

    Returns:
        The config of the same model (``fused_qkv=True``, learned positions, LayerNorm,
        GELU MLP with biases); dropout is ``resid_pdrop``.

    Raises:
        CompatibilityError: A value lego does not reproduce (``scale_attn_by_inverse_layer_idx``,
            ``scale_attn_weights=false``, cross-attention, an unknown activation), naming the
            key; a missing or mistyped required field.
    """
    reject(
        data,
        "scale_attn_by_inverse_layer_idx",
        False,
        why="it divides each layer's attention scores by the layer index",
    )
    reject(data, "scale_attn_weights", True, why="it leaves attention scores unscaled")
    reject(data, "add_cross_attention", False, why="cross-attention is an encoder-decoder part")
    d_model = get_int(data, "n_embd")
    n_inner = data.get("n_inner")
    return DecoderConfig(
        family="gpt2",
        vocab_size=get_int(data, "vocab_size"),
        context_length=get_int(data, "n_positions", data.get("n_ctx", 1024)),
        d_model=d_model,
        n_layers=get_int(data, "n_layer"),
        n_heads=get_int(data, "n_head"),
        d_ff=4 * d_model if n_inner is None else get_int(data, "n_inner"),
        norm="layernorm",
        norm_eps=get_float(data, "layer_norm_epsilon", 1e-5),
        norm_bias=True,
        positions="learned",
        ffn="gelu_mlp",
        activation=activation_from_hf(data, "activation_function", "gelu_new"),
        mlp_bias=True,
        attention_bias=True,
        out_bias=True,
        fused_qkv=True,
        tie_embeddings=get_bool(data, "tie_word_embeddings", True),
        dropout=get_float(data, "resid_pdrop", 0.1),
        initializer_range=get_float(data, "initializer_range", 0.02),
        scale_residual_init=True,
    )


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    """Translate a GPT-2-shaped config into the fields of ``GPT2Config``.

    Args:
        config: A config with LayerNorm (with bias), learned positions, a GELU MLP with
            biases, biased attention, multi-head attention and the default head size.

    Returns:
        The ``config.json`` mapping (without the dtype, added by
        [`to_hf()`][lego.arch.hf.writing.to_hf]).

    Raises:
        CompatibilityError: A field GPT-2 cannot express, naming it.
    """
    expect_field(config, "norm", "layernorm", architecture=ARCHITECTURE)
    expect_field(config, "norm_bias", True, architecture=ARCHITECTURE)
    expect_field(config, "positions", "learned", architecture=ARCHITECTURE)
    expect_field(config, "ffn", "gelu_mlp", architecture=ARCHITECTURE)
    expect_field(config, "mlp_bias", True, architecture=ARCHITECTURE)
    expect_field(config, "attention_bias", True, architecture=ARCHITECTURE)
    expect_field(config, "out_bias", True, architecture=ARCHITECTURE)
    expect_field(config, "qk_norm", False, architecture=ARCHITECTURE)
    expect_field(config, "sliding_window", None, architecture=ARCHITECTURE)
    if config.kv_heads != config.n_heads:
        raise CompatibilityError(
            "GPT-2 has no grouped-query attention", key="n_kv_heads", hint="use n_kv_heads=None"
        )
    if config.head_size * config.n_heads != config.d_model:
        raise CompatibilityError(
            "GPT-2's head size is n_embd // n_head", key="head_dim", hint="use head_dim=None"
        )
    assert config.activation is not None  # a tied field: filled by DecoderConfig
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        "activation_function": activation_to_hf(config.activation),
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": config.initializer_range,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": 50256 if config.vocab_size == 50257 else None,
        "eos_token_id": 50256 if config.vocab_size == 50257 else None,
        "use_cache": True,
    }
