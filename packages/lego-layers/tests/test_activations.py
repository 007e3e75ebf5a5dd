from __future__ import annotations

import math

import pytest
import torch

from lego.layers.activations import (
    ACTIVATION_ALIASES,
    ACTIVATIONS,
    canonical_activation,
    get_activation,
)
from lego.protocols import ConfigError


def test_gelu_tanh_matches_gpt2_formula() -> None:
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    expected = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(get_activation("gelu_tanh")(x), expected)


def test_exact_gelu_and_silu_and_relu2() -> None:
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    torch.testing.assert_close(
        get_activation("gelu")(x), 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    )
    torch.testing.assert_close(get_activation("silu")(x), x / (1 + torch.exp(-x)))
    torch.testing.assert_close(get_activation("relu2")(x), torch.clamp(x, min=0) ** 2)
    torch.testing.assert_close(get_activation("relu")(x), torch.clamp(x, min=0))


@pytest.mark.parametrize(("alias", "name"), sorted(ACTIVATION_ALIASES.items()))
def test_aliases_resolve(alias: str, name: str) -> None:
    assert canonical_activation(alias) == name
    assert get_activation(alias) is ACTIVATIONS[name]


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="unknown activation 'sigu'") as info:
        get_activation("sigu")
    assert info.value.key == "activation"
    assert info.value.hint is not None
    assert "silu" in info.value.hint


def test_non_string_name() -> None:
    with pytest.raises(ConfigError, match="must be named by a string"):
        get_activation(3)  # type: ignore[arg-type]


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        ACTIVATIONS["mine"] = torch.tanh  # type: ignore[index]
