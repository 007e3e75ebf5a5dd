"""The ``lego-data prepare`` configuration: YAML files, command-line flags and overrides.

A config file holds the keys of [`PrepareConfig`][lego.data.config.PrepareConfig] (``source``
is accepted for ``corpus``)::

    # examples/configs/datasets/tiny_shakespeare.yaml
    corpus: tiny_shakespeare
    tokenizer: tiktoken:gpt2
    split: characters
    val_fraction: 0.1
    out_dir: data/tiny_shakespeare
    workers: null        # all CPUs

Command-line flags replace file values, and ``key=value`` overrides (values parsed as YAML:
``val_fraction=0.05``, ``workers=null``) replace both. Unknown keys are a
[`ConfigError`][lego.protocols.ConfigError] that suggests the closest key. Relative paths are
relative to the working directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lego.protocols import Config, ConfigError, FormatError
from lego.protocols.files import read_text

__all__ = ["PrepareConfig", "load_yaml_config", "parse_overrides", "build_prepare_config"]

_OVERRIDE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_ALIASES = {"source": "corpus"}


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(Config):
    """Everything ``lego-data prepare`` needs.

    Attributes:
        corpus: A corpus name (``python-stdlib``, ``tiny_shakespeare``, ...), path or URL.
        tokenizer: A tokenizer spec: ``tiktoken:gpt2``, a tiktoken name, or a lego tokenizer
            ``.json`` file.
        out_dir: The dataset directory to write.
        val_fraction: The validation fraction, in ``[0, 1)``.
        split: ``auto``, ``documents`` or ``characters``.
        workers: Worker processes (None: all CPUs).
        eot_id: The end-of-text id (None: the tokenizer's ``<|endoftext|>``).
        seed: The seed of the document split.
        dtype: Force ``uint16`` or ``uint32`` (None: by vocabulary size).
        unit: What a document is in text files: ``file``, ``line`` or ``paragraph``.
        separator: A document separator line in text files, if any.
        text_field: The text key of ``.jsonl`` lines.
        errors: ``strict`` or ``skip`` for binary / non-UTF-8 input.
        cache_dir: Where downloaded corpora are kept (None: the default cache).
    """

    corpus: str
    tokenizer: str
    out_dir: str
    val_fraction: float = 0.1
    split: Literal["auto", "documents", "characters"] = "auto"
    workers: int | None = None
    eot_id: int | None = None
    seed: int = 0
    dtype: Literal["uint16", "uint32"] | None = None
    unit: Literal["file", "line", "paragraph"] = "file"
    separator: str | None = None
    text_field: str = "text"
    errors: Literal["strict", "skip"] = "strict"
    cache_dir: str | None = None

    def validate(self) -> None:
        """Check ranges: ``val_fraction`` in ``[0, 1)``, ``workers >= 1``."""
        super().validate()
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction must be in [0, 1), got {self.val_fraction}",
                key="val_fraction",
                hint="e.g. 0.1 for 10% validation, 0 for none",
            )
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}", key="workers")
        for name in ("corpus", "tokenizer", "out_dir"):
            if not getattr(self, name).strip():
                raise ConfigError(f"{name} must not be empty", key=name)


def load_yaml_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file into a dictionary.

    Args:
        path: The file.

    Returns:
        Its top-level mapping (an empty file gives ``{}``).

    Raises:
        ConfigError: When the file does not exist or cannot be read.
        FormatError: When it is not UTF-8 (with the line and byte), not YAML, or its top
            level is not a mapping.
    """
    file = Path(path)
    text = read_text(file, what="config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise FormatError(
            f"the config is not valid YAML: {getattr(err, 'problem', None) or err}",
            path=file,
            line=mark.line + 1 if mark is not None else None,
            column=mark.column + 1 if mark is not None else None,
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FormatError(
            f"the config must be a mapping of keys to values, not a {type(data).__name__}",
            path=file,
        )
    return {str(key): value for key, value in data.items()}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` overrides; values are read as YAML scalars.

    Args:
        items: Strings like ``"val_fraction=0.05"``.

    Returns:
        Keys to parsed values.

    Raises:
        ConfigError: On an item without ``=`` or with an unparsable value.
    """
    result: dict[str, Any] = {}
    for item in items:
        match = _OVERRIDE.fullmatch(item)
        if match is None:
            raise ConfigError(
                f"an override must look like key=value, got {item!r}",
                hint="e.g. val_fraction=0.05 or workers=null",
            )
        key, raw = match.groups()
        try:
            result[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(
                f"cannot read the value of override {key!r}: {raw!r}",
                key=key,
                hint="quote strings that contain YAML syntax",
            ) from None
    return result


def build_prepare_config(
    *,
    file: str | os.PathLike[str] | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> PrepareConfig:
    """Merge a config file, flags and ``key=value`` overrides (later ones win).

    Args:
        file: A YAML config file, or None.
        flags: Values from command-line flags (None values are ignored).
        overrides: ``key=value`` strings.

    Returns:
        The validated config.

    Raises:
        ConfigError: On unknown keys (with the closest one), missing required keys or
            invalid values.
        FormatError: On an unreadable config file.
    """
    merged: dict[str, Any] = {}
    layers: list[tuple[dict[str, Any], str | os.PathLike[str] | None]] = []
    if file is not None:
        layers.append((load_yaml_config(file), file))
    layers.append(({k: v for k, v in (flags or {}).items() if v is not None}, None))
    layers.append((parse_overrides(overrides), None))
    for values, origin in layers:
        for key, value in values.items():
            canonical = _ALIASES.get(key, key)
            if canonical != key and canonical in values:
                raise ConfigError(
                    f"both {key!r} and {canonical!r} are given",
                    path=origin,
                    key=key,
                    hint=f"{key!r} is another name for {canonical!r}; keep one",
                )
            merged[canonical] = value
    missing = [k for k in ("corpus", "tokenizer", "out_dir") if k not in merged]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)}",
            path=file,
            key=missing[0],
            hint="give them in the config file, as flags (--tokenizer, --out-dir) "
            "or as key=value overrides",
        )
    return PrepareConfig.from_dict(merged, path=file)
