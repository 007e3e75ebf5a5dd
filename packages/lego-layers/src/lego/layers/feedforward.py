"""Position-wise feed-forward networks: GPT-2's GELU MLP and the gated SwiGLU / GeGLU MLPs.

Each satisfies [`FeedForward`][lego.protocols.FeedForward]: ``ffn(x)`` maps
``(B, T, d_model)`` to ``(B, T, d_model)``, every position independently. Activations are
named by string (see [`get_activation()`][lego.layers.activations.get_activation]), so a
config stays plain data. Sub-module names follow transformers' GPT-2 (``fc``/``proj``, the
roles of ``c_fc``/``c_proj``) and LLaMA (``gate_proj``/``up_proj``/``down_proj``).
"""

from __future__ import annotations

import torch
from torch import nn

from lego.layers._checks import check_dim, check_int_at_least, check_probability
from lego.layers.activations import canonical_activation, get_activation

__all__ = ["MLP", "GatedMLP", "SwiGLU", "GeGLU"]


class MLP(nn.Module):
    """Two linear layers around an activation: ``proj(dropout?(act(fc(x))))``, then dropout.

    GPT-2's MLP with the defaults (``d_ff = 4 * d_model``, tanh-approximated GELU, biases).

    Args:
        d_model: Width of the input and output.
        d_ff: Width of the hidden layer.
        activation: Activation name (``"gelu_tanh"``, ``"gelu"``, ``"relu"``, ...).
        bias: Biases on both linear layers.
        dropout: Dropout probability on the output (GPT-2's ``resid_pdrop``), in ``[0, 1)``.

    Attributes:
        fc: ``nn.Linear(d_model, d_ff)``.
        proj: ``nn.Linear(d_ff, d_model)``.

    Raises:
        ConfigError: ``d_model < 1``, ``d_ff < 1``, an unknown activation or a dropout
            outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: str = "gelu_tanh",
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.d_model = check_int_at_least("d_model", d_model, 1, owner="MLP")
        self.d_ff = check_int_at_least("d_ff", d_ff, 1, owner="MLP")
        self.activation = canonical_activation(activation)
        self.act = get_activation(self.activation)
        self.fc = nn.Linear(d_model, d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(check_probability("dropout", dropout, owner="MLP"))

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
    """A gated linear unit MLP: ``down_proj(act(gate_proj(x)) * up_proj(x))``.

    With ``activation="silu"`` this is SwiGLU (LLaMA, Qwen, Mistral); with ``"gelu_tanh"``
    or ``"gelu"`` it is GeGLU (Gemma). Shazeer, "GLU Variants Improve Transformer" (2020).

    Args:
        d_model: Width of the input and output.
        d_ff: Width of the gated hidden layer (LLaMA's ``intermediate_size``).
        activation: Activation applied to the gate.
        bias: Biases on the three linear layers (LLaMA: False).
        dropout: Dropout probability on the output, in ``[0, 1)``.

    Attributes:
        gate_proj: ``nn.Linear(d_model, d_ff)``, the activated branch.
        up_proj: ``nn.Linear(d_model, d_ff)``, the linear branch.
        down_proj: ``nn.Linear(d_ff, d_model)``.

    Raises:
        ConfigError: ``d_model < 1``, ``d_ff < 1``, an unknown activation or a dropout
            outside ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        activation: str = "silu",
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.d_model = check_int_at_least("d_model", d_model, 1, owner=owner)
        self.d_ff = check_int_at_least("d_ff", d_ff, 1, owner=owner)
        self.activation = canonical_activation(activation)
        self.act = get_activation(self.activation)
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(check_probability("dropout", dropout, owner=owner))

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

    Args:
        d_model: Width of the input and output.
        d_ff: Width of the gated hidden layer.
        bias: Biases on the three linear layers.
        dropout: Dropout probability on the output, in ``[0, 1)``.
    """

    def __init__(
        self, *, d_model: int, d_ff: int, bias: bool = False, dropout: float = 0.0
    ) -> None:
        super().__init__(d_model=d_model, d_ff=d_ff, activation="silu", bias=bias, dropout=dropout)


class GeGLU(GatedMLP):
    """[`GatedMLP`][lego.layers.GatedMLP] with GELU on the gate (Gemma's feed-forward).

    Args:
        d_model: Width of the input and output.
        d_ff: Width of the gated hidden layer.
        approximate: Use the tanh approximation (Gemma's ``gelu_pytorch_tanh``) rather than
            the exact erf GELU.
        bias: Biases on the three linear layers.
        dropout: Dropout probability on the output, in ``[0, 1)``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        d_ff: int,
        approximate: bool = True,
        bias: bool = False,
        dropout: float = 0.0,
    ) -> None:
        activation = "gelu_tanh" if approximate else "gelu"
        super().__init__(
            d_model=d_model, d_ff=d_ff, activation=activation, bias=bias, dropout=dropout
        )
