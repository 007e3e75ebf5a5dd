"""Typed reads of HuggingFace ``config.json`` fields, shared by the families' translations.

Every reader raises [`CompatibilityError`][lego.protocols.CompatibilityError] naming the key
when a value has the wrong type or a value lego cannot reproduce, so a foreign config fails
with one clear message instead of a model that computes something else.

Both spellings of transformers' config files are understood: the Hub's (``rope_theta`` +
``rope_scaling``, ``torch_dtype``, ``num_experts``) and transformers 5's (``rope_parameters``,
``dtype``, ``num_local_experts``). Writers produce the Hub's spelling, which every
transformers version reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lego.layers import ACTIVATIONS, rope_scaling_from_dict
from lego.layers.activations import ACTIVATION_ALIASES
from lego.protocols import CompatibilityError, ConfigError

__all__ = [
    "expect_field",
    "HF_ACTIVATIONS",
    "activation_from_hf",
    "activation_to_hf",
    "get_bool",
    "get_float",
    "get_int",
    "get_optional_int",
    "reject",
    "rope_from_hf",
    "rope_to_hf",
]

_MISSING: Any = object()

HF_ACTIVATIONS: dict[str, str] = {
    "gelu_tanh": "gelu_new",
    "gelu": "gelu",
    "silu": "silu",
    "relu": "relu",
    "relu2": "relu2",
}
"""lego's canonical activation name -> the ``hidden_act`` / ``activation_function`` written."""


def _fail(key: str, message: str, hint: str) -> CompatibilityError:
    return CompatibilityError(message, key=key, hint=hint)


def get_int(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> int:
    """Read an integer field (``True``/``False`` and floats refused).

    Args:
        data: The HF config.
        key: The field.
        default: Returned when the field is absent or null; without it the field is required.

    Returns:
        The value.

    Raises:
        CompatibilityError: The field is missing (no default) or not an integer.
    """
    value = data.get(key)
    if value is None:
        if default is _MISSING:
            raise _fail(key, f"config.json lacks {key!r}", f"add {key!r} to config.json")
        return int(default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"{key!r} must be an integer, got {value!r}", "fix config.json")
    return value


def get_optional_int(data: Mapping[str, Any], key: str) -> int | None:
    """Read an integer field that may be absent or null.

    Args:
        data: The HF config.
        key: The field.

    Returns:
        The value or None.

    Raises:
        CompatibilityError: The value is present but not an integer.
    """
    if data.get(key) is None:
        return None
    return get_int(data, key)


def get_float(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> float:
    """Read a number field (an integer is accepted, booleans are refused).

    Args:
        data: The HF config.
        key: The field.
        default: Returned when the field is absent or null; without it the field is required.

    Returns:
        The value as a float.

    Raises:
        CompatibilityError: The field is missing (no default) or not a number.
    """
    value = data.get(key)
    if value is None:
        if default is _MISSING:
            raise _fail(key, f"config.json lacks {key!r}", f"add {key!r} to config.json")
        return float(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(key, f"{key!r} must be a number, got {value!r}", "fix config.json")
    return float(value)


def get_bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    """Read a boolean field.

    Args:
        data: The HF config.
        key: The field.
        default: Returned when the field is absent or null.

    Returns:
        The value.

    Raises:
        CompatibilityError: The value is not a boolean.
    """
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(key, f"{key!r} must be true or false, got {value!r}", "fix config.json")
    return value


def reject(data: Mapping[str, Any], key: str, supported: Any, *, why: str) -> None:
    """Refuse a field whose value lego does not implement.

    Args:
        data: The HF config.
        key: The field.
        supported: The only value lego reproduces (an absent or null field is accepted too).
        why: What the value would change, for the message.

    Raises:
        CompatibilityError: The field holds another value.
    """
    value = data.get(key)
    if value is not None and value != supported:
        raise _fail(
            key,
            f"unsupported config value {key}={value!r}: {why}",
            f"lego-arch supports only {key}={supported!r} for this architecture",
        )


def activation_from_hf(data: Mapping[str, Any], key: str, default: str) -> str:
    """Read an activation name and return lego's canonical name for it.

    Args:
        data: The HF config.
        key: The field (``"activation_function"`` for GPT-2, ``"hidden_act"`` otherwise).
        default: The value when the field is absent.

    Returns:
        A key of ``lego.layers.ACTIVATIONS``.

    Raises:
        CompatibilityError: The activation is unknown to lego.
    """
    value = data.get(key, default)
    if not isinstance(value, str):
        raise _fail(key, f"{key!r} must be a string, got {value!r}", "fix config.json")
    name = ACTIVATION_ALIASES.get(value, value)
    if name not in ACTIVATIONS:
        raise _fail(
            key,
            f"unsupported activation {key}={value!r}",
            f"lego-layers implements {', '.join(sorted(ACTIVATIONS))} (and the aliases "
            f"{', '.join(sorted(ACTIVATION_ALIASES))})",
        )
    return name


def activation_to_hf(name: str) -> str:
    """Return the transformers spelling of a lego activation name.

    Args:
        name: A canonical lego activation name.

    Returns:
        The name transformers' ``ACT2FN`` knows (``"gelu_tanh"`` -> ``"gelu_new"``).

    Raises:
        CompatibilityError: No transformers spelling is known.
    """
    canonical = ACTIVATION_ALIASES.get(name, name)
    if canonical not in HF_ACTIVATIONS:
        raise _fail(
            "activation",
            f"activation {name!r} has no transformers equivalent",
            f"use one of {', '.join(sorted(HF_ACTIVATIONS))}",
        )
    return HF_ACTIVATIONS[canonical]


def rope_from_hf(
    data: Mapping[str, Any], *, default_theta: float
) -> tuple[float, dict[str, Any] | None]:
    """Read RoPE's base and scaling from either spelling of the config.

    Args:
        data: The HF config (``rope_theta`` + ``rope_scaling``, or ``rope_parameters``).
        default_theta: The base when the config gives none.

    Returns:
        ``(rope_theta, rope_scaling)``; the scaling is None for plain RoPE, else a mapping in
        HF's ``rope_scaling`` shape with ``"rope_type"``.

    Raises:
        CompatibilityError: A scaling type lego-layers does not implement, or bad fields
            (``key="rope_scaling"``).
    """
    params = data.get("rope_parameters")
    if isinstance(params, Mapping):
        scaling: dict[str, Any] | None = {k: v for k, v in params.items() if k != "rope_theta"}
        theta = get_float(params, "rope_theta", data.get("rope_theta", default_theta))
        key = "rope_parameters"
    else:
        theta = get_float(data, "rope_theta", default_theta)
        raw = data.get("rope_scaling")
        if raw is not None and not isinstance(raw, Mapping):
            raise _fail("rope_scaling", f"rope_scaling must be a mapping, got {raw!r}", "fix it")
        scaling = dict(raw) if raw is not None else None
        key = "rope_scaling"
    if scaling is not None:
        kind = scaling.pop("type", None)
        scaling["rope_type"] = scaling.get("rope_type", kind if kind is not None else "default")
        if scaling["rope_type"] == "default":
            scaling = None
    try:
        rope_scaling_from_dict(scaling)
    except ConfigError as exc:
        raise _fail(key, f"unsupported RoPE scaling: {exc.message}", exc.hint or "") from None
    return theta, scaling


def rope_to_hf(theta: float, scaling: Mapping[str, Any] | None) -> dict[str, Any]:
    """Write RoPE's base and scaling in the Hub's spelling.

    Args:
        theta: RoPE's base.
        scaling: lego's ``rope_scaling`` mapping, or None.

    Returns:
        ``{"rope_theta": ..., "rope_scaling": ...}`` (the scaling null for plain RoPE).
    """
    return {"rope_theta": theta, "rope_scaling": dict(scaling) if scaling else None}


def expect_field(config: Any, key: str, value: object, *, architecture: str) -> None:
    """Check that a config field has the value an HF architecture can express.

    Args:
        config: The ``DecoderConfig`` being written.
        key: The field.
        value: The only value ``architecture`` can express.
        architecture: The HF class, e.g. ``"GPT2LMHeadModel"``.

    Raises:
        CompatibilityError: The field holds another value (naming it and the family).

    Example:
        >>> from types import SimpleNamespace
        >>> expect_field(SimpleNamespace(qk_norm=False), "qk_norm", False,
        ...              architecture="LlamaForCausalLM")
    """
    if getattr(config, key) != value:
        raise CompatibilityError(
            f"{architecture} cannot express {key}={getattr(config, key)!r}",
            key=key,
            hint=f"{architecture} needs {key}={value!r}; save other models with their own family",
        )
