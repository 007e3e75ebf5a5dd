"""Position-wise feed-forward networks: GPT-2's GELU MLP and the gated SwiGLU / GeGLU MLPs.

Each satisfies [`FeedForward`][lego.protocols.FeedForward]: ``ffn(x)`` maps
``(B, T, d_model)`` to ``(B, T, d_model)``, every position independently. Like
[`CausalSelfAttention`][lego.layers.CausalSelfAttention], each takes its projections as
sub-modules (so a LoRA-wrapped or quantized projection is a different argument, not a
different class), and a ``build(...)`` classmethod makes them as ``nn.Linear`` layers from
the sizes:

    >>> mlp = MLP.build(d_model=64, d_ff=256)                      # GPT-2: fc / proj
    >>> swiglu = SwiGLU.build(d_model=64, d_ff=176)                 # Llama: gate / up / down
    >>> custom = GatedMLP(gate_proj=nn.Linear(64, 96, bias=False),
    ...                   up_proj=nn.Linear(64, 96, bias=False),
    ...                   down_proj=nn.Linear(96, 64, bias=False), activation="relu")
    >>> custom(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 64])

Activations are named by string (see
[`get_activation()`][lego.layers.activations.get_activation]), so a config stays plain data.
Sub-module names follow transformers' GPT-2 (``fc``/``proj``, the roles of
``c_fc``/``c_proj``) and LLaMA (``gate_proj``/``up_proj``/``down_proj``).
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

import torch
from torch import nn

from lego.layers._tensor_checks import check_dim
from lego.layers.activations import canonical_activation, get_activation
from lego.protocols import ConfigError, check_int, check_probability

__all__ = ["MLP", "GatedMLP", "SwiGLU", "GeGLU"]

G = TypeVar("G", bound="GatedMLP")


def _features(module: nn.Module, name: str) -> int | None:
    """``in_features`` / ``out_features`` of a projection, or None for a module without."""
    value = getattr(module, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _same_size(owner: str, what: str, sizes: dict[str, int | None]) -> int | None:
    """The one size the projections agree on (None when none tells it).

    Raises:
        ConfigError: Two projections disagree on the size.
    """
    known = {name: size for name, size in sizes.items() if size is not None}
    if len(set(known.values())) > 1:
        listed = ", ".join(f"{name}={size}" for name, size in known.items())
        raise ConfigError(
            f"{owner}: the projections disagree on {what}: {listed}",
            key=next(iter(known)),
            hint=f"build every projection for the same {what}",
        )
    return next(iter(known.values()), None)


class MLP(nn.Module):
    """Two projections around an activation: ``proj(act(fc(x)))``, then dropout.

    GPT-2's MLP (``MLP.build(d_model=d, d_ff=4 * d)``: tanh-approximated GELU, biases).

    Args:
        fc: The first projection, ``(..., d_model) -> (..., d_ff)`` (GPT-2's ``c_fc``).
        proj: The second projection, ``(..., d_ff) -> (..., d_model)`` (GPT-2's ``c_proj``).
        activation: Activation name (``"gelu_tanh"``, ``"gelu"``, ``"relu"``, ...).
        dropout: Dropout probability on the output (GPT-2's ``resid_pdrop``), in ``[0, 1)``.

    Attributes:
        d_model: Width of the input and output, when the projections tell it
            (``in_features`` / ``out_features``), else None.
        d_ff: Width of the hidden layer, likewise.

    Raises:
        ConfigError: Projections whose sizes do not chain (``fc``'s output is not
            ``proj``'s input, or ``proj`` does not map back to ``fc``'s input width), an
            unknown activation or a dropout outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        fc: nn.Module,
        proj: nn.Module,
        activation: str = "gelu_tanh",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.d_model = _same_size(
            owner,
            "d_model",
            {"fc": _features(fc, "in_features"), "proj": _features(proj, "out_features")},
        )
        self.d_ff = _same_size(
            owner,
            "d_ff",
            {"fc": _features(fc, "out_features"), "proj": _features(proj, "in_features")},
        )
        self.activation = canonical_activation(activation)
        self.act = get_activation(self.activation)
        self.fc = fc
        self.proj = proj
        self.dropout = nn.Dropout(check_probability("dropout", dropout, owner=owner))

    @classmethod
    def build(
        cls,
        *,
        d_model: int,
        d_ff: int,
        activation: str = "gelu_tanh",
        bias: bool = True,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MLP:
        """Build the MLP with ``nn.Linear`` projections.

        Args:
            d_model: Width of the input and output.
            d_ff: Width of the hidden layer (GPT-2: ``4 * d_model``).
            activation: Activation name.
            bias: Biases on both projections.
            dropout: Dropout probability on the output, in ``[0, 1)``.
            device: Where to create the parameters.
            dtype: Dtype of the parameters.

        Returns:
            The MLP, with ``fc = nn.Linear(d_model, d_ff)`` and
            ``proj = nn.Linear(d_ff, d_model)``.

        Raises:
            ConfigError: ``d_model < 1``, ``d_ff < 1``, and everything the constructor
                raises.
        """
        check_int("d_model", d_model, minimum=1, owner=cls.__name__)
        check_int("d_ff", d_ff, minimum=1, owner=cls.__name__)
        factory = {"device": device, "dtype": dtype}
        return cls(
            fc=nn.Linear(d_model, d_ff, bias=bias, **factory),
            proj=nn.Linear(d_ff, d_model, bias=bias, **factory),
            activation=activation,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        """Apply the MLP to every position.

        Args:
            x: Input, shape ``(B, T, d_model)`` (any leading dimensions work).

        Returns:
            Output, shape ``(B, T, d_model)``.

        Raises:
            DataError: The last dimension of ``x`` is not ``d_model``.
        """
        check_dim(x, name="x", ndims=None, last=self.d_model, owner="MLP", layout="(B, T, d_model)")
        h = self.act(self.fc(x))  # (B, T, d_ff)
        out: torch.Tensor = self.dropout(self.proj(h))  # (B, T, d_model)
        return out

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"activation={self.activation!r}"


class GatedMLP(nn.Module):
    """A gated linear unit MLP: ``down_proj(act(gate_proj(x)) * up_proj(x))``, then dropout.

    With ``activation="silu"`` this is SwiGLU (LLaMA, Qwen, Mistral); with ``"gelu_tanh"``
    or ``"gelu"`` it is GeGLU (Gemma). Shazeer, "GLU Variants Improve Transformer" (2020).

    Args:
        gate_proj: The activated branch, ``(..., d_model) -> (..., d_ff)``.
        up_proj: The linear branch, ``(..., d_model) -> (..., d_ff)``.
        down_proj: ``(..., d_ff) -> (..., d_model)``.
        activation: Activation applied to the gate; None means the class's
            ``default_activation`` (``"silu"`` here).
        dropout: Dropout probability on the output, in ``[0, 1)``.

    Attributes:
        d_model: Width of the input and output, when the projections tell it
            (``in_features`` / ``out_features``), else None.
        d_ff: Width of the gated hidden layer (LLaMA's ``intermediate_size``), likewise.

    Raises:
        ConfigError: Projections whose sizes do not chain, an unknown activation (or one
            the class does not allow) or a dropout outside ``[0, 1)``.
    """

    default_activation: ClassVar[str] = "silu"
    """The activation used when none is given."""
    allowed_activations: ClassVar[tuple[str, ...] | None] = None
    """The canonical activation names the class accepts; None accepts every one."""

    def __init__(
        self,
        *,
        gate_proj: nn.Module,
        up_proj: nn.Module,
        down_proj: nn.Module,
        activation: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.d_model = _same_size(
            owner,
            "d_model",
            {
                "gate_proj": _features(gate_proj, "in_features"),
                "up_proj": _features(up_proj, "in_features"),
                "down_proj": _features(down_proj, "out_features"),
            },
        )
        self.d_ff = _same_size(
            owner,
            "d_ff",
            {
                "gate_proj": _features(gate_proj, "out_features"),
                "up_proj": _features(up_proj, "out_features"),
                "down_proj": _features(down_proj, "in_features"),
            },
        )
        self.activation = canonical_activation(
            self.default_activation if activation is None else activation
        )
        allowed = self.allowed_activations
        if allowed is not None and self.activation not in allowed:
            raise ConfigError(
                f"{owner}: the gate's activation is {' or '.join(map(repr, allowed))}, "
                f"got {activation!r}",
                key="activation",
                hint="for another activation build a GatedMLP",
            )
        self.act = get_activation(self.activation)
        self.gate_proj = gate_proj
        self.up_proj = up_proj
        self.down_proj = down_proj
        self.dropout = nn.Dropout(check_probability("dropout", dropout, owner=owner))

    @classmethod
    def build(
        cls: type[G],
        *,
        d_model: int,
        d_ff: int,
        activation: str | None = None,
        bias: bool = False,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> G:
        """Build the gated MLP with ``nn.Linear`` projections.

        Args:
            d_model: Width of the input and output.
            d_ff: Width of the gated hidden layer.
            activation: Activation of the gate; None means the class's
                ``default_activation``.
            bias: Biases on the three projections (LLaMA: False).
            dropout: Dropout probability on the output, in ``[0, 1)``.
            device: Where to create the parameters.
            dtype: Dtype of the parameters.

        Returns:
            The module, with ``gate_proj`` and ``up_proj`` ``nn.Linear(d_model, d_ff)`` and
            ``down_proj`` ``nn.Linear(d_ff, d_model)``.

        Raises:
            ConfigError: ``d_model < 1``, ``d_ff < 1``, and everything the constructor
                raises.
        """
        check_int("d_model", d_model, minimum=1, owner=cls.__name__)
        check_int("d_ff", d_ff, minimum=1, owner=cls.__name__)
        factory = {"device": device, "dtype": dtype}
        return cls(
            gate_proj=nn.Linear(d_model, d_ff, bias=bias, **factory),
            up_proj=nn.Linear(d_model, d_ff, bias=bias, **factory),
            down_proj=nn.Linear(d_ff, d_model, bias=bias, **factory),
            activation=activation,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor, /) -> torch.Tensor:
        """Apply the gated MLP to every position.

        Args:
            x: Input, shape ``(B, T, d_model)`` (any leading dimensions work).

        Returns:
            Output, shape ``(B, T, d_model)``.

        Raises:
            DataError: The last dimension of ``x`` is not ``d_model``.
        """
        check_dim(
            x,
            name="x",
            ndims=None,
            last=self.d_model,
            owner=type(self).__name__,
            layout="(B, T, d_model)",
        )
        gate = self.act(self.gate_proj(x))  # (B, T, d_ff)
        up = self.up_proj(x)  # (B, T, d_ff)
        out: torch.Tensor = self.dropout(self.down_proj(gate * up))  # (B, T, d_model)
        return out

    def extra_repr(self) -> str:
        """Describe the module in ``repr``."""
        return f"activation={self.activation!r}"


class SwiGLU(GatedMLP):
    """[`GatedMLP`][lego.layers.GatedMLP] with SiLU on the gate (LLaMA's feed-forward).

    Same arguments as ``GatedMLP``; the activation is ``"silu"`` (any other is refused).
    ``SwiGLU.build(d_model=..., d_ff=...)`` makes the ``nn.Linear`` projections.
    """

    default_activation: ClassVar[str] = "silu"
    allowed_activations: ClassVar[tuple[str, ...] | None] = ("silu",)


class GeGLU(GatedMLP):
    """[`GatedMLP`][lego.layers.GatedMLP] with GELU on the gate (Gemma's feed-forward).

    Same arguments as ``GatedMLP``; the activation is ``"gelu_tanh"`` (the default, Gemma's
    ``gelu_pytorch_tanh``) or ``"gelu"`` (exact erf GELU). ``GeGLU.build(d_model=...,
    d_ff=...)`` makes the ``nn.Linear`` projections.
    """

    default_activation: ClassVar[str] = "gelu_tanh"
    allowed_activations: ClassVar[tuple[str, ...] | None] = ("gelu_tanh", "gelu")
