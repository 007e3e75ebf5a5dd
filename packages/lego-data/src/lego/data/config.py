"""The ``lego-data prepare`` configuration: a YAML file, command-line flags and overrides.

A config file holds the keys of [`PrepareConfig`][lego.data.config.PrepareConfig] (``source``
is accepted for ``corpus``)::

    # examples/configs/datasets/tiny_shakespeare.yaml
    corpus: tiny_shakespeare
    tokenizer: tiktoken:gpt2
    split: characters
    val_fraction: 0.1
    out_dir: data/tiny_shakespeare
    workers: null        # all CPUs

It is read by lego-protocols' one config reader
([`read_config_file()`][lego.protocols.read_config_file], YAML with ``1e-3`` a float and no
key twice). Command-line flags replace file values, and ``key=value`` overrides replace both;
an override's text is converted by the field's annotation
(``lego.protocols.configfile.apply_overrides``): ``val_fraction=1e-3`` is
a float, ``workers=null`` is None, ``corpus=123`` the string ``"123"``. Unknown keys are a
[`ConfigError`][lego.protocols.ConfigError] that suggests the closest key. Relative paths are
relative to the working directory.

Example:
    >>> config = build_prepare_config(
    ...     flags={"corpus": "python-stdlib", "tokenizer": "tiktoken:gpt2"},
    ...     overrides=["out_dir=data/stdlib", "val_fraction=1e-3"],
    ... )
    >>> config.val_fraction, config.workers
    (0.001, None)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lego.protocols import Config, ConfigError, check_float, check_int, read_config_file
from lego.protocols.configfile import apply_overrides

__all__ = ["PrepareConfig", "build_prepare_config", "ALIASES"]

ALIASES: dict[str, str] = {"source": "corpus"}
"""Other names a config file may use for a key."""
_REQUIRED = ("corpus", "tokenizer", "out_dir")


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(Config):
    """Everything ``lego-data prepare`` needs.

    Attributes:
        corpus: A corpus name (``python-stdlib``, ``tiny_shakespeare``, ...), path or URL.
        tokenizer: A tokenizer spec for
            [`lego.tokenize.resolve_tokenizer`][lego.tokenize.resolve_tokenizer]:
            ``tiktoken:gpt2``, a tiktoken name, a lego tokenizer ``.json`` file,
            ``hf:tokenizer.json``, ``gpt2:FOLDER``.
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
        """Check ranges: ``val_fraction`` in ``[0, 1)``, ``workers >= 1``, names not empty."""
        super().validate()
        check_float(
            "val_fraction",
            self.val_fraction,
            low=0.0,
            high=1.0,
            high_open=True,
            hint="e.g. 0.1 for 10% validation, 0 for none",
        )
        if self.workers is not None:
            check_int("workers", self.workers, minimum=1, hint="null uses every CPU")
        for name in _REQUIRED:
            if not getattr(self, name).strip():
                raise ConfigError(f"{name} must not be empty", key=name)


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
        overrides: ``key=value`` strings, converted by the field's annotation.

    Returns:
        The validated config.

    Raises:
        ConfigError: On unknown keys (with the closest one), missing required keys, an
            override without a value, or invalid values.
        FormatError: On a config file that is not YAML or not a mapping.
    """
    data: dict[str, Any] = {}
    if file is not None:
        data = read_config_file(file, what="config file")
        for alias, canonical in ALIASES.items():
            if alias in data:
                if canonical in data:
                    raise ConfigError(
                        f"both {alias!r} and {canonical!r} are given",
                        path=file,
                        key=alias,
                        hint=f"{alias!r} is another name for {canonical!r}; keep one",
                    )
                data[canonical] = data.pop(alias)
    data.update({key: value for key, value in (flags or {}).items() if value is not None})
    data = apply_overrides(PrepareConfig, data, overrides)
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ConfigError(
            f"missing {', '.join(missing)}",
            path=file,
            key=missing[0],
            hint="give them in the config file, as flags (--tokenizer, --out-dir) "
            "or as key=value overrides",
        )
    return PrepareConfig.from_dict(data, path=file)
