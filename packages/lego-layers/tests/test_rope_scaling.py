from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lego.layers.rope_scaling import (
    DynamicNTKScaling,
    LinearScaling,
    Llama3Scaling,
    NTKScaling,
    rope_inverse_frequencies,
    rope_scaling_from_dict,
)
from lego.protocols import ConfigError


def f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def plain_theta(d: int, base: float) -> list[float]:
    return [base ** (-2 * i / d) for i in range(d // 2)]


def meta_llama3_scaling(freqs: list[float], scaling: Llama3Scaling) -> list[float]:
    """Meta's published rule (llama-models, apply_scaling), written out in float64."""
    low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(freq)
        elif wavelen > low_wavelen:
            out.append(freq / scaling.factor)
        else:
            smooth = (
                scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor
            ) / (scaling.high_freq_factor - scaling.low_freq_factor)
            out.append((1 - smooth) * freq / scaling.factor + smooth * freq)
    return out


def test_plain_frequencies_known_values() -> None:
    theta = rope_inverse_frequencies(rotary_dim=4, base=10000.0)
    assert theta.dtype == torch.float32
    torch.testing.assert_close(theta, torch.tensor([1.0, 0.01]))
    theta = rope_inverse_frequencies(rotary_dim=128, base=500000.0)
    torch.testing.assert_close(theta.double(), f64(plain_theta(128, 500000.0)), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "scaling",
    [
        Llama3Scaling(),  # LLaMA 3.1: factor 8, 1, 4, 8192
        Llama3Scaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0),  # LLaMA 3.2
        Llama3Scaling(
            factor=4.0,
            low_freq_factor=2.0,
            high_freq_factor=8.0,
            original_max_position_embeddings=64,
        ),
    ],
)
def test_llama3_frequencies_equal_metas_formula(scaling: Llama3Scaling) -> None:
    theta = rope_inverse_frequencies(rotary_dim=128, base=500000.0, scaling=scaling)
    expected = meta_llama3_scaling(plain_theta(128, 500000.0), scaling)
    torch.testing.assert_close(theta.double(), f64(expected), rtol=1e-5, atol=0)


def test_llama3_known_values_for_llama_3_1() -> None:
    theta = rope_inverse_frequencies(rotary_dim=128, base=500000.0, scaling=Llama3Scaling())
    assert theta[0].item() == pytest.approx(1.0)  # highest frequency kept
    # the lowest frequency (wavelength ~2.6e6 > 8192) is divided by 8
    assert theta[-1].item() == pytest.approx(500000.0 ** (-126 / 128) / 8, rel=1e-5)
    # frequencies with wavelength < 8192 / 4 = 2048 are untouched
    plain = rope_inverse_frequencies(rotary_dim=128, base=500000.0)
    short = (2 * math.pi / plain) < 2048
    assert short.sum() > 0
    assert torch.equal(theta[short], plain[short])
    assert (theta <= plain).all()


def test_linear_scaling_divides_every_frequency() -> None:
    plain = rope_inverse_frequencies(rotary_dim=16)
    torch.testing.assert_close(
        rope_inverse_frequencies(rotary_dim=16, scaling=LinearScaling(factor=4.0)), plain / 4
    )


def test_ntk_scaling_keeps_the_highest_and_interpolates_the_lowest_frequency() -> None:
    d, factor = 64, 8.0
    plain = rope_inverse_frequencies(rotary_dim=d)
    ntk = rope_inverse_frequencies(rotary_dim=d, scaling=NTKScaling(factor=factor))
    assert ntk[0].item() == pytest.approx(1.0)
    assert ntk[-1].item() == pytest.approx(plain[-1].item() / factor, rel=1e-4)
    expected = plain_theta(d, 10000.0 * factor ** (d / (d - 2)))
    torch.testing.assert_close(ntk.double(), f64(expected), rtol=1e-5, atol=0)


def test_dynamic_ntk_formula() -> None:
    scaling = DynamicNTKScaling(factor=2.0, original_max_position_embeddings=100)
    plain = rope_inverse_frequencies(rotary_dim=8)
    assert torch.equal(rope_inverse_frequencies(rotary_dim=8, scaling=scaling), plain)
    assert torch.equal(rope_inverse_frequencies(rotary_dim=8, scaling=scaling, seq_len=100), plain)
    base = 10000.0 * (2.0 * 300 / 100 - 1.0) ** (8 / 6)
    torch.testing.assert_close(
        rope_inverse_frequencies(rotary_dim=8, scaling=scaling, seq_len=300).double(),
        f64(plain_theta(8, base)),
        rtol=1e-5,
        atol=0,
    )


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: LinearScaling(factor=0.5), "factor"),
        (lambda: NTKScaling(factor=float("inf")), "factor"),
        (lambda: Llama3Scaling(low_freq_factor=4.0, high_freq_factor=1.0), "high_freq_factor"),
        (
            lambda: Llama3Scaling(original_max_position_embeddings=0),
            "original_max_position_embeddings",
        ),
        (
            lambda: DynamicNTKScaling(factor=2.0, original_max_position_embeddings=-5),
            "original_max_position_embeddings",
        ),
        (lambda: rope_inverse_frequencies(rotary_dim=5), "rotary_dim"),
        (
            lambda: rope_inverse_frequencies(rotary_dim=2, scaling=NTKScaling(factor=2.0)),
            "rotary_dim",
        ),
        (lambda: rope_inverse_frequencies(rotary_dim=8, base=0.0), "base"),
    ],
)
def test_bad_scaling_config(make: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key


def test_from_hf_dicts() -> None:
    llama31 = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    }
    assert rope_scaling_from_dict(llama31) == Llama3Scaling()
    assert rope_scaling_from_dict({"type": "linear", "factor": 2.0}) == LinearScaling(factor=2.0)
    assert rope_scaling_from_dict(
        {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 2048}
    ) == DynamicNTKScaling(factor=2.0, original_max_position_embeddings=2048)
    assert rope_scaling_from_dict({"rope_type": "ntk", "factor": 3.0}) == NTKScaling(factor=3.0)
    assert rope_scaling_from_dict(None) is None
    assert rope_scaling_from_dict({"rope_type": "default", "rope_theta": 1e6}) is None


def test_from_dict_errors() -> None:
    with pytest.raises(ConfigError, match="unsupported RoPE scaling type 'yarn'"):
        rope_scaling_from_dict({"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ConfigError, match="did you mean 'llama3'") as info:
        rope_scaling_from_dict({"rope_type": "llama_3", "factor": 4.0})
    assert info.value.key == "rope_type"
    with pytest.raises(ConfigError, match="needs the field 'low_freq_factor'") as info:
        rope_scaling_from_dict({"rope_type": "llama3", "factor": 8.0})
    assert info.value.key == "low_freq_factor"
    with pytest.raises(ConfigError, match="original_max_position_embeddings"):
        rope_scaling_from_dict({"rope_type": "dynamic", "factor": 2.0})


def test_scalings_are_frozen_values() -> None:
    scaling = Llama3Scaling()
    with pytest.raises(AttributeError):
        scaling.factor = 2.0  # type: ignore[misc]
    assert hash(scaling) == hash(Llama3Scaling())
