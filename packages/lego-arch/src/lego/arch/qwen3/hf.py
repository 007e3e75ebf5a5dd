"""Qwen 3 <-> transformers' ``Qwen3ForCausalLM`` and ``Qwen3MoeForCausalLM``.

Qwen 3 is Llama-shaped (see [`lego.arch.llama.hf`][lego.arch.llama.hf]) plus a per-head
RMSNorm on queries and keys (``self_attn.q_norm`` / ``k_norm``) and a head size set
independently of the width. The MoE variant replaces every layer's MLP by a router
(``mlp.gate``) and ``num_experts`` SwiGLU experts. The Hub stores one tensor per expert
(``mlp.experts.{e}.gate_proj.weight``) and so does transformers' ``save_pretrained`` (even
transformers 5, which fuses them in memory); lego keeps each projection stacked as one
``(E, ...)`` tensor, so the table stacks them on reading and splits them on writing.

Only the layouts where every layer is a MoE layer (``decoder_sparse_step=1``,
``mlp_only_layers=[]``) and no sliding window is used are supported; anything else is a
[`CompatibilityError`][lego.protocols.CompatibilityError] naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lego.arch.config import DecoderConfig
from lego.arch.convert.fields import get_bool, get_float, get_int, reject
from lego.arch.convert.mapping import WeightRule, WeightTable
from lego.arch.llama.hf import (
    ATTENTION_RULES,
    DENSE_FFN_RULES,
    EDGE_RULES,
    ROTARY_BUFFERS,
    base_config_from_hf,
    base_config_to_hf,
)
from lego.protocols import CompatibilityError

__all__ = [
    "ARCHITECTURE",
    "MODEL_TYPE",
    "MOE_ARCHITECTURE",
    "MOE_MODEL_TYPE",
    "MOE_WEIGHTS",
    "WEIGHTS",
    "config_from_hf",
    "config_to_hf",
]

MODEL_TYPE = "qwen3"
"""transformers' ``model_type`` of the dense models."""

ARCHITECTURE = "Qwen3ForCausalLM"
"""The transformers class a dense Qwen 3 directory loads as."""

MOE_MODEL_TYPE = "qwen3_moe"
"""transformers' ``model_type`` of the mixture-of-experts models."""

MOE_ARCHITECTURE = "Qwen3MoeForCausalLM"
"""The transformers class a Qwen 3 MoE directory loads as."""

_QK_NORM_RULES = (
    WeightRule("model.layers.{i}.self_attn.q_norm.weight", "blocks.{i}.attention.q_norm.weight"),
    WeightRule("model.layers.{i}.self_attn.k_norm.weight", "blocks.{i}.attention.k_norm.weight"),
)

_MOE_RULES = (
    WeightRule("model.layers.{i}.mlp.gate.weight", "blocks.{i}.feed_forward.router.weight"),
    *(
        WeightRule(
            f"model.layers.{{i}}.mlp.experts.{{e}}.{proj}.weight",
            f"blocks.{{i}}.feed_forward.experts.{proj}",
        )
        for proj in ("gate_proj", "up_proj", "down_proj")
    ),
)

WEIGHTS = WeightTable(
    rules=(*EDGE_RULES, *ATTENTION_RULES, *_QK_NORM_RULES, *DENSE_FFN_RULES),
    ignore=ROTARY_BUFFERS,
    base_prefix="model.",
)
"""Dense Qwen 3's weight names, lego <-> HF."""

MOE_WEIGHTS = WeightTable(
    rules=(*EDGE_RULES, *ATTENTION_RULES, *_QK_NORM_RULES, *_MOE_RULES),
    ignore=ROTARY_BUFFERS,
    base_prefix="model.",
)
"""Qwen 3 MoE's weight names, lego <-> HF (experts stacked / split)."""


def config_from_hf(data: Mapping[str, Any]) -> DecoderConfig:
    """Translate a Qwen 3 (dense or MoE) ``config.json`` into a ``DecoderConfig``.

    Args:
        data: The parsed ``config.json``; ``model_type`` ``"qwen3_moe"`` (or MoE fields)
            selects the mixture of experts.

    Returns:
        The [`DecoderConfig`][lego.arch.config.DecoderConfig] of the same model.

    Raises:
        CompatibilityError: A sliding window in use, MoE layers that are not all MoE
            (``mlp_only_layers``, ``decoder_sparse_step``), or any value lego does not
            reproduce, naming the key.
    """
    reject(
        data,
        "use_sliding_window",
        False,
        why="lego-arch does not reproduce Qwen's per-layer sliding window",
    )
    fields = base_config_from_hf(data, family="qwen3")
    fields["qk_norm"] = True
    if fields["head_dim"] is None:  # Qwen 3 states its head size, even when it is the default
        fields["head_dim"] = fields["d_model"] // fields["n_heads"]
    if data.get("model_type") == MOE_MODEL_TYPE:
        if data.get("mlp_only_layers"):
            raise CompatibilityError(
                f"unsupported config value mlp_only_layers={data['mlp_only_layers']!r}: it "
                "mixes dense and MoE layers",
                key="mlp_only_layers",
                hint="lego-arch supports Qwen 3 MoE models whose every layer is a MoE layer "
                "(mlp_only_layers=[])",
            )
        reject(data, "decoder_sparse_step", 1, why="it makes only every n-th layer a MoE layer")
        n_experts_key = (
            "num_experts" if data.get("num_experts") is not None else "num_local_experts"
        )
        fields.update(
            ffn="moe",
            n_experts=get_int(data, n_experts_key),
            experts_top_k=get_int(data, "num_experts_per_tok"),
            moe_d_ff=get_int(data, "moe_intermediate_size"),
            norm_topk_prob=get_bool(data, "norm_topk_prob", False),
            router_aux_loss_coef=get_float(data, "router_aux_loss_coef", 0.001),
        )
    return DecoderConfig(**fields)


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    """Translate a Qwen 3-shaped config into the fields of ``Qwen3Config`` / ``Qwen3MoeConfig``.

    Args:
        config: A config with RMSNorm, RoPE, QK-norm and a SwiGLU (dense) or ``"moe"``
            feed-forward.

    Returns:
        The ``config.json`` mapping; for MoE with ``decoder_sparse_step=1`` and
        ``mlp_only_layers=[]``.

    Raises:
        CompatibilityError: A field Qwen 3 cannot express, naming it.
    """
    if not config.qk_norm:
        raise CompatibilityError(
            "Qwen 3 normalizes queries and keys, but qk_norm=False",
            key="qk_norm",
            hint="set qk_norm=True, or save the model as a Llama",
        )
    if config.mlp_bias:
        raise CompatibilityError(
            "Qwen 3's feed-forward has no biases", key="mlp_bias", hint="set mlp_bias=False"
        )
    if config.is_moe:
        data = base_config_to_hf(config, architecture=MOE_ARCHITECTURE, model_type=MOE_MODEL_TYPE)
        data.update(
            num_experts=config.n_experts,
            num_experts_per_tok=config.experts_top_k,
            moe_intermediate_size=config.moe_d_ff,
            norm_topk_prob=config.norm_topk_prob,
            router_aux_loss_coef=config.router_aux_loss_coef,
            output_router_logits=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    elif config.ffn == "swiglu":
        data = base_config_to_hf(config, architecture=ARCHITECTURE, model_type=MODEL_TYPE)
    else:
        raise CompatibilityError(
            f"Qwen 3 cannot express ffn={config.ffn!r}",
            key="ffn",
            hint="Qwen 3 uses ffn='swiglu' (dense) or ffn='moe'",
        )
    data.pop("mlp_bias")
    qwen_vocab = config.vocab_size == 151936
    data.update(
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=config.n_layers,
        bos_token_id=151643 if qwen_vocab else None,
        eos_token_id=151645 if qwen_vocab else None,
    )
    return data
