"""Activation functions by name, so configs stay plain data (``activation="silu"``).

The registry holds the activations transformer feed-forwards use; transformers' names for
the same functions are accepted as aliases (``"gelu_new"`` and ``"gelu_pytorch_tanh"`` are
GPT-2's tanh approximation, ``"swish"`` is SiLU), so a Hugging Face ``hidden_act`` resolves
directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from lego.protocols import ConfigError, did_you_mean

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_ALIASES",
    "Activation",
    "get_activation",
    "canonical_activation",
]

Activation = Callable[[torch.Tensor], torch.Tensor]
"""An elementwise function from a tensor to a tensor of the same shape and dtype."""


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the exact erf form: ``x * Phi(x)`` (BERT, Gemma's GeGLU variants)."""
    return F.gelu(x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (GPT-2): ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return F.gelu(x, approximate="tanh")


def silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU / swish: ``x * sigmoid(x)`` (LLaMA's SwiGLU)."""
    return F.silu(x)


def relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU: ``max(x, 0)`` (the original transformer, OPT)."""
    return F.relu(x)


def relu2(x: torch.Tensor) -> torch.Tensor:
    """Squared ReLU: ``max(x, 0) ** 2`` (Primer, Nemotron)."""
    return F.relu(x).square()


ACTIVATIONS: Mapping[str, Activation] = MappingProxyType(
    {"gelu": gelu, "gelu_tanh": gelu_tanh, "silu": silu, "relu": relu, "relu2": relu2}
)
"""The canonical activation names and their functions (read-only)."""

ACTIVATION_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "gelu_new": "gelu_tanh",
        "gelu_pytorch_tanh": "gelu_tanh",
        "gelu_fast": "gelu_tanh",
        "swish": "silu",
        "relu_squared": "relu2",
    }
)
"""Other names (mostly transformers' ``hidden_act`` values) mapped to canonical names."""


def canonical_activation(name: str) -> str:
    """Return the canonical name of an activation, resolving aliases.

    Args:
        name: A canonical name or an alias, e.g. ``"gelu_new"``.

    Returns:
        The canonical name, e.g. ``"gelu_tanh"``.

    Raises:
        ConfigError: The name is unknown; the hint suggests the closest valid names.
    """
    if not isinstance(name, str):
        raise ConfigError(
            f"an activation must be named by a string, got {type(name).__name__} {name!r}",
            key="activation",
            hint="valid names: " + ", ".join(sorted(ACTIVATIONS)),
        )
    if name in ACTIVATIONS:
        return name
    if name in ACTIVATION_ALIASES:
        return ACTIVATION_ALIASES[name]
    raise ConfigError(
        f"unknown activation {name!r}",
        key="activation",
        hint=did_you_mean(name, [*ACTIVATIONS, *ACTIVATION_ALIASES]),
    )


def get_activation(name: str) -> Activation:
    """Return the activation function registered under ``name`` (or one of its aliases).

    Args:
        name: E.g. ``"gelu_tanh"``, ``"silu"``, ``"gelu"``.

    Returns:
        The elementwise function.

    Raises:
        ConfigError: The name is unknown; the hint suggests the closest valid names.
    """
    return ACTIVATIONS[canonical_activation(name)]
