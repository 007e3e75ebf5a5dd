"""String-to-builder registries: how a config names its bricks.

A config says ``norm="rmsnorm"``, ``positions="rope"``, ``ffn="swiglu"``; the three
registries below turn those names into lego-layers modules. They are plain dictionaries, so
reading them tells exactly what each name builds, and a ``register_*`` function adds a name
for a custom brick (the config then accepts it, and ``build()`` uses it):

    >>> from lego.layers import LayerNorm
    >>> register_norm("layernorm_nobias", lambda config, dim: LayerNorm(dim=dim, bias=False))

- [`NORMS`][lego.arch.components.NORMS]: ``(config, dim) -> norm module``;
- [`FFNS`][lego.arch.components.FFNS]: ``config -> feed-forward module``;
- [`POSITIONS`][lego.arch.components.POSITIONS]: ``config -> Positions`` (an additive
  position table for the embeddings and/or a rotary embedding for the attention).

[`build_block()`][lego.arch.components.build_block] assembles one pre-norm
[`TransformerBlock`][lego.layers.TransformerBlock] from these pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from torch import nn

from lego.layers import (
    MLP,
    CausalSelfAttention,
    GatedExperts,
    GatedMLP,
    LayerNorm,
    LearnedPositionalEmbedding,
    MoEFeedForward,
    RMSNorm,
    RotaryEmbedding,
    TopKRouter,
    TransformerBlock,
    rope_scaling_from_dict,
)
from lego.protocols import ConfigError

if TYPE_CHECKING:
    from lego.arch.config import DecoderConfig

__all__ = [
    "FFNS",
    "NORMS",
    "POSITIONS",
    "FFNBuilder",
    "NormBuilder",
    "PositionBuilder",
    "Positions",
    "ROPE_TABLE_LENGTH",
    "build_attention",
    "build_block",
    "register_ffn",
    "register_norm",
    "register_positions",
]

ROPE_TABLE_LENGTH = 8192
"""Initial length of the rotary cos/sin tables (they grow on demand up to any position)."""


class Positions(NamedTuple):
    """What a position scheme contributes to the model.

    Attributes:
        embedding: A module adding position vectors to the token embeddings,
            ``(B, T, d_model) -> (B, T, d_model)`` with a ``position_ids`` keyword
            (GPT-2's learned table), or None.
        rotary: A rotary embedding shared by every attention layer, or None.
    """

    embedding: nn.Module | None
    rotary: RotaryEmbedding | None


NormBuilder = Callable[["DecoderConfig", int], nn.Module]
"""Builds a norm over the last dimension of size ``dim`` from the config."""
FFNBuilder = Callable[["DecoderConfig"], nn.Module]
"""Builds a feed-forward ``(B, T, d_model) -> (B, T, d_model)`` from the config."""
PositionBuilder = Callable[["DecoderConfig"], Positions]
"""Builds the position modules from the config."""


# -- norms ----------------------------------------------------------------------------------


def _layernorm(config: DecoderConfig, dim: int) -> nn.Module:
    return LayerNorm(dim=dim, eps=config.norm_eps, bias=config.norm_bias)


def _rmsnorm(config: DecoderConfig, dim: int) -> nn.Module:
    return RMSNorm(dim=dim, eps=config.norm_eps)


NORMS: dict[str, NormBuilder] = {"layernorm": _layernorm, "rmsnorm": _rmsnorm}
"""Norm names: ``"layernorm"`` (GPT-2, optional bias), ``"rmsnorm"`` (Llama, Qwen)."""


# -- feed-forwards --------------------------------------------------------------------------


def _gelu_mlp(config: DecoderConfig) -> nn.Module:
    return MLP(
        d_model=config.d_model, d_ff=config.d_ff, activation=config.activation, bias=config.mlp_bias
    )


def _gated_mlp(config: DecoderConfig) -> nn.Module:
    return GatedMLP(
        d_model=config.d_model, d_ff=config.d_ff, activation=config.activation, bias=config.mlp_bias
    )


def _moe(config: DecoderConfig) -> nn.Module:
    assert config.n_experts is not None  # DecoderConfig.validate checks the MoE fields
    assert config.experts_top_k is not None
    assert config.moe_d_ff is not None
    if config.mlp_bias:
        raise ConfigError(
            "ffn='moe' builds experts without biases but mlp_bias=True",
            key="mlp_bias",
            hint="set mlp_bias=False for a mixture of experts",
        )
    router = TopKRouter(
        d_model=config.d_model,
        n_experts=config.n_experts,
        top_k=config.experts_top_k,
        norm_topk_prob=config.norm_topk_prob,
    )
    experts = GatedExperts(
        n_experts=config.n_experts,
        d_model=config.d_model,
        d_ff=config.moe_d_ff,
        activation=config.activation,
    )
    return MoEFeedForward(router=router, experts=experts, aux_loss_coef=config.router_aux_loss_coef)


FFNS: dict[str, FFNBuilder] = {
    "gelu_mlp": _gelu_mlp,
    "swiglu": _gated_mlp,
    "geglu": _gated_mlp,
    "moe": _moe,
}
"""Feed-forward names: ``"gelu_mlp"`` (GPT-2's two-layer [`MLP`][lego.layers.MLP]),
``"swiglu"`` / ``"geglu"`` (a [`GatedMLP`][lego.layers.GatedMLP] whose gate uses
``config.activation``: ``"silu"`` for SwiGLU, ``"gelu_tanh"`` for GeGLU) and ``"moe"``
(a [`MoEFeedForward`][lego.layers.MoEFeedForward] of top-k routed
[`GatedExperts`][lego.layers.GatedExperts])."""


# -- positions ------------------------------------------------------------------------------


def _learned(config: DecoderConfig) -> Positions:
    table = LearnedPositionalEmbedding(max_seq_len=config.context_length, d_model=config.d_model)
    return Positions(embedding=table, rotary=None)


def _rope(config: DecoderConfig) -> Positions:
    rotary = RotaryEmbedding(
        head_dim=config.head_size,
        base=config.rope_theta,
        max_seq_len=min(config.context_length, ROPE_TABLE_LENGTH),
        scaling=rope_scaling_from_dict(config.rope_scaling),
    )
    return Positions(embedding=None, rotary=rotary)


def _no_positions(config: DecoderConfig) -> Positions:
    return Positions(embedding=None, rotary=None)


POSITIONS: dict[str, PositionBuilder] = {
    "learned": _learned,
    "rope": _rope,
    "none": _no_positions,
}
"""Position schemes: ``"learned"`` (GPT-2's table of ``context_length`` rows), ``"rope"``
(rotary embeddings with ``rope_theta`` and ``rope_scaling``), ``"none"`` (NoPE)."""


# -- registration ---------------------------------------------------------------------------


def _register(
    kind: str, table: dict[str, object], name: object, builder: object, *, replace: bool
) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {kind} name must be a non-empty string, got {name!r}", key=kind)
    if not callable(builder):
        raise ConfigError(f"the {kind} builder for {name!r} is not callable: {builder!r}", key=kind)
    if name in table and not replace:
        raise ConfigError(
            f"{kind} {name!r} is already registered",
            key=kind,
            hint="pick another name, or pass replace=True to override it",
        )
    table[name] = builder


def register_norm(name: str, builder: NormBuilder, *, replace: bool = False) -> None:
    """Make ``norm=name`` build ``builder(config, dim)``.

    Args:
        name: The name configs will use.
        builder: ``(config, dim) -> nn.Module`` mapping ``(..., dim)`` to ``(..., dim)``.
        replace: Allow overriding an existing name.

    Raises:
        ConfigError: An empty name, a non-callable builder, or a taken name without
            ``replace=True``.
    """
    _register("norm", NORMS, name, builder, replace=replace)  # type: ignore[arg-type]


def register_ffn(name: str, builder: FFNBuilder, *, replace: bool = False) -> None:
    """Make ``ffn=name`` build ``builder(config)``.

    Args:
        name: The name configs will use.
        builder: ``config -> nn.Module`` mapping ``(B, T, d_model)`` to ``(B, T, d_model)``.
        replace: Allow overriding an existing name.

    Raises:
        ConfigError: As [`register_norm()`][lego.arch.components.register_norm].
    """
    _register("ffn", FFNS, name, builder, replace=replace)  # type: ignore[arg-type]


def register_positions(name: str, builder: PositionBuilder, *, replace: bool = False) -> None:
    """Make ``positions=name`` build ``builder(config)``.

    Args:
        name: The name configs will use.
        builder: ``config -> Positions``.
        replace: Allow overriding an existing name.

    Raises:
        ConfigError: As [`register_norm()`][lego.arch.components.register_norm].
    """
    _register("positions", POSITIONS, name, builder, replace=replace)  # type: ignore[arg-type]


# -- assembling a block ---------------------------------------------------------------------


def build_attention(config: DecoderConfig, rotary: RotaryEmbedding | None) -> CausalSelfAttention:
    """Build one attention layer as the config describes.

    Args:
        config: The model config.
        rotary: The shared rotary embedding, or None.

    Returns:
        A [`CausalSelfAttention`][lego.layers.CausalSelfAttention] with ``qkv_proj`` (fused)
        or ``q_proj``/``k_proj``/``v_proj``, ``out_proj`` and optional QK-norm.
    """
    return CausalSelfAttention.build(
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_kv_heads=config.kv_heads,
        head_dim=config.head_size,
        fused_qkv=config.fused_qkv,
        bias=config.attention_bias,
        out_bias=config.out_bias,
        qk_norm=config.qk_norm,
        qk_norm_eps=config.norm_eps,
        rotary=rotary,
        sliding_window=config.sliding_window,
        backend=config.attention_backend,
        dropout=config.dropout,
    )


def build_block(config: DecoderConfig, rotary: RotaryEmbedding | None) -> TransformerBlock:
    """Build one pre-norm transformer block: ``h = x + attn(norm(x))``, ``y = h + ffn(norm(h))``.

    Args:
        config: The model config.
        rotary: The shared rotary embedding, or None.

    Returns:
        The block, with sub-modules ``attention_norm``, ``attention``, ``ffn_norm`` and
        ``feed_forward``.
    """
    return TransformerBlock(
        attention=build_attention(config, rotary),
        attention_norm=NORMS[config.norm](config, config.d_model),
        feed_forward=FFNS[config.ffn](config),
        ffn_norm=NORMS[config.norm](config, config.d_model),
        norm_position="pre",
        dropout=config.dropout,
    )
