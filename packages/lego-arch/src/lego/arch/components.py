"""The component registries: how a config's names become lego-layers modules.

A config says ``norm="rmsnorm"``, ``positions="rope"``, ``ffn="swiglu"``; the three
registries below map each name to a [`Component`][lego.arch.components.Component]: the
builder that makes the module from the config, and the defaults of the config fields the
component implies (``rmsnorm`` has ``norm_bias=False``, ``swiglu`` gates with
``activation="silu"``; see [`lego.arch.defaults`][lego.arch.defaults]). Reading them tells
exactly what each name builds:

    >>> NORMS["rmsnorm"].defaults
    {'norm_bias': False}
    >>> FFNS["moe"].defaults
    {'activation': 'silu', 'mlp_bias': False}

A ``register_*`` function adds a name for a custom brick (the config then accepts it, fills
its tied fields from ``defaults=``, and ``build()`` uses the builder); registering changes
the registry for the whole process::

    from lego.layers import LayerNorm

    register_norm(
        "layernorm_nobias",
        lambda config, dim: LayerNorm(dim=dim, eps=config.norm_eps, bias=False),
        defaults={"norm_bias": False},
    )
    lego.arch.build("gpt2-tiny", norm="layernorm_nobias")  # norm_bias=False follows

- [`NORMS`][lego.arch.components.NORMS]: builders ``(config, dim) -> norm module``;
- [`FFNS`][lego.arch.components.FFNS]: builders ``config -> feed-forward module``;
- [`POSITIONS`][lego.arch.components.POSITIONS]: builders ``config -> Positions`` (an additive
  position table for the embeddings and/or a rotary embedding for the attention).

[`build_block()`][lego.arch.components.build_block] assembles one pre-norm
[`TransformerBlock`][lego.layers.TransformerBlock] from these pieces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, NamedTuple, TypeVar

from torch import nn

from lego.arch.config import DecoderConfig
from lego.arch.defaults import Kind, component_defaults, set_component_defaults
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

__all__ = [
    "FFNS",
    "NORMS",
    "POSITIONS",
    "Component",
    "ComponentRegistry",
    "FFNBuilder",
    "NormBuilder",
    "PositionBuilder",
    "Positions",
    "ROPE_TABLE_LENGTH",
    "build_attention",
    "build_block",
    "build_norm",
    "build_positions",
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


NormBuilder = Callable[[DecoderConfig, int], nn.Module]
"""Builds a norm over the last dimension of size ``dim`` from the config."""
FFNBuilder = Callable[[DecoderConfig], nn.Module]
"""Builds a feed-forward ``(B, T, d_model) -> (B, T, d_model)`` from the config."""
PositionBuilder = Callable[[DecoderConfig], Positions]
"""Builds the position modules from the config."""

B = TypeVar("B", NormBuilder, FFNBuilder, PositionBuilder)


@dataclasses.dataclass(frozen=True)
class Component(Generic[B]):
    """One registered component: its builder and what it implies for the config.

    Attributes:
        builder: Makes the module(s) from a validated config.
        defaults: The value of every field tied to this kind of component that the
            component implies (``{"norm_bias": False}`` for ``rmsnorm``); a config that
            leaves such a field as None gets this value.
    """

    builder: B
    defaults: Mapping[str, object]


class ComponentRegistry(Mapping[str, Component[B]]):
    """The components of one kind by name: a read-only mapping (``register_*`` adds to it).

    Args:
        kind: ``"norm"``, ``"ffn"`` or ``"positions"``: the config field naming them.
        builders: The built-in builders by name (their defaults are in
            [`lego.arch.defaults`][lego.arch.defaults]).
    """

    def __init__(self, kind: Kind, builders: Mapping[str, B]) -> None:
        self.kind: Kind = kind
        self._builders: dict[str, B] = dict(builders)

    def __getitem__(self, name: str) -> Component[B]:
        """The component registered as ``name`` (``KeyError`` for an unknown name)."""
        defaults = component_defaults(self.kind, name)
        if name not in self._builders or defaults is None:
            raise KeyError(name)
        return Component(builder=self._builders[name], defaults=defaults)

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        """The number of registered names."""
        return len(self._builders)

    def __repr__(self) -> str:
        return f"ComponentRegistry({self.kind!r}, {list(self._builders)})"

    def _add(
        self, name: str, builder: B, defaults: Mapping[str, object] | None, replace: bool
    ) -> None:
        kind = self.kind
        given: object = name  # checked at run time: callers may pass anything
        if not isinstance(given, str) or not given:
            raise ConfigError(f"a {kind} name must be a non-empty string, got {name!r}", key=kind)
        if not callable(builder):
            raise ConfigError(
                f"the {kind} builder for {name!r} is not callable: {builder!r}", key=kind
            )
        if name in self._builders and not replace:
            raise ConfigError(
                f"{kind} {name!r} is already registered",
                key=kind,
                hint="pick another name, or pass replace=True to override it",
            )
        set_component_defaults(kind, name, defaults)  # checks the defaults first
        self._builders[name] = builder


# -- norms ----------------------------------------------------------------------------------


def _layernorm(config: DecoderConfig, dim: int) -> nn.Module:
    assert config.norm_bias is not None  # filled from the norm's defaults
    return LayerNorm(dim=dim, eps=config.norm_eps, bias=config.norm_bias)


def _rmsnorm(config: DecoderConfig, dim: int) -> nn.Module:
    return RMSNorm(dim=dim, eps=config.norm_eps)


NORMS: ComponentRegistry[NormBuilder] = ComponentRegistry(
    "norm", {"layernorm": _layernorm, "rmsnorm": _rmsnorm}
)
"""Norm names: ``"layernorm"`` (GPT-2; ``norm_bias`` True by default), ``"rmsnorm"`` (Llama,
Qwen; ``norm_bias=False``)."""


# -- feed-forwards --------------------------------------------------------------------------


def _gelu_mlp(config: DecoderConfig) -> nn.Module:
    assert config.activation is not None
    assert config.mlp_bias is not None
    return MLP.build(
        d_model=config.d_model, d_ff=config.d_ff, activation=config.activation, bias=config.mlp_bias
    )


def _gated_mlp(config: DecoderConfig) -> nn.Module:
    assert config.activation is not None
    assert config.mlp_bias is not None
    return GatedMLP.build(
        d_model=config.d_model, d_ff=config.d_ff, activation=config.activation, bias=config.mlp_bias
    )


def _moe(config: DecoderConfig) -> nn.Module:
    assert config.n_experts is not None  # DecoderConfig.validate checks the MoE fields
    assert config.experts_top_k is not None
    assert config.moe_d_ff is not None
    assert config.activation is not None  # tied: filled
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


FFNS: ComponentRegistry[FFNBuilder] = ComponentRegistry(
    "ffn", {"gelu_mlp": _gelu_mlp, "swiglu": _gated_mlp, "geglu": _gated_mlp, "moe": _moe}
)
"""Feed-forward names: ``"gelu_mlp"`` (GPT-2's two-layer [`MLP`][lego.layers.MLP], GELU by
default), ``"swiglu"`` / ``"geglu"`` (a [`GatedMLP`][lego.layers.GatedMLP] whose gate uses
``config.activation``: SiLU by default for SwiGLU, tanh GELU for GeGLU) and ``"moe"`` (a
[`MoEFeedForward`][lego.layers.MoEFeedForward] of top-k routed
[`GatedExperts`][lego.layers.GatedExperts], SiLU and no biases by default)."""


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


POSITIONS: ComponentRegistry[PositionBuilder] = ComponentRegistry(
    "positions", {"learned": _learned, "rope": _rope, "none": _no_positions}
)
"""Position schemes: ``"learned"`` (GPT-2's table of ``context_length`` rows), ``"rope"``
(rotary embeddings with ``rope_theta`` and ``rope_scaling``), ``"none"`` (NoPE)."""


# -- registration ---------------------------------------------------------------------------


def register_norm(
    name: str,
    builder: NormBuilder,
    *,
    defaults: Mapping[str, object] | None = None,
    replace: bool = False,
) -> None:
    """Make ``norm=name`` build ``builder(config, dim)``.

    Args:
        name: The name configs will use.
        builder: ``(config, dim) -> nn.Module`` mapping ``(..., dim)`` to ``(..., dim)``.
        defaults: What the norm implies for its tied field ``norm_bias`` (e.g.
            ``{"norm_bias": False}``); left out, ``norm_bias`` defaults to True.
        replace: Allow overriding an existing name.

    Raises:
        ConfigError: An empty name, a non-callable builder, a taken name without
            ``replace=True``, or a default for a field the norm does not tie.
    """
    NORMS._add(name, builder, defaults, replace)


def register_ffn(
    name: str,
    builder: FFNBuilder,
    *,
    defaults: Mapping[str, object] | None = None,
    replace: bool = False,
) -> None:
    """Make ``ffn=name`` build ``builder(config)``.

    Args:
        name: The name configs will use.
        builder: ``config -> nn.Module`` mapping ``(B, T, d_model)`` to ``(B, T, d_model)``.
        defaults: What the feed-forward implies for its tied fields ``activation`` and
            ``mlp_bias`` (e.g. ``{"activation": "silu", "mlp_bias": False}``); left out,
            they default to ``"gelu_tanh"`` and True.
        replace: Allow overriding an existing name.

    Raises:
        ConfigError: As [`register_norm()`][lego.arch.components.register_norm].
    """
    FFNS._add(name, builder, defaults, replace)


def register_positions(
    name: str,
    builder: PositionBuilder,
    *,
    defaults: Mapping[str, object] | None = None,
    replace: bool = False,
) -> None:
    """Make ``positions=name`` build ``builder(config)``.

    Args:
        name: The name configs will use.
        builder: ``config -> Positions``.
        defaults: What the scheme implies for the fields tied to positions; no config field
            is tied to positions today, so it must be empty (or None).
        replace: Allow overriding an existing name.

    Raises:
        ConfigError: As [`register_norm()`][lego.arch.components.register_norm].
    """
    POSITIONS._add(name, builder, defaults, replace)


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


def build_norm(config: DecoderConfig, dim: int) -> nn.Module:
    """Build the config's norm over a last dimension of size ``dim``.

    Args:
        config: The model config.
        dim: The normalized width (``d_model`` for the blocks' and the final norm).

    Returns:
        ``NORMS[config.norm].builder(config, dim)``.
    """
    return NORMS[config.norm].builder(config, dim)


def build_positions(config: DecoderConfig) -> Positions:
    """Build the config's position modules.

    Args:
        config: The model config.

    Returns:
        ``POSITIONS[config.positions].builder(config)``.
    """
    return POSITIONS[config.positions].builder(config)


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
        attention_norm=build_norm(config, config.d_model),
        feed_forward=FFNS[config.ffn].builder(config),
        ffn_norm=build_norm(config, config.d_model),
        norm_position="pre",
        dropout=config.dropout,
    )
