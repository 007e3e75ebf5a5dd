"""Configs as data: validated, frozen, keyword-only dataclasses that round-trip through JSON.

Subclass :class:`Config` (or :class:`ModelConfig` for a model family) and decorate the
subclass with ``@dataclass(frozen=True, kw_only=True)``::

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
``tuple[...]`` fields, nested configs may be given as mappings), then :meth:`Config.validate`
runs for the cross-field rules. :meth:`Config.from_dict` refuses unknown keys and suggests
the closest valid one. Supported annotations: ``bool``, ``int``, ``float``, ``str``,
``None``, unions (``X | None``), ``Literal[...]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``list[X]``, ``dict[str, X]`` / ``Mapping[str, X]``, nested :class:`Config` subclasses and
``Any``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from lego.protocols.errors import ConfigError, FormatError, LegoError, did_you_mean

__all__ = ["Config", "ModelConfig"]

C = TypeVar("C", bound="Config")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base of every LegoLLM configuration: frozen, keyword-only, validated, serializable.

    Subclasses add fields (each with a type annotation from the supported set) and may
    override :meth:`validate` for rules that involve several fields.
    """

    _hints_cache: ClassVar[dict[type, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        hints = _field_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            converted = _convert(value, hints[field.name], field.name)
            if converted is not value:
                object.__setattr__(self, field.name, converted)
        self.validate()

    def validate(self) -> None:
        """Check rules that involve several fields; raise :class:`ConfigError` on a breach.

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
                key, a value of the wrong type or a failed :meth:`validate` rule.
        """
        try:
            return _from_mapping(cls, data, prefix="")
        except ConfigError as err:
            if path is None or err.path is not None:
                raise
            raise _relocate(err, path=path) from None

    @classmethod
    def from_json(cls: type[C], path: str | os.PathLike[str]) -> C:
        """Read a config from a JSON file written by :meth:`to_json`.

        Args:
            path: The JSON file.

        Returns:
            The validated config.

        Raises:
            FormatError: The file is not valid JSON or does not hold an object.
            ConfigError: The object is not a valid config (see :meth:`from_dict`).
        """
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config file not found", path=file, hint="check the path") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            line = err.lineno if isinstance(err, json.JSONDecodeError) else None
            raise FormatError(
                f"not a valid JSON file ({err})",
                path=file,
                line=line,
                hint="write it with Config.to_json or fix the syntax",
            ) from None
        if not isinstance(data, Mapping):
            raise FormatError(
                f"a config file must hold a JSON object, not {type(data).__name__}",
                path=file,
            )
        return cls.from_dict(data, path=file)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-compatible data (tuples become lists).

        Returns:
            Field names to values, nested configs as dictionaries, in field order.
        """
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write the config as indented JSON (UTF-8, trailing newline).

        Args:
            path: The file to write; parent directories must exist.
        """
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        Path(path).write_text(text, encoding="utf-8")

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


def _field_hints(cls: type) -> dict[str, Any]:
    cache = Config._hints_cache
    if cls not in cache:
        cache[cls] = typing.get_type_hints(cls)
    return cache[cls]


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
    hints = _field_hints(cls)
    kwargs = {name: _convert(value, hints[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if not prefix:
            raise
        key = prefix + err.key if err.key is not None else prefix.rstrip(".")
        raise _relocate(err, key=key) from None


def _relocate(err: LegoError, **changes: Any) -> LegoError:
    context = {**err.context, **changes}
    return type(err)(err.message, **context)


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against ``hint`` and return it, normalized (lists to tuples, ...)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if hint is None or hint is type(None):
        if value is None:
            return None
        raise _type_error(key, "None", value)
    if origin is typing.Union or origin is types.UnionType:
        errors: list[ConfigError] = []
        for arm in args:
            try:
                return _convert(value, arm, key)
            except ConfigError as err:
                errors.append(err)
        not_none = [err for arm, err in zip(args, errors, strict=True) if arm is not type(None)]
        if value is not None and len(not_none) == 1:
            raise not_none[0]  # `X | None`: the X error is the precise one
        raise _type_error(key, " | ".join(_describe(a) for a in args), value)
    if origin is typing.Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        choices = [str(a) for a in args]
        hint_text = did_you_mean(value, choices) if isinstance(value, str) else None
        raise ConfigError(
            f"{key} must be one of {', '.join(repr(a) for a in args)}, got {value!r}",
            key=key,
            hint=hint_text,
        )
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, "bool", value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, "int", value)
    if hint is float:
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, "float", value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, "str", value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, _describe(hint), value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}", key=key)
            items = [
                _convert(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        else:
            item_hint = args[0] if args else Any
            items = [_convert(v, item_hint, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise _type_error(key, _describe(hint), value)
        key_hint, value_hint = args if args else (Any, Any)
        return {
            _convert(k, key_hint, key): _convert(v, value_hint, f"{key}.{k}")
            for k, v in value.items()
        }
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return _from_mapping(hint, value, prefix=key + ".")
        raise _type_error(key, hint.__name__, value)
    raise TypeError(f"Config field {key!r} has an unsupported annotation {hint!r}")


def _type_error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{key} must be {expected}, got {value!r} ({type(value).__name__})", key=key)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
