"""What a component name implies for the rest of the config: its *tied* fields' defaults.

Some config fields only make sense together with a component: a norm's ``norm_bias``, a
feed-forward's ``activation`` and ``mlp_bias``. Each component name carries the default
values of these tied fields (RMSNorm has no bias; SwiGLU gates with SiLU), so that naming
the component is enough:

    >>> component_defaults("ffn", "swiglu")
    {'activation': 'silu', 'mlp_bias': True}
    >>> component_defaults("norm", "rmsnorm")
    {'norm_bias': False}

This module is the one table both sides read:
[`DecoderConfig`][lego.arch.config.DecoderConfig] fills its tied fields from it (a tied field
left as None takes the component's default) and [`lego.arch.components`][lego.arch.components]
writes to it when a component is registered, next to the component's builder. It knows no
builder and no config class, so neither of those modules imports the other through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

from lego.protocols import ConfigError, did_you_mean

__all__ = [
    "KINDS",
    "TIED_FIELDS",
    "Kind",
    "component_defaults",
    "component_names",
    "set_component_defaults",
]

Kind = Literal["norm", "ffn", "positions"]
"""The kinds of component a config names: its ``norm``, ``ffn`` and ``positions`` fields."""

KINDS: tuple[Kind, ...] = ("norm", "ffn", "positions")
"""Every kind, in config order."""

TIED_FIELDS: Mapping[Kind, Mapping[str, object]] = MappingProxyType(
    {
        "norm": MappingProxyType({"norm_bias": True}),
        "ffn": MappingProxyType({"activation": "gelu_tanh", "mlp_bias": True}),
        "positions": MappingProxyType({}),
    }
)
"""Each kind's tied fields, with the value a component takes when it does not say."""

_DEFAULTS: dict[Kind, dict[str, Mapping[str, object]]] = {
    "norm": {
        "layernorm": {},
        "rmsnorm": {"norm_bias": False},
    },
    "ffn": {
        "gelu_mlp": {"activation": "gelu_tanh"},
        "swiglu": {"activation": "silu"},
        "geglu": {"activation": "gelu_tanh"},
        "moe": {"activation": "silu", "mlp_bias": False},
    },
    "positions": {
        "learned": {},
        "rope": {},
        "none": {},
    },
}


def component_names(kind: Kind) -> tuple[str, ...]:
    """The registered names of one kind, in registration order.

    Args:
        kind: ``"norm"``, ``"ffn"`` or ``"positions"``.

    Returns:
        The names, e.g. ``("layernorm", "rmsnorm")``.
    """
    return tuple(_DEFAULTS[kind])


def component_defaults(kind: Kind, name: str) -> dict[str, object] | None:
    """The values of every tied field of ``kind`` that the component ``name`` implies.

    Args:
        kind: ``"norm"``, ``"ffn"`` or ``"positions"``.
        name: A component name.

    Returns:
        Field name to default (every tied field of the kind, in ``TIED_FIELDS`` order), or
        None when ``name`` is not registered.
    """
    own = _DEFAULTS[kind].get(name)
    if own is None:
        return None
    return {field: own.get(field, base) for field, base in TIED_FIELDS[kind].items()}


def set_component_defaults(kind: Kind, name: str, defaults: Mapping[str, object] | None) -> None:
    """Record the tied-field defaults of a component (called by the ``register_*`` functions).

    Args:
        kind: ``"norm"``, ``"ffn"`` or ``"positions"``.
        name: The component's name.
        defaults: Tied fields of ``kind`` to their defaults; fields left out take the base
            value of [`TIED_FIELDS`][lego.arch.defaults.TIED_FIELDS]. None means none.

    Raises:
        ConfigError: A key that is not a tied field of ``kind`` (with the closest ones), or
            a value of the wrong type for its field.
    """
    given = dict(defaults or {})
    tied = TIED_FIELDS[kind]
    for field, value in given.items():
        if field not in tied:
            fields = ", ".join(tied) or "none"
            raise ConfigError(
                f"{kind} {name!r}: {field!r} is not a config field tied to {kind} "
                f"(tied to {kind}: {fields})",
                key=field,
                hint=did_you_mean(str(field), tied)
                if tied
                else f"no config field is tied to {kind}: pass no defaults",
            )
        expected = type(tied[field])
        if type(value) is not expected:
            raise ConfigError(
                f"{kind} {name!r}: the default of {field} must be a {expected.__name__}, "
                f"got {value!r}",
                key=field,
            )
    _DEFAULTS[kind][name] = MappingProxyType(given)
