"""The shipped recipe configs and how ``--config`` finds a file.

``legollm pretrain --config tiny`` reads the ``tiny.yaml`` shipped in ``lego/recipes/configs``;
any other value is a path. Reading the file and applying ``key=value`` overrides is
[`lego.protocols.load_config()`][lego.protocols.load_config], the project's one config
reader: each override is converted by the annotation of the field it names.

    >>> "tiny" in shipped_configs()
    True
    >>> find_config("tiny").name
    'tiny.yaml'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TypeVar

from lego.protocols import Config, ConfigError, did_you_mean, load_config

__all__ = ["shipped_configs", "find_config", "read_recipe_config"]

C = TypeVar("C", bound=Config)


def _folder() -> Path:
    return Path(str(resources.files("lego.recipes") / "configs"))


def shipped_configs() -> list[str]:
    """Names of the configs shipped with legollm (``tiny``, ``gpt2-124m``).

    Returns:
        The names, sorted.
    """
    return sorted(p.name[: -len(".yaml")] for p in _folder().glob("*.yaml"))


def find_config(spec: str | os.PathLike[str]) -> Path:
    """Resolve ``--config``: an existing file, or the name of a shipped config.

    Args:
        spec: A path to a YAML file, or a shipped name like ``tiny`` or ``gpt2-124m``.

    Returns:
        The file.

    Raises:
        ConfigError: Neither a file nor a shipped name (the shipped names are suggested);
            a directory.
    """
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(
            "--config names a folder, not a YAML file",
            path=path,
            key="--config",
            hint="give the config file itself, e.g. examples/pipelines/tiny.yaml",
        )
    name = str(spec).removesuffix(".yaml")
    shipped = _folder() / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"config {str(spec)!r} is neither a file nor a shipped config",
        path=path,
        key="--config",
        hint=did_you_mean(name, shipped_configs()) + " (or give the path of a YAML file)",
    )


def read_recipe_config(cls: type[C], spec: str | os.PathLike[str], overrides: Sequence[str]) -> C:
    """Read a recipe's config: find the file, apply the overrides, validate.

    Args:
        cls: The recipe's config class.
        spec: ``--config``: a path or a shipped name.
        overrides: ``key=value`` strings (dotted for sections: ``optim.lr=3e-4``).

    Returns:
        The validated config.

    Raises:
        ConfigError: See [`find_config()`][lego.recipes.configs.find_config] and
            [`lego.protocols.load_config()`][lego.protocols.load_config].
        FormatError: The file is not YAML or not a mapping.
    """
    return load_config(cls, find_config(spec), overrides, what="recipe config")
