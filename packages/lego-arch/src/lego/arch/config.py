"""One configuration for every decoder-only family: ``DecoderConfig``.

A GPT-2, a Llama 3 and a Qwen 3 differ only in data: which norm, which positions, which
feed-forward, which biases, how many heads share a key/value head. So one frozen dataclass
describes them all, and the components are named by string (``norm="rmsnorm"``,
``positions="rope"``, ``ffn="swiglu"``) and resolved through the registries of
[`lego.arch.components`][lego.arch.components] when the model is built. A config is plain data:
``to_dict()`` / ``from_dict()`` / ``to_json()`` / ``from_json()`` round-trip it exactly. The
dictionary form holds only strings, numbers, booleans, None, lists and mappings, so it is
YAML-ready too (``yaml.safe_dump(config.to_dict())`` and ``DecoderConfig.from_dict(
yaml.safe_load(text))``; PyYAML is not a dependency of this brick).

Swapping a brick is one field: ``config.replace(norm="rmsnorm")`` turns LayerNorm into
RMSNorm, ``n_kv_heads=2`` turns multi-head attention into grouped-query attention,
``positions="rope"`` replaces the learned table by rotary embeddings, ``ffn="swiglu"`` turns
the GELU MLP into SwiGLU, ``ffn="moe"`` (with the ``n_experts`` / ``experts_top_k`` /
``moe_d_ff`` fields) replaces it by a mixture of experts.

A component name carries the defaults of the fields that belong to it (its *tied* fields,
[`lego.arch.defaults`][lego.arch.defaults]): ``norm_bias`` follows the norm, ``activation``
and ``mlp_bias`` follow the feed-forward. Left as None they take the component's default,
so a config never holds None there, and ``replace()`` of a component moves every tied field
that still holds the old component's default to the new one's:

    >>> gpt2 = DecoderConfig(vocab_size=1000, context_length=128, d_model=64, n_layers=2,
    ...                      n_heads=4, d_ff=256)
    >>> gpt2.norm_bias, gpt2.activation
    (True, 'gelu_tanh')
    >>> swapped = gpt2.replace(norm="rmsnorm", ffn="swiglu")
    >>> swapped.norm_bias, swapped.activation     # RMSNorm has no bias; SwiGLU gates with SiLU
    (False, 'silu')
    >>> gpt2.replace(ffn="swiglu", activation="gelu_tanh").activation  # given: kept (GeGLU)
    'gelu_tanh'
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, TypeVar

import torch

from lego.arch.defaults import KINDS, TIED_FIELDS, component_defaults, component_names
from lego.layers import get_activation, rope_scaling_from_dict
from lego.protocols import (
    ConfigError,
    ModelConfig,
    check_choice,
    check_float,
    check_int,
    check_probability,
    did_you_mean,
)

__all__ = ["DTYPES", "DecoderConfig", "Family", "parse_dtype"]

D = TypeVar("D", bound="DecoderConfig")

Family = Literal["gpt2", "llama", "qwen3", "custom"]
"""The model families lego-arch knows; ``"custom"`` for anything assembled by hand."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}
"""Dtype names accepted wherever lego-arch takes a dtype as a string (HF's ``torch_dtype``
spelling included)."""


def parse_dtype(value: str | torch.dtype | None, *, key: str = "dtype") -> torch.dtype | None:
    """Turn a dtype name (``"bf16"``, ``"bfloat16"``, ``"torch.float32"``) into a torch dtype.

    Args:
        value: A name from [`DTYPES`][lego.arch.config.DTYPES] (an optional ``"torch."``
            prefix is accepted), a ``torch.dtype`` (returned as it is) or None (returned as
            None).
        key: The option or field the value came from, quoted in the error.

    Returns:
        The dtype, or None.

    Raises:
        ConfigError: An unknown name (with the closest valid ones) or a non-floating dtype.
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        dtype = value
    else:
        name = str(value).strip().lower().removeprefix("torch.")
        if name not in DTYPES:
            raise ConfigError(
                f"unknown dtype {value!r}",
                key=key,
                hint=did_you_mean(name, DTYPES),
            )
        dtype = DTYPES[name]
    if not dtype.is_floating_point:
        raise ConfigError(
            f"model weights need a floating-point dtype, got {dtype}",
            key=key,
            hint="use float32, bfloat16 or float16",
        )
    return dtype


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig(ModelConfig):
    """Everything needed to build a decoder-only transformer, as data.

    Attributes:
        family: ``"gpt2"``, ``"llama"``, ``"qwen3"`` or ``"custom"``; tells which HF
            architecture a model maps to.
        vocab_size: Rows of the token embedding.
        context_length: The longest sequence: the size of a learned position table, the
            largest KV cache, HF's ``max_position_embeddings``.
        d_model: Width of the residual stream (HF ``hidden_size``).
        n_layers: Number of transformer blocks.
        n_heads: Query heads.
        n_kv_heads: Key/value heads (divides ``n_heads``): ``n_heads`` is multi-head
            attention, fewer is grouped-query attention, 1 is multi-query. None means
            ``n_heads``.
        head_dim: Size of each head; None means ``d_model // n_heads`` (Qwen 3 sets it
            independently of the width).
        d_ff: Hidden width of the dense feed-forward (HF ``intermediate_size``; with
            ``ffn="moe"`` it is kept for the HF config but no dense layer uses it).
        norm: Norm name in [`NORMS`][lego.arch.components.NORMS] (``"layernorm"``,
            ``"rmsnorm"``).
        norm_eps: The norms' epsilon (also QK-norm's).
        norm_bias: Norms with a bias. Tied to ``norm``: None means the norm's default
            (``"layernorm"``: True, ``"rmsnorm"``: False, and RMSNorm refuses True).
        positions: Position scheme in [`POSITIONS`][lego.arch.components.POSITIONS]
            (``"learned"``, ``"rope"``, ``"none"``).
        rope_theta: RoPE's base.
        rope_scaling: RoPE scaling in HF's ``rope_scaling`` shape (e.g. ``{"rope_type":
            "llama3", "factor": 32.0, ...}``), or None.
        ffn: Feed-forward name in [`FFNS`][lego.arch.components.FFNS] (``"gelu_mlp"``,
            ``"swiglu"``, ``"geglu"``, ``"moe"``).
        activation: Activation of the feed-forward (transformers' aliases such as
            ``"gelu_new"`` are accepted; see ``lego.layers.ACTIVATIONS``). Tied to ``ffn``:
            None means the feed-forward's default (``"gelu_mlp"`` and ``"geglu"``:
            ``"gelu_tanh"``, ``"swiglu"`` and ``"moe"``: ``"silu"``).
        mlp_bias: Biases on the feed-forward projections. Tied to ``ffn``: None means the
            feed-forward's default (True, but False for ``"moe"``, whose experts have none).
        attention_bias: Biases on the query/key/value projections.
        out_bias: Bias on the attention output projection.
        fused_qkv: One ``qkv_proj`` (GPT-2's ``c_attn``) instead of ``q_proj`` / ``k_proj`` /
            ``v_proj``.
        qk_norm: RMS-normalize queries and keys per head before RoPE (Qwen 3).
        sliding_window: Each token attends to at most this many previous positions, or None.
        tie_embeddings: The output head shares the token embedding's weight.
        n_experts: Routed experts per MoE layer (``ffn="moe"`` only).
        experts_top_k: Experts per token (``ffn="moe"`` only).
        moe_d_ff: Hidden width of each expert (``ffn="moe"`` only).
        norm_topk_prob: Renormalize the top-k routing weights to sum to 1 (``ffn="moe"``).
        router_aux_loss_coef: Weight of the load-balancing loss in ``DecoderLM.aux_loss``.
        dropout: Dropout on the embeddings, the attention probabilities and each residual
            branch (training mode only), in ``[0, 1)``.
        attention_backend: ``"sdpa"`` (``scaled_dot_product_attention``) or ``"math"``.
        initializer_range: Standard deviation of the normal initialization of every matrix.
        scale_residual_init: Draw the residual projections (``out_proj``, ``proj``,
            ``down_proj``) from ``N(0, initializer_range / sqrt(2 * n_layers))`` (GPT-2).

    Tied fields. ``norm_bias``, ``activation`` and ``mlp_bias`` belong to a component (see
    [`lego.arch.defaults`][lego.arch.defaults]). Given as None (their default) they are
    filled with the component's default when the config is built, so ``to_dict()`` and
    ``to_hf`` always see concrete values. [`replace()`][lego.arch.config.DecoderConfig.replace]
    of ``norm``, ``ffn`` or ``positions`` moves each tied field that still holds the old
    component's default to the new component's default, unless the same call gives it.

    Raises:
        ConfigError: Any field of the wrong type or a combination that cannot work
            (see [`validate()`][lego.arch.config.DecoderConfig.validate]).

    Example:
        >>> config = DecoderConfig(vocab_size=1000, context_length=128, d_model=64,
        ...                        n_layers=2, n_heads=4, d_ff=256)
        >>> llama_like = config.replace(norm="rmsnorm", positions="rope", ffn="swiglu")
        >>> llama_like.norm_bias, llama_like.activation, llama_like.head_size
        (False, 'silu', 16)
    """

    family: Family = "custom"
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_bias: bool | None = None
    positions: str = "learned"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    ffn: str = "gelu_mlp"
    activation: str | None = None
    mlp_bias: bool | None = None
    attention_bias: bool = True
    out_bias: bool = True
    fused_qkv: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    tie_embeddings: bool = True
    n_experts: int | None = None
    experts_top_k: int | None = None
    moe_d_ff: int | None = None
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.001
    dropout: float = 0.0
    attention_backend: Literal["sdpa", "math"] = "sdpa"
    initializer_range: float = 0.02
    scale_residual_init: bool = False

    # -- tied fields -------------------------------------------------------------------

    def __post_init__(self) -> None:
        """Fill each tied field left as None with its component's default, then validate."""
        for kind in KINDS:
            name = self.__dict__[kind]
            defaults = component_defaults(kind, name) if isinstance(name, str) else None
            for field, value in (defaults or {}).items():  # an unknown name: validate() says
                if self.__dict__[field] is None:
                    object.__setattr__(self, field, value)
        super().__post_init__()

    def replace(self: D, **changes: Any) -> D:
        """Return a copy with some fields changed, validated like a new config.

        Changing a component (``norm``, ``ffn``, ``positions``) also moves every field tied
        to it that still holds the old component's default to the new component's default,
        unless ``changes`` gives that field too: ``replace(ffn="swiglu")`` of a GELU MLP
        gives SiLU, ``replace(norm="rmsnorm")`` of a biased LayerNorm gives
        ``norm_bias=False``.

        Args:
            **changes: Field names to new values.

        Returns:
            The new config.

        Raises:
            ConfigError: On an unknown field name or an invalid value.
        """
        for kind in KINDS:
            new = changes.get(kind, self.__dict__[kind])
            if new == self.__dict__[kind]:
                continue
            old = component_defaults(kind, self.__dict__[kind]) or {}
            for field in TIED_FIELDS[kind]:
                if field not in changes and field in old and self.__dict__[field] == old[field]:
                    changes[field] = None  # the new component's default, filled on build
        return super().replace(**changes)

    # -- derived sizes -----------------------------------------------------------------

    @property
    def head_size(self) -> int:
        """The size of each head: ``head_dim``, or ``d_model // n_heads`` when it is None."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads: ``n_kv_heads``, or ``n_heads`` when it is None."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def is_moe(self) -> bool:
        """Whether the feed-forward is a mixture of experts."""
        return self.ffn == "moe"

    # -- validation --------------------------------------------------------------------

    def validate(self) -> None:
        """Check the rules that involve several fields (every cross-field rule is here).

        Raises:
            ConfigError: Sizes below 1; ``n_heads`` not dividing ``d_model`` without a
                ``head_dim``; ``n_kv_heads`` not dividing ``n_heads``; an unknown norm,
                positions, feed-forward or activation name (with the closest valid ones);
                a RoPE scaling mapping that cannot be used; an odd head size with RoPE; MoE
                fields missing with ``ffn="moe"`` or given without it;
                ``experts_top_k > n_experts``; a bias on RMSNorm or on the experts
                (``ffn="moe"`` with ``mlp_bias=True``); a dropout outside ``[0, 1)``; a
                non-positive epsilon, theta or initializer range; a negative
                ``router_aux_loss_coef``.
        """
        super().validate()
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("n_kv_heads", "head_dim", "sliding_window"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=1)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}",
                key="n_heads",
                hint="choose n_heads dividing d_model, or set head_dim explicitly",
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.kv_heads} does not divide n_heads={self.n_heads}",
                key="n_kv_heads",
                hint="each key/value head serves the same number of query heads: pick a "
                "divisor of n_heads (n_heads for MHA, 1 for MQA)",
            )
        for kind in KINDS:
            check_choice(kind, getattr(self, kind), component_names(kind))
        assert self.activation is not None  # filled from the (known) feed-forward's defaults
        get_activation(self.activation)  # raises ConfigError with the closest names
        if self.norm == "rmsnorm" and self.norm_bias:
            raise ConfigError(
                "norm='rmsnorm' has no bias but norm_bias=True",
                key="norm_bias",
                hint="leave norm_bias unset (or False), or use norm='layernorm'",
            )
        for name in ("norm_eps", "rope_theta", "initializer_range"):
            check_float(name, getattr(self, name), low=0.0, low_open=True)
        check_probability("dropout", self.dropout, hint="0.0 disables dropout; GPT-2 used 0.1")
        check_float("router_aux_loss_coef", self.router_aux_loss_coef, low=0.0)
        if self.positions == "rope":
            if self.head_size % 2:
                raise ConfigError(
                    f"rotary embeddings rotate pairs of dimensions, but head_dim is "
                    f"{self.head_size}",
                    key="head_dim",
                    hint="use an even head size with positions='rope'",
                )
            rope_scaling_from_dict(self.rope_scaling)  # raises ConfigError on a bad mapping
        self._validate_moe()

    def _validate_moe(self) -> None:
        moe_fields = ("n_experts", "experts_top_k", "moe_d_ff")
        if self.is_moe:
            for name in moe_fields:
                value = getattr(self, name)
                if value is None:
                    raise ConfigError(
                        f"ffn='moe' needs {name}",
                        key=name,
                        hint="a mixture of experts needs n_experts, experts_top_k and moe_d_ff",
                    )
                check_int(name, value, minimum=1)
            assert self.n_experts is not None
            assert self.experts_top_k is not None
            if self.experts_top_k > self.n_experts:
                raise ConfigError(
                    f"experts_top_k={self.experts_top_k} exceeds n_experts={self.n_experts}",
                    key="experts_top_k",
                    hint="a token can be routed to at most n_experts experts",
                )
            if self.mlp_bias:
                raise ConfigError(
                    "ffn='moe' builds experts without biases but mlp_bias=True",
                    key="mlp_bias",
                    hint="leave mlp_bias unset (or False) for a mixture of experts",
                )
            return
        for name in moe_fields:
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"{name} is set but ffn={self.ffn!r} is not a mixture of experts",
                    key=name,
                    hint=f"set ffn='moe', or leave {name} as None",
                )
