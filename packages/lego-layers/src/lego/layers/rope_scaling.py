"""RoPE frequency scaling variants as data, and the inverse frequencies they give.

A scaling is a frozen dataclass;
[`rope_inverse_frequencies()`][lego.layers.rope_scaling.rope_inverse_frequencies] turns
``(rotary_dim, base, scaling)`` into the per-pair angular frequencies ``theta_i`` (position
``p`` rotates pair ``i`` by ``p * theta_i``). Unscaled RoPE (Su et al., 2021) uses
``theta_i = base ** (-2i / rotary_dim)``. The variants:

- [`LinearScaling`][lego.layers.rope_scaling.LinearScaling]: position interpolation
  (Chen et al., 2023), every frequency divided by ``factor``.
- [`NTKScaling`][lego.layers.rope_scaling.NTKScaling]: "NTK-aware" scaling (bloc97, 2023),
  the base multiplied by ``factor ** (d / (d - 2))`` so high frequencies barely move.
- [`DynamicNTKScaling`][lego.layers.rope_scaling.DynamicNTKScaling]: NTK-aware scaling whose
  factor grows with the current sequence length beyond the original context.
- [`Llama3Scaling`][lego.layers.rope_scaling.Llama3Scaling]: LLaMA 3.1's piecewise rule:
  long wavelengths divided by ``factor``, short ones kept, a smooth blend between.

The frequencies are computed in fp32 in the same order of operations as transformers'
``modeling_rope_utils``, so a model built on them reproduces a transformers checkpoint's
rotations bit for bit. [`rope_scaling_from_dict()`][lego.layers.rope_scaling.rope_scaling_from_dict]
reads a Hugging Face ``rope_scaling`` / ``rope_parameters`` mapping.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lego.protocols import ConfigError, check_float, check_int, did_you_mean

__all__ = [
    "LinearScaling",
    "NTKScaling",
    "DynamicNTKScaling",
    "Llama3Scaling",
    "RopeScaling",
    "rope_inverse_frequencies",
    "rope_scaling_from_dict",
]


def _check_factor(owner: str, name: str, value: object, *, minimum: float = 1.0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{owner}: {name} must be a number, got {type(value).__name__} {value!r}",
            key=name,
        )
    if not math.isfinite(value) or value < minimum or value <= 0:
        raise ConfigError(
            f"{owner}: {name} must be a finite number >= {minimum} and > 0, got {value}",
            key=name,
            hint=f"{name}=1 means no scaling; use the value from the model's config",
        )


def _check_context(owner: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{owner}: original_max_position_embeddings must be an int >= 1, got {value!r}",
            key="original_max_position_embeddings",
            hint="use the context length the model was pretrained with (LLaMA 3: 8192)",
        )


@dataclass(frozen=True, kw_only=True)
class LinearScaling:
    """Position interpolation: every frequency divided by ``factor``.

    Equivalent to feeding positions ``p / factor``; a model trained on ``L`` tokens then
    covers ``factor * L`` (after fine-tuning). transformers' ``rope_type="linear"``.

    Args:
        factor: The interpolation factor, >= 1.

    Raises:
        ConfigError: ``factor`` is not a finite number >= 1.
    """

    factor: float

    def __post_init__(self) -> None:
        _check_factor("LinearScaling", "factor", self.factor)


@dataclass(frozen=True, kw_only=True)
class NTKScaling:
    """Static NTK-aware scaling: ``base' = base * factor ** (d / (d - 2))``.

    ``d`` is the rotary dimension. The lowest frequency is interpolated by ``factor`` while
    the highest stays put. Needs ``d > 2``.

    Args:
        factor: The context extension factor, >= 1.

    Raises:
        ConfigError: ``factor`` is not a finite number >= 1.
    """

    factor: float

    def __post_init__(self) -> None:
        _check_factor("NTKScaling", "factor", self.factor)


@dataclass(frozen=True, kw_only=True)
class DynamicNTKScaling:
    """Dynamic NTK-aware scaling (transformers' ``rope_type="dynamic"``).

    For a sequence of ``L > original_max_position_embeddings`` tokens the base becomes
    ``base * (factor * L / original - (factor - 1)) ** (d / (d - 2))``; up to the original
    context the frequencies are the unscaled ones. ``L`` is the largest position of the
    current call plus one (in cached decoding, the current total length), so the same
    positions can rotate differently in calls of different lengths: that is the method.

    Args:
        factor: The scaling factor, >= 1.
        original_max_position_embeddings: The pretraining context length.

    Raises:
        ConfigError: A factor below 1 or a context length below 1.
    """

    factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        _check_factor("DynamicNTKScaling", "factor", self.factor)
        _check_context("DynamicNTKScaling", self.original_max_position_embeddings)


@dataclass(frozen=True, kw_only=True)
class Llama3Scaling:
    """LLaMA 3.1's frequency scaling (transformers' ``rope_type="llama3"``).

    With ``wavelength = 2 pi / theta``: wavelengths above ``original / low_freq_factor`` are
    divided by ``factor``; those below ``original / high_freq_factor`` are kept; in between,
    ``theta' = (1 - s) * theta / factor + s * theta`` with
    ``s = (original / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)``.

    Args:
        factor: Scale of the low frequencies (LLaMA 3.1: 8; 3.2: 32).
        low_freq_factor: LLaMA 3.1: 1.
        high_freq_factor: LLaMA 3.1: 4; must exceed ``low_freq_factor``.
        original_max_position_embeddings: The pretraining context (LLaMA 3.1: 8192).

    Raises:
        ConfigError: A non-positive value, or ``high_freq_factor <= low_freq_factor``.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        _check_factor("Llama3Scaling", "factor", self.factor)
        _check_factor("Llama3Scaling", "low_freq_factor", self.low_freq_factor, minimum=0.0)
        _check_factor("Llama3Scaling", "high_freq_factor", self.high_freq_factor, minimum=0.0)
        _check_context("Llama3Scaling", self.original_max_position_embeddings)
        if self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"Llama3Scaling: high_freq_factor ({self.high_freq_factor}) must be greater "
                f"than low_freq_factor ({self.low_freq_factor})",
                key="high_freq_factor",
                hint="LLaMA 3.1 uses low_freq_factor=1.0, high_freq_factor=4.0",
            )


RopeScaling = LinearScaling | NTKScaling | DynamicNTKScaling | Llama3Scaling
"""Any of the scaling variants."""


def _base_frequencies(rotary_dim: int, base: float, device: torch.device | None) -> torch.Tensor:
    """``1 / base ** (2i / d)`` in fp32, the order of operations transformers uses."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float()
    return 1.0 / (base ** (exponents / rotary_dim))  # (d/2,)


def rope_inverse_frequencies(
    *,
    rotary_dim: int,
    base: float = 10000.0,
    scaling: RopeScaling | None = None,
    seq_len: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Return the angular frequency of each rotated pair, in fp32.

    Args:
        rotary_dim: The number of rotated dimensions (even, >= 2; > 2 for the NTK variants).
        base: RoPE's base (``rope_theta``): 10000 in LLaMA 2, 500000 in LLaMA 3.
        scaling: A scaling variant, or None for plain RoPE.
        seq_len: The current sequence length, used only by
            [`DynamicNTKScaling`][lego.layers.rope_scaling.DynamicNTKScaling].
        device: Where to build the tensor.

    Returns:
        ``theta``, shape ``(rotary_dim // 2,)``, fp32.

    Raises:
        ConfigError: ``rotary_dim`` odd or < 2 (or <= 2 for NTK scaling), ``base <= 0``.
    """
    check_int("rotary_dim", rotary_dim, minimum=2, owner="rope_inverse_frequencies")
    check_float("base", base, low=0.0, low_open=True, owner="rope_inverse_frequencies")
    if rotary_dim % 2:
        raise ConfigError(
            f"rotary_dim must be an even int >= 2, got {rotary_dim!r}",
            key="rotary_dim",
            hint="rotate an even number of dimensions (pairs)",
        )
    if isinstance(scaling, (NTKScaling, DynamicNTKScaling)) and rotary_dim <= 2:
        raise ConfigError(
            "NTK-aware scaling needs rotary_dim > 2 (the exponent is d / (d - 2)), "
            f"got {rotary_dim}",
            key="rotary_dim",
        )
    if scaling is None:
        return _base_frequencies(rotary_dim, base, device)
    if isinstance(scaling, LinearScaling):
        return _base_frequencies(rotary_dim, base, device) / scaling.factor
    if isinstance(scaling, NTKScaling):
        scaled_base = base * scaling.factor ** (rotary_dim / (rotary_dim - 2))
        return _base_frequencies(rotary_dim, scaled_base, device)
    if isinstance(scaling, DynamicNTKScaling):
        original = scaling.original_max_position_embeddings
        length = original if seq_len is None else max(seq_len, original)
        if length == original:
            return _base_frequencies(rotary_dim, base, device)
        growth = scaling.factor * length / original - (scaling.factor - 1)
        scaled_base = base * growth ** (rotary_dim / (rotary_dim - 2))
        return _base_frequencies(rotary_dim, scaled_base, device)
    if isinstance(scaling, Llama3Scaling):
        return _llama3_frequencies(_base_frequencies(rotary_dim, base, device), scaling)
    raise ConfigError(
        f"unknown RoPE scaling {type(scaling).__name__}",
        key="scaling",
        hint="pass LinearScaling, NTKScaling, DynamicNTKScaling, Llama3Scaling or None",
    )


def _llama3_frequencies(inv_freq: torch.Tensor, scaling: Llama3Scaling) -> torch.Tensor:
    """Apply LLaMA 3.1's piecewise rule to fp32 frequencies ``(d/2,)``."""
    original = scaling.original_max_position_embeddings
    low_freq_wavelen = original / scaling.low_freq_factor  # longer than this: interpolate
    high_freq_wavelen = original / scaling.high_freq_factor  # shorter than this: keep
    wavelen = 2 * math.pi / inv_freq  # (d/2,)
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (original / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )  # (d/2,)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled  # (d/2,)
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)  # (d/2,)


_KNOWN_TYPES = ("default", "linear", "dynamic", "llama3", "ntk")


def rope_scaling_from_dict(config: Mapping[str, Any] | None) -> RopeScaling | None:
    """Read a Hugging Face ``rope_scaling`` (or ``rope_parameters``) mapping.

    Args:
        config: E.g. ``{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}``; the old
            key ``"type"`` is accepted for ``"rope_type"``; ``rope_theta`` and
            ``partial_rotary_factor`` are ignored (they are constructor arguments of
            [`RotaryEmbedding`][lego.layers.RotaryEmbedding]). None or ``"default"`` means
            no scaling. ``"ntk"`` names the static NTK-aware variant.

    Returns:
        The scaling dataclass, or None.

    Raises:
        ConfigError: An unsupported type (e.g. ``"yarn"``) or missing/invalid fields.
    """
    if config is None:
        return None
    kind = config.get("rope_type", config.get("type", "default"))
    try:
        if kind == "default":
            return None
        if kind == "linear":
            return LinearScaling(factor=config["factor"])
        if kind == "ntk":
            return NTKScaling(factor=config["factor"])
        if kind == "dynamic":
            original = config.get("original_max_position_embeddings")
            if original is None:
                raise ConfigError(
                    "dynamic RoPE scaling needs original_max_position_embeddings",
                    key="original_max_position_embeddings",
                    hint="add the model's max_position_embeddings to the mapping",
                )
            return DynamicNTKScaling(
                factor=config["factor"], original_max_position_embeddings=original
            )
        if kind == "llama3":
            return Llama3Scaling(
                factor=config["factor"],
                low_freq_factor=config["low_freq_factor"],
                high_freq_factor=config["high_freq_factor"],
                original_max_position_embeddings=config["original_max_position_embeddings"],
            )
    except KeyError as err:
        raise ConfigError(
            f"RoPE scaling {kind!r} needs the field {err.args[0]!r}",
            key=str(err.args[0]),
            hint="copy the rope_scaling block of the model's config.json",
        ) from None
    raise ConfigError(
        f"unsupported RoPE scaling type {kind!r}",
        key="rope_type",
        hint=did_you_mean(str(kind), _KNOWN_TYPES),
    )
