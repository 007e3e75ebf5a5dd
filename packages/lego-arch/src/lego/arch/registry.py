"""Named presets and ``build()``: from a name (or a config) to a ready model.

    >>> from lego.arch import build
    >>> model = build("gpt2-tiny")                       # a preset
    >>> model = build("llama-tiny", n_layers=4)          # a preset with overrides
    >>> model = build(model.config.replace(qk_norm=True))  # any DecoderConfig

The presets of every family (``lego.arch.gpt2``, ``lego.arch.llama``, ``lego.arch.qwen3``)
are gathered in one table; [`register_preset()`][lego.arch.registry.register_preset] adds
your own. Building on the meta device allocates nothing, so the size of any preset can be
inspected for free: ``with torch.device("meta"): build("llama-3.1-8b")``.
"""

from __future__ import annotations

from typing import Any

from lego.arch.config import DecoderConfig
from lego.arch.decoder import DecoderLM
from lego.arch.gpt2 import PRESETS as GPT2_PRESETS
from lego.arch.llama import PRESETS as LLAMA_PRESETS
from lego.arch.qwen3 import PRESETS as QWEN3_PRESETS
from lego.protocols import ConfigError, did_you_mean

__all__ = ["build", "get_preset", "list_presets", "presets", "register_preset", "resolve_config"]

_PRESETS: dict[str, DecoderConfig] = {**GPT2_PRESETS, **LLAMA_PRESETS, **QWEN3_PRESETS}


def presets() -> dict[str, DecoderConfig]:
    """Every preset by name (a copy: changing it changes nothing).

    Returns:
        Name to config, in registration order (GPT-2, Llama 3, Qwen 3, then yours).
    """
    return dict(_PRESETS)


def list_presets() -> list[str]:
    """The preset names, in registration order.

    Returns:
        E.g. ``["gpt2", "gpt2-medium", ..., "qwen3-moe-tiny"]``.
    """
    return list(_PRESETS)


def get_preset(name: str) -> DecoderConfig:
    """The config of one preset.

    Args:
        name: A preset name (case-insensitive).

    Returns:
        The config.

    Raises:
        ConfigError: An unknown name; the hint lists the closest names.
    """
    given: object = name  # checked at run time: callers may pass anything
    key = given.strip().lower() if isinstance(given, str) else given
    if not isinstance(key, str) or key not in _PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}",
            key="preset",
            hint=did_you_mean(str(name), _PRESETS),
        )
    return _PRESETS[key]


def register_preset(name: str, config: DecoderConfig, *, replace: bool = False) -> None:
    """Add a named preset (then ``build(name)`` works, and ``lego-arch info name``).

    Args:
        name: The preset's name, lower case.
        config: Its configuration.
        replace: Allow overriding an existing preset.

    Raises:
        ConfigError: A name that is empty or not lower case, a config that is not a
            [`DecoderConfig`][lego.arch.config.DecoderConfig], or a taken name without
            ``replace=True``.
    """
    given: object = name  # checked at run time: callers may pass anything
    if not isinstance(given, str) or not given or given != given.strip().lower():
        raise ConfigError(
            f"a preset name must be a non-empty lower-case string, got {name!r}",
            key="preset",
        )
    value: object = config
    if not isinstance(value, DecoderConfig):
        raise ConfigError(
            f"a preset must be a DecoderConfig, got {type(value).__name__}", key="preset"
        )
    if name in _PRESETS and not replace:
        raise ConfigError(
            f"preset {name!r} already exists",
            key="preset",
            hint="pick another name, or pass replace=True",
        )
    _PRESETS[name] = config


def resolve_config(name_or_config: str | DecoderConfig, **overrides: Any) -> DecoderConfig:
    """The config ``build()`` would use: a preset or the given config, with overrides.

    Args:
        name_or_config: A preset name or a config.
        **overrides: Fields to change (``config.replace(**overrides)``).

    Returns:
        The validated config.

    Raises:
        ConfigError: An unknown preset, an unknown field or an invalid value.
    """
    given: object = name_or_config  # checked at run time: callers may pass anything
    if isinstance(given, DecoderConfig):
        config = given
    elif isinstance(given, str):
        config = get_preset(given)
    else:
        raise ConfigError(
            f"build() takes a preset name or a DecoderConfig, got {type(given).__name__}",
            key="preset",
            hint="see lego.arch.list_presets()",
        )
    return config.replace(**overrides) if overrides else config


def build(name_or_config: str | DecoderConfig, **overrides: Any) -> DecoderLM:
    """Build and initialize a model from a preset name or a config.

    Args:
        name_or_config: A preset name (see [`list_presets()`][lego.arch.registry.list_presets])
            or a [`DecoderConfig`][lego.arch.config.DecoderConfig].
        **overrides: Config fields to change first, e.g. ``n_layers=4, dropout=0.0``.

    Returns:
        A [`DecoderLM`][lego.arch.decoder.DecoderLM] on the current default device and
        dtype, in training mode.

    Raises:
        ConfigError: An unknown preset (with close names), an unknown field or an invalid
            value.
    """
    return DecoderLM.from_config(resolve_config(name_or_config, **overrides))
