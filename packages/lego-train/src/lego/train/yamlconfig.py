"""YAML configs with ``key=value`` overrides (dotted keys for nested sections).

``lego-train pretrain --config tiny optim.lr=3e-4 max_steps=200`` reads the shipped
``tiny.yaml`` (or a path), then sets each override: the value is parsed as YAML (so
``true``, ``[0.9, 0.95]`` and ``null`` work), and ``3e-4`` is a float even though YAML 1.1
would read it as a string.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from lego.protocols import ConfigError, FormatError, read_text

__all__ = ["load_yaml", "parse_value", "apply_overrides", "shipped_configs", "find_config"]

_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_value(text: str) -> Any:
    """Parse one override value as YAML (``3e-4`` -> float, ``true`` -> bool, ``a`` -> str).

    Args:
        text: The text after ``=``.

    Returns:
        The value.
    """
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def shipped_configs() -> list[str]:
    """Names of the configs shipped in ``lego/train/configs`` (e.g. ``tiny``)."""
    folder = resources.files("lego.train") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def find_config(spec: str) -> Path:
    """Resolve ``--config``: an existing path, or the name of a shipped config.

    Args:
        spec: A path to a YAML file, or a shipped name like ``tiny`` or ``gpt2-124m``.

    Returns:
        The file.

    Raises:
        ConfigError: When neither exists (listing the shipped names).
    """
    path = Path(spec)
    if path.is_file():
        return path
    name = spec[:-5] if spec.endswith(".yaml") else spec
    shipped = Path(str(resources.files("lego.train") / "configs" / f"{name}.yaml"))
    if shipped.is_file():
        return shipped
    from lego.protocols import did_you_mean

    raise ConfigError(
        f"config {spec!r} is neither a file nor a shipped config",
        path=spec,
        key="--config",
        hint=did_you_mean(name, shipped_configs()),
    )


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Args:
        path: The file.

    Returns:
        The mapping (empty for an empty file).

    Raises:
        ConfigError: When the file cannot be read.
        FormatError: When it is not YAML or not a mapping (with the line).
    """
    text = read_text(path, what="training config")
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise FormatError(
            f"not valid YAML: {getattr(exc, 'problem', None) or exc}",
            path=path,
            line=mark.line + 1 if mark is not None else None,
            hint="fix the YAML syntax",
        ) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FormatError(
            f"a training config must be a mapping, not {type(data).__name__}",
            path=path,
            hint="write key: value lines",
        )
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` overrides, dotted keys creating or entering nested mappings.

    Args:
        data: The config mapping (not modified).
        overrides: ``["optim.lr=3e-4", "max_steps=100"]``.

    Returns:
        A new mapping.

    Raises:
        ConfigError: On an override without ``=`` or that descends into a non-mapping.
    """
    result: dict[str, Any] = _deep_copy(data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not key=value",
                key=item,
                hint="write e.g. max_steps=100 or optim.lr=3e-4",
            )
        parts = key.split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"cannot set {key!r}: {'.'.join(parts[: depth + 1])!r} is not a section",
                    key=key,
                )
            node = child
        node[parts[-1]] = parse_value(text)
    return result


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}
