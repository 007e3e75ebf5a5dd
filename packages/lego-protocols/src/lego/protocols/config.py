"""Configs as data: validated, frozen, keyword-only dataclasses that round-trip through JSON.

Subclass [`Config`][lego.protocols.Config] (or [`ModelConfig`][lego.protocols.ModelConfig] for a
model family) and decorate the subclass with ``@dataclass(frozen=True, kw_only=True)``::

    @dataclass(frozen=True, kw_only=True)
    class GPTConfig(ModelConfig):
        n_layer: int = 12
        n_head: int = 12
        n_embd: int = 768
        norm: Literal["layernorm", "rmsnorm"] = "layernorm"

        def validate(self) -> None:
            super().validate()
            if self.n_embd % self.n_head:
                raise ConfigError("n_embd must be divisible by n_head", key="n_embd")

Every field is checked against its annotation when the object is built (``int`` refuses
``True``, ``float`` accepts an ``int`` and stores a ``float``, lists become tuples for
``tuple[...]`` fields, nested configs may be given as mappings), then
[`Config.validate()`][lego.protocols.Config.validate] runs for the cross-field rules.
[`Config.from_dict()`][lego.protocols.Config.from_dict] refuses unknown keys and suggests the
closest valid one. Supported annotations: ``bool``, ``int``, ``float``, ``str``, ``None``, unions
(``X | None``), ``Literal[...]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]``
/ ``Mapping[str, X]``, nested [`Config`][lego.protocols.Config] subclasses and ``Any``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import operator
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from lego.protocols.errors import ConfigError, FormatError, LegoError, did_you_mean
from lego.protocols.files import atomic_write_text, read_json

__all__ = ["Config", "ModelConfig", "check_envelope", "describe_annotation"]

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every LegoLLM configuration: frozen, keyword-only, validated, serializable.

    Subclasses add fields (each with a type annotation from the supported set) and may
    override [`Config.validate()`][lego.protocols.Config.validate] for rules that involve several
    fields.
    """

    def __post_init__(self) -> None:
        for name, convert in _plan(type(self)):
            value = self.__dict__[name]
            converted = convert(value, name)
            if converted is not value:
                object.__setattr__(self, name, converted)
        self.validate()

    def validate(self) -> None:
        """Check rules that involve several fields; raise ``ConfigError`` on a breach.

        The base implementation accepts everything. Overrides should call ``super()``.
        """

    @classmethod
    def from_dict(
        cls: type[C],
        data: Mapping[str, Any],
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> C:
        """Build a config from a mapping, refusing unknown and missing keys.

        Args:
            data: Field names to values (e.g. parsed JSON or YAML). Nested configs may be
                mappings.
            path: The file the mapping came from, quoted in errors.

        Returns:
            The validated config.

        Raises:
            ConfigError: On an unknown key (with the closest valid one), a missing required
                key, a value of the wrong type or a failed
                [`Config.validate()`][lego.protocols.Config.validate] rule.
        """
        try:
            return _from_mapping(cls, data, prefix="")
        except ConfigError as err:
            if path is None or err.path is not None:
                raise
            raise _relocate(err, path=path) from None

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike[str]) -> C:
        """Read a config from a JSON file written by ``Config.to_json()``.

        Args:
            path: The JSON file.

        Returns:
            The validated config.

        Raises:
            ConfigError: The file does not exist or cannot be read, or the object is not a
                valid config (see
                [`Config.from_dict()`][lego.protocols.Config.from_dict]).
            FormatError: The file is not UTF-8, not valid JSON (with the line and column),
                repeats a key or does not hold an object.
        """
        data = read_json(path, what="config file")
        if not isinstance(data, Mapping):
            raise FormatError(
                f"a config file must hold a JSON object, not {type(data).__name__}",
                path=path,
                hint="write it with Config.to_json",
            )
        return cls.from_dict(data, path=path)

    @classmethod
    def from_header(
        cls: type[C],
        data: Any,
        *,
        path: str | os.PathLike[str],
        what: str,
        hint: str | None = None,
    ) -> C:
        """Build a config from the header of a file we wrote (``meta.json``, a state file).

        The same checks as [`Config.from_dict()`][lego.protocols.Config.from_dict], but a
        bad header means the file is not what it claims, so every error is a
        [`FormatError`][lego.protocols.FormatError] that names the file and the key.

        Args:
            data: The parsed header (it must be a mapping).
            path: The file it came from.
            what: What the file is, e.g. ``"dataset metadata (meta.json)"``.
            hint: What to do about a bad file (default: write it again).

        Returns:
            The validated config.

        Raises:
            FormatError: ``data`` is not a mapping, has unknown or missing keys, or a value
                of the wrong type or range.
        """
        fix = hint or "the file is damaged or was written by another version; write it again"
        if not isinstance(data, Mapping):
            raise FormatError(
                f"the {what} must hold a JSON object, not {type(data).__name__}",
                path=path,
                hint=fix,
            )
        try:
            return _from_mapping(cls, data, prefix="")
        except ConfigError as err:
            raise FormatError(
                f"the {what} is not valid: {err.message}",
                path=path,
                key=err.key,
                hint=f"{err.hint}; else {fix}" if err.hint else fix,
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-compatible data (tuples become lists).

        Returns:
            Field names to values, nested configs as dictionaries, in field order.
        """
        values = self.__dict__
        return {name: _plain(values[name]) for name, _ in _plan(type(self))}

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config as indented JSON (UTF-8, trailing newline), atomically.

        Args:
            path: The file to write; its folder must exist.

        Raises:
            ConfigError: When the folder does not exist or the file cannot be written.
        """
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        atomic_write_text(path, text, what="config file")

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with some fields changed, validated like a new config.

        Args:
            **changes: Field names to new values.

        Returns:
            The new config.

        Raises:
            ConfigError: On an unknown field name or an invalid value.
        """
        names = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in names:
                raise ConfigError(
                    f"unknown {type(self).__name__} field {key!r}",
                    key=key,
                    hint=did_you_mean(key, names),
                )
        return dataclasses.replace(self, **changes)


def check_envelope(
    data: Any,
    *,
    format: str,
    version: int,
    path: str | os.PathLike[str],
    what: str,
    reader: str,
    hint: str | None = None,
) -> int:
    """Check the ``format`` and ``version`` of a file we wrote, before anything else.

    They say how to read the rest: a newer file may hold fields this release does not know,
    so its version is checked before its fields are.

    Args:
        data: The parsed file (a mapping).
        format: The expected value of ``"format"`` (e.g. ``"lego-tokens"``).
        version: The newest ``"version"`` this release reads.
        path: The file, for messages.
        what: What the file is, for messages (``"lego token dataset (meta.json)"``).
        reader: Who reads it, for the upgrade hint (``"lego-data"``).
        hint: What to do about a file of another format.

    Returns:
        The file's version.

    Raises:
        FormatError: Not a mapping, another format, a version that is not a positive int,
            or a version newer than ``version``.

    Example:
        >>> check_envelope({"format": "lego-tokens", "version": 1}, format="lego-tokens",
        ...                version=1, path="meta.json", what="meta.json", reader="lego-data")
        1
    """
    if not isinstance(data, Mapping):
        raise FormatError(
            f"the {what} must hold a JSON object, not {type(data).__name__}",
            path=path,
            hint=hint,
        )
    found = data.get("format")
    if found != format:
        raise FormatError(
            f"not a {what}: 'format' is {found!r}, expected {format!r}",
            path=path,
            key="format",
            hint=hint,
        )
    number = data.get("version")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise FormatError(
            f"the {what}'s 'version' must be a positive integer, got {number!r}",
            path=path,
            key="version",
            hint="the file is damaged; write it again",
        )
    if number > version:
        raise FormatError(
            f"the {what} has format version {number}; this {reader} reads versions up to {version}",
            path=path,
            key="version",
            hint=f"upgrade {reader} (pip install -U {reader})",
        )
    return number


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig(Config):
    """Base of model-family configs: the fields every causal language model has.

    Attributes:
        vocab_size: Number of rows of the token embedding (ids are ``0..vocab_size-1``).
        context_length: The longest sequence the model attends over (its position budget).
    """

    vocab_size: int
    context_length: int

    def validate(self) -> None:
        """Check that the vocabulary and the context are not empty."""
        super().validate()
        for name in ("vocab_size", "context_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1", key=name)


Converter = Callable[[Any, str], Any]
"""Checks a value against one annotation and returns it normalized; the str is its key."""

_PLANS: dict[type, tuple[tuple[str, Converter], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, Converter], ...]:
    """The (field name, converter) pairs of a config class, compiled once per class."""
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        plan = _PLANS[cls] = tuple((f.name, _converter(hints[f.name], f.name)) for f in fields)
    return plan


def _from_mapping(cls: type[C], data: Mapping[str, Any], *, prefix: str) -> C:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"expected a mapping for {cls.__name__}, got {type(data).__name__}",
            key=prefix.rstrip(".") or None,
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"unknown {cls.__name__} key {key!r}",
                key=prefix + str(key),
                hint=did_you_mean(str(key), fields),
            )
    missing = [
        name
        for name, f in fields.items()
        if name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"missing required {cls.__name__} key(s): {', '.join(missing)}",
            key=prefix + missing[0],
            hint="add the key(s) to the config",
        )
    try:
        return cls(**data)  # __post_init__ checks every value once
    except ConfigError as err:
        if not prefix:
            raise
        key = prefix + err.key if err.key is not None else prefix.rstrip(".")
        raise _relocate(err, key=key) from None


def _relocate(err: LegoError, **changes: Any) -> LegoError:
    context = {**err.context, **changes}
    return type(err)(err.message, **context)


def describe_annotation(hint: Any) -> str:
    """Name an annotation for a message: ``int``, ``float | None``, ``tuple[float, float]``.

    Args:
        hint: A type annotation.

    Returns:
        Its readable name.

    Example:
        >>> describe_annotation(int), describe_annotation(float | None)
        ('int', 'float | None')
    """
    if hint is None or hint is type(None):
        return "None"
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


@functools.cache
def _converter(hint: Any, field: str) -> Converter:
    """Compile one annotation into a converter (``field`` names it in errors about itself)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return _identity
    if hint is None or hint is type(None):
        return _none
    if origin is typing.Union or origin is types.UnionType:
        return _union(args, field)
    if origin is typing.Literal:
        return _literal(args)
    if hint in _SCALARS:
        return _SCALARS[hint]
    if origin in (tuple, list):
        return _sequence(hint, origin, args, field)
    if origin in (dict, collections.abc.Mapping):
        return _mapping(hint, args, field)
    if isinstance(hint, type) and issubclass(hint, Config):
        return _nested(hint)
    raise TypeError(f"Config field {field!r} has an unsupported annotation {hint!r}")


def _identity(value: Any, key: str) -> Any:
    return value


def _none(value: Any, key: str) -> None:
    if value is not None:
        raise _type_error(key, "None", value)


def _bool(value: Any, key: str) -> bool:
    if value is True or value is False:
        return bool(value)
    raise _type_error(key, "bool", value)


def _int(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _type_error(key, "int", value)


def _float(value: Any, key: str) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise _type_error(key, "float", value)


def _str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    raise _type_error(key, "str", value)


_SCALARS: dict[Any, Converter] = {bool: _bool, int: _int, float: _float, str: _str}


def _union(args: tuple[Any, ...], field: str) -> Converter:
    optional = type(None) in args
    arms = [_converter(arm, field) for arm in args if arm is not type(None)]
    expected = " | ".join(describe_annotation(a) for a in args)
    if len(arms) == 1:
        only = arms[0]  # `X | None`: X's own error is the precise one

        def convert_optional(value: Any, key: str) -> Any:
            return None if value is None else only(value, key)

        return convert_optional

    def convert(value: Any, key: str) -> Any:
        if value is None and optional:
            return None
        for arm in arms:
            try:
                return arm(value, key)
            except ConfigError:
                continue
        raise _type_error(key, expected, value)

    return convert


def _literal(args: tuple[Any, ...]) -> Converter:
    allowed = {(type(a), a) for a in args}
    choices = [str(a) for a in args]
    listed = ", ".join(repr(a) for a in args)

    def convert(value: Any, key: str) -> Any:
        try:
            if (type(value), value) in allowed:
                return value
        except TypeError:  # unhashable value
            pass
        raise ConfigError(
            f"{key} must be one of {listed}, got {value!r}",
            key=key,
            hint=did_you_mean(value, choices) if isinstance(value, str) else None,
        )

    return convert


def _sequence(hint: Any, origin: type, args: tuple[Any, ...], field: str) -> Converter:
    expected = describe_annotation(hint)
    fixed = origin is tuple and bool(args) and not (len(args) == 2 and args[1] is Ellipsis)
    if fixed:
        items = [_converter(a, field) for a in args]
    else:
        item = _converter(args[0], field) if args else _identity

    def convert(value: Any, key: str) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, expected, value)
        if fixed:
            if len(value) != len(items):
                raise ConfigError(f"{key} must have {len(items)} items, got {len(value)}", key=key)
            out = [c(v, f"{key}[{i}]") for i, (c, v) in enumerate(zip(items, value, strict=True))]
        else:
            out = [item(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            return (
                value if type(value) is tuple and all(map(operator.is_, out, value)) else tuple(out)
            )
        return out

    return convert


def _mapping(hint: Any, args: tuple[Any, ...], field: str) -> Converter:
    expected = describe_annotation(hint)
    key_of, value_of = (_converter(a, field) for a in args) if args else (_identity, _identity)

    def convert(value: Any, key: str) -> Any:
        if not isinstance(value, Mapping):
            raise _type_error(key, expected, value)
        return {key_of(k, key): value_of(v, f"{key}.{k}") for k, v in value.items()}

    return convert


def _nested(cls: type[Config]) -> Converter:
    def convert(value: Any, key: str) -> Any:
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(cls, value, prefix=key + ".")
        raise _type_error(key, cls.__name__, value)

    return convert


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    if value is None:
        return ConfigError(
            f"{key} is null (empty), but must be {expected}",
            key=key,
            hint="give it a value, or leave the key out to use its default",
        )
    hint = "quote the value to make it a string" if expected == "str" else None
    return ConfigError(
        f"{key} must be {expected}, got {value!r} ({type(value).__name__})", key=key, hint=hint
    )


_ATOMS = frozenset({int, float, str, bool, type(None)})


def _plain(value: Any) -> Any:
    if type(value) in _ATOMS:
        return value
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
