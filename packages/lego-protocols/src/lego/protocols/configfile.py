"""Config files and ``key=value`` overrides: the one place they are read.

Every command that takes a configuration (``legollm pretrain --config tiny.yaml
optim.lr=3e-4``, ``lego-data prepare --config x.yaml val_fraction=0.05``) reads it with
[`load_config()`][lego.protocols.configfile.load_config]:

1. the file is read as YAML ([`read_config_file()`][lego.protocols.configfile.read_config_file]:
   a mapping at the top, no key twice, ``1e-3`` a float as in YAML 1.2);
2. each override ``a.b=value`` names a field through the config classes (``optim.lr`` is
   the ``lr`` field of the ``optim`` section), and its text is converted by that field's
   annotation ([`value_from_text()`][lego.protocols.configfile.value_from_text]): ``lr=1e-3``
   is a float because ``lr`` is a ``float``, ``prompt=123`` stays the string ``"123"``
   because ``prompt`` is a ``str``, ``workers=null`` is None for an ``int | None``;
3. the result is validated by [`Config.from_dict()`][lego.protocols.Config.from_dict].

A mistake is one [`ConfigError`][lego.protocols.ConfigError] that names the file, the full
dotted key (once) and the closest valid key::

    >>> from dataclasses import dataclass, field
    >>> from lego.protocols import Config
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Optim(Config):
    ...     lr: float = 3e-4
    >>> @dataclass(frozen=True, kw_only=True)
    ... class Run(Config):
    ...     steps: int = 10
    ...     optim: Optim = field(default_factory=Optim)
    >>> load_config(Run, overrides=["optim.lr=1e-3", "steps=20"])
    Run(steps=20, optim=Optim(lr=0.001))
    >>> load_config(Run, overrides=["optim.lrr=1e-3"])
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: unknown Optim key 'lrr'
      where: key 'optim.lrr'
      what to do: did you mean 'lr'?

YAML needs PyYAML, which lego-protocols does not depend on: bricks that read config files
declare it (``pip install PyYAML``); overrides alone need nothing.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from lego.protocols.config import Config, describe_annotation
from lego.protocols.errors import ConfigError, FormatError, did_you_mean
from lego.protocols.files import read_text
from lego.protocols.optional import import_optional

__all__ = [
    "read_config_file",
    "parse_override",
    "apply_overrides",
    "value_from_text",
    "load_config",
]

C = TypeVar("C", bound=Config)

_FLOAT = re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)$")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_][A-Za-z0-9_-]*)*")
_NULLS = frozenset({"null", "none", "~"})
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _yaml() -> Any:
    return import_optional("yaml", needed_by="reading YAML config files", install="PyYAML")


def _loader(yaml: Any) -> Any:
    """A SafeLoader that reads ``1e-3`` as a float and refuses a key given twice."""

    class Loader(yaml.SafeLoader):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise FormatError(
                        f"the key {key!r} is given twice in one mapping",
                        key=str(key),
                        line=key_node.start_mark.line + 1,
                        hint=f"keep one {key!r} (the first is on line {seen[key]})",
                    )
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    return Loader


def _parse_yaml(text: str, *, path: str | os.PathLike[str] | None) -> Any:
    yaml = _yaml()
    try:
        return yaml.load(text, Loader=_loader(yaml))
    except FormatError as err:
        raise FormatError(err.message, **{**err.context, "path": path}) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FormatError(
            f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
            path=path,
            line=mark.line + 1 if mark is not None else None,
            column=mark.column + 1 if mark is not None else None,
            hint="fix the YAML syntax (quote strings that hold ':' or '#')",
        ) from None


def read_config_file(path: str | os.PathLike[str], *, what: str = "config file") -> dict[str, Any]:
    """Read a YAML (or JSON, which is YAML) config file into a mapping.

    Args:
        path: The file.
        what: What the file is, for messages.

    Returns:
        Its top-level mapping (``{}`` for an empty file).

    Raises:
        ConfigError: The file does not exist or cannot be read, or PyYAML is missing.
        FormatError: Not UTF-8, not YAML (with line and column), a key given twice in one
            mapping, or a top level that is not a mapping.
    """
    data = _parse_yaml(read_text(path, what=what), path=path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FormatError(
            f"a {what} must hold a mapping of keys to values, not a {type(data).__name__}",
            path=path,
            hint="write 'key: value' lines",
        )
    return {str(key): value for key, value in data.items()}


def parse_override(item: str) -> tuple[str, str]:
    """Split one ``key=value`` override into its dotted key and its value text.

    Args:
        item: E.g. ``"optim.lr=3e-4"``.

    Returns:
        ``("optim.lr", "3e-4")``.

    Raises:
        ConfigError: No ``=``, an empty or malformed key, or an empty value.

    Example:
        >>> parse_override("optim.betas=[0.9, 0.99]")
        ('optim.betas', '[0.9, 0.99]')
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"the override {item!r} is not key=value",
            key=key or item,
            hint="write e.g. max_steps=100 or optim.lr=3e-4",
        )
    if not _KEY.fullmatch(key):
        raise ConfigError(
            f"the override key {key!r} is not a dotted name",
            key=key,
            hint="keys are field names joined by dots, e.g. optim.lr",
        )
    if not text.strip():
        raise ConfigError(
            f"the override {key}= has no value",
            key=key,
            hint=f"write {key}=VALUE; {key}=null for none, {key}='' for an empty string",
        )
    return key, text.strip()


def _unquote(text: str) -> str | None:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return None


def _scalar(text: str, hint: Any, key: str) -> Any:
    """Convert text to one scalar annotation; raise ConfigError when it does not fit."""
    lowered = text.lower()
    quoted = _unquote(text)
    if hint is str:
        return text if quoted is None else quoted
    if hint is bool:
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    elif hint is int:
        try:
            return int(text, 10)
        except ValueError:
            pass
    elif hint is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif (hint is None or hint is type(None)) and lowered in _NULLS:
        return None
    raise ConfigError(
        f"{key}={text!r} is not a valid {describe_annotation(hint)}", key=key, hint=_example(hint)
    )


def _example(hint: Any) -> str:
    examples = {bool: "true or false", int: "a whole number such as 8", float: "e.g. 3e-4"}
    if hint in examples:
        return f"write {examples[hint]}"
    return f"write a {describe_annotation(hint)}"


def value_from_text(text: str, hint: Any, *, key: str) -> Any:
    """Convert an override's text by the target field's annotation.

    Scalars are read as the annotation says (``"1e-3"`` for a ``float``, ``"true"`` /
    ``"no"`` for a ``bool``, the text itself for a ``str``, ``null`` / ``none`` / ``~`` for
    None where None is allowed; quotes keep a string as it is: ``name='null'``); lists,
    tuples, mappings, nested configs and ``Any`` are read as YAML flow text
    (``[0.9, 0.95]``, ``{n_layers: 2}``) and checked when the config is built.

    Args:
        text: The text after ``=``.
        hint: The field's annotation.
        key: The full dotted key, for messages.

    Returns:
        The value.

    Raises:
        ConfigError: The text is not a value of the annotation.

    Example:
        >>> value_from_text("1e-3", float, key="lr"), value_from_text("123", str, key="p")
        (0.001, '123')
        >>> value_from_text("null", int | None, key="workers") is None
        True
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if type(None) in args and text.lower() in _NULLS:
            return None
        arms = sorted((a for a in args if a is not type(None)), key=_specificity)
        for arm in arms:
            try:
                return value_from_text(text, arm, key=key)
            except ConfigError:
                continue
        raise ConfigError(
            f"{key}={text!r} is not a valid {describe_annotation(hint)}",
            key=key,
            hint=f"write a {describe_annotation(hint)}",
        )
    if origin is typing.Literal:
        quoted = _unquote(text)
        candidate = text if quoted is None else quoted
        for choice in args:
            if str(choice) == candidate:
                return choice
        choices = [str(a) for a in args]
        raise ConfigError(
            f"{key} must be one of {', '.join(repr(a) for a in args)}, got {candidate!r}",
            key=key,
            hint=did_you_mean(candidate, choices),
        )
    if hint in (str, bool, int, float, None, type(None)):
        return _scalar(text, hint, key)
    quoted = _unquote(text)
    if hint is Any or hint is object:
        return quoted if quoted is not None else _parse_yaml(text, path=None)
    try:
        return _parse_yaml(text, path=None)
    except FormatError as err:
        raise ConfigError(
            f"{key}={text!r} cannot be read: {err.message}",
            key=key,
            hint=f"write a {describe_annotation(hint)} in YAML flow style, e.g. [1, 2] or {{a: 1}}",
        ) from None


def _specificity(hint: Any) -> int:
    order = {bool: 0, int: 1, float: 2}
    if typing.get_origin(hint) is typing.Literal:
        return 3
    if hint is str:
        return 9
    return order.get(hint, 5)


def _field_hints(cls: type[Config]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _config_class(hint: Any) -> type[Config] | None:
    """The Config subclass a field holds (also through ``X | None``), or None."""
    if isinstance(hint, type) and issubclass(hint, Config):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arms) == 1:
            return _config_class(arms[0])
    return None


def _mapping_value(hint: Any) -> Any | None:
    """The value annotation of a mapping field (``Any`` for ``Any``), or None."""
    if hint is Any or hint is object:
        return Any
    origin = typing.get_origin(hint)
    if origin in (dict, collections.abc.Mapping):
        args = typing.get_args(hint)
        return args[1] if args else Any
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arms) == 1:
            return _mapping_value(arms[0])
    return None


def apply_overrides(
    cls: type[Config], data: Mapping[str, Any], overrides: Sequence[str]
) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a config mapping, each converted by its field.

    Args:
        cls: The config class the mapping is for (keys are checked against its fields,
            nested sections against theirs).
        data: The mapping (e.g. a config file's content); it is not modified.
        overrides: ``["optim.lr=3e-4", "max_steps=100"]``; later ones win.

    Returns:
        A new mapping.

    Raises:
        ConfigError: A malformed override, an unknown key (with the closest valid one and
            the full dotted key), a key that descends into a value that is not a section,
            or a value that does not fit its field.
    """
    result = _copy(data)
    for item in overrides:
        key, text = parse_override(item)
        parts = key.split(".")
        node: dict[str, Any] = result
        owner: type[Config] | None = cls
        hint: Any = None
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if owner is not None:
                fields = _field_hints(owner)
                if part not in fields:
                    raise ConfigError(
                        f"unknown {owner.__name__} key {part!r}",
                        key=key,
                        hint=did_you_mean(part, fields),
                    )
                hint = fields[part]
            elif hint is None:
                raise ConfigError(
                    f"cannot set {key!r}: {'.'.join(parts[:depth])!r} is not a section",
                    key=key,
                )
            if last:
                node[part] = value_from_text(text, hint, key=key)
                break
            nested = _config_class(hint) if owner is not None else None
            value_hint = None if nested is not None else _mapping_value(hint)
            if nested is None and value_hint is None:
                raise ConfigError(
                    f"cannot set {key!r}: {'.'.join(parts[: depth + 1])!r} is a "
                    f"{describe_annotation(hint)}, not a section",
                    key=key,
                )
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif isinstance(child, Config):
                child = node[part] = child.to_dict()
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"cannot set {key!r}: {'.'.join(parts[: depth + 1])!r} holds "
                    f"{child!r}, not a section",
                    key=key,
                )
            node = child
            owner, hint = (nested, None) if nested is not None else (None, value_hint)
    return result


def _copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def load_config(
    cls: type[C],
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    defaults: Mapping[str, Any] | None = None,
    what: str = "config file",
) -> C:
    """Read a config file, apply overrides and validate: the one way commands read configs.

    Args:
        cls: The config class to build.
        path: A YAML file, or None for none.
        overrides: ``key=value`` strings (dotted keys for sections), applied in order.
        defaults: Values under the file's (e.g. from command-line flags); the file and
            then the overrides win over them.
        what: What the file is, for messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: An unreadable file, an unknown key, a missing required key or a
            value that does not fit (see
            [`apply_overrides()`][lego.protocols.configfile.apply_overrides] and
            [`Config.from_dict()`][lego.protocols.Config.from_dict]).
        FormatError: A file that is not YAML or not a mapping.
    """
    data: dict[str, Any] = _copy(defaults or {})
    if path is not None:
        data = _merge(data, read_config_file(path, what=what))
    try:
        data = apply_overrides(cls, data, overrides)
    except ConfigError as err:
        raise ConfigError(err.message, **{**err.context, "path": None}) from None
    return cls.from_dict(data, path=path)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, dict):
            merged[key] = _merge(below, value)
        else:
            merged[key] = _copy(value) if isinstance(value, Mapping) else value
    return merged
