"""What a HuggingFace model directory holds, checked before any weight is read.

A HuggingFace model directory is ``config.json`` plus the weights as safetensors: one
``model.safetensors``, or shards ``model-00001-of-0000N.safetensors`` listed by
``model.safetensors.index.json``. ``config.json`` may also be a lego config (written by
``DecoderConfig.to_json``: no ``architectures`` or ``model_type``, mostly ``DecoderConfig``'s
field names); it is read as one, so a misspelled field gets a did-you-mean, and the weights
are read with its family's HF names.
[`open_hf_directory()`][lego.arch.hf.directory.open_hf_directory] checks the directory,
reads ``config.json`` into a [`DecoderConfig`][lego.arch.config.DecoderConfig] through the
matching family and maps every tensor name to its file, reading only the safetensors headers.

Pickle checkpoints (``pytorch_model.bin``, ``*.pt``, ``*.pth``) are refused and never
opened: unpickling runs arbitrary code. Convert them once, where you trust them, with
transformers: ``AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst,
safe_serialization=True)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open

from lego.arch.config import DecoderConfig
from lego.arch.hf.families import HFArchitecture, architecture_for_config, architecture_for_hf
from lego.protocols import CompatibilityError, ConfigError, FormatError, read_json

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_NAME",
    "HFDirectory",
    "is_lego_config",
    "open_hf_directory",
    "open_safetensors",
    "read_hf_config",
]

CONFIG_NAME = "config.json"
"""The configuration file of a model directory."""

SAFETENSORS_NAME = "model.safetensors"
"""The weights file of an unsharded model directory."""

INDEX_NAME = "model.safetensors.index.json"
"""The index of a sharded model directory (``weight_map``: tensor name -> shard file)."""

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files that are pickles: refused, never opened."""

MAX_LISTED = 20
"""At most this many names of each kind are listed in one error message."""


@dataclass(frozen=True)
class HFDirectory:
    """A checked model directory: its config and where each tensor is stored.

    Attributes:
        path: The directory.
        arch: The transformers architecture its ``config.json`` names.
        config: The lego config of the same model.
        files: Every tensor name to the safetensors file (relative to ``path``) holding it.
    """

    path: Path
    arch: HFArchitecture
    config: DecoderConfig
    files: Mapping[str, str]


def open_hf_directory(path: str | os.PathLike[str]) -> HFDirectory:
    """Check a model directory and read its config and tensor names (no tensor data).

    Args:
        path: The directory with ``config.json`` and ``model.safetensors`` (or the shards
            and ``model.safetensors.index.json``).

    Returns:
        The directory's config and file map.

    Raises:
        ConfigError: The directory or its ``config.json`` is missing, or it has no weights.
        FormatError: ``config.json`` or the index is not JSON, or a safetensors header is
            corrupt.
        CompatibilityError: The config names an unsupported architecture or value; the
            directory holds only pickle checkpoints (refused, never opened); shards listed
            in the index are missing.
    """
    directory = Path(path)
    _check_directory(directory)
    config_file = directory / CONFIG_NAME
    if not config_file.is_file() and _pickle_files(directory):
        raise _pickle_error(directory)  # a bare pickle dump without a config
    arch, config = _interpret(_read_config(config_file), config_file)
    return HFDirectory(path=directory, arch=arch, config=config, files=_weight_files(directory))


def read_hf_config(path: str | os.PathLike[str]) -> DecoderConfig:
    """Read a HuggingFace ``config.json`` as a [`DecoderConfig`][lego.arch.config.DecoderConfig].

    Args:
        path: A model directory, or its ``config.json``.

    Returns:
        The lego config of the same model.

    A lego config (written by ``DecoderConfig.to_json``) is read as one: a misspelled field
    is a ``ConfigError`` with the closest field names.

    Raises:
        ConfigError: The file is missing or unreadable; a lego config with an unknown or
            invalid field (with a did-you-mean).
        FormatError: It is not JSON.
        CompatibilityError: It describes an architecture lego-arch does not support (named,
            with the supported ones listed) or values lego does not reproduce (naming the key).
    """
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_NAME
    return _interpret(_read_config(file), file)[1]


def open_safetensors(file: Path) -> Any:
    """``safetensors.safe_open`` (PyTorch tensors, CPU) with a bad file as a FormatError.

    Args:
        file: A ``.safetensors`` file.

    Returns:
        The open handle (a context manager): ``keys()``, ``get_slice(name)``,
        ``get_tensor(name)``.

    Raises:
        FormatError: The file is truncated, corrupt or not safetensors.
    """
    try:
        return safe_open(str(file), framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
        raise FormatError(
            f"not a valid safetensors file: {exc}",
            path=file,
            hint="the file is truncated or corrupt; download or write it again",
        ) from None


def listing(groups: Mapping[str, Sequence[str]]) -> str:
    """Lines ``  missing (N): a, b, ...`` for the non-empty groups, at most 20 names each.

    Args:
        groups: A label (``"missing"``, ...) to the names it lists.

    Returns:
        The lines, joined by newlines.
    """
    lines = []
    for label, names in groups.items():
        if names:
            shown = ", ".join(names[:MAX_LISTED])
            more = f", ... ({len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
            lines.append(f"  {label} ({len(names)}): {shown}{more}")
    return "\n".join(lines)


def _read_config(file: Path) -> dict[str, Any]:
    data = read_json(file, what="HuggingFace config.json")
    if not isinstance(data, dict):
        raise CompatibilityError(
            "config.json is not a JSON object", path=file, hint="is it really a model config?"
        )
    return data


_LEGO_FIELDS = frozenset(f.name for f in dataclasses.fields(DecoderConfig))


def is_lego_config(data: Mapping[str, Any]) -> bool:
    """Whether a parsed ``config.json`` is a lego ``DecoderConfig`` rather than an HF config.

    No HF marker (``architectures``, ``model_type``), and a ``family`` field or at least
    half of the keys ``DecoderConfig``'s (so a config with a misspelled field still counts).

    Args:
        data: The parsed file.

    Returns:
        True for a lego config.
    """
    if "architectures" in data or "model_type" in data:
        return False
    known = len(_LEGO_FIELDS.intersection(data))
    return "family" in data or (known >= 2 and 2 * known >= len(data))


def _interpret(data: Mapping[str, Any], file: Path) -> tuple[HFArchitecture, DecoderConfig]:
    """The architecture and lego config of a parsed ``config.json`` (HF or lego)."""
    if not is_lego_config(data):
        arch = architecture_for_hf(data, path=file)
        return arch, _translate(arch, data, file)
    config = DecoderConfig.from_dict(data, path=file)  # a typo gets a did-you-mean
    try:
        return architecture_for_config(config), config
    except CompatibilityError as exc:
        context = {k: v for k, v in exc.context.items() if k != "path"}
        raise CompatibilityError(exc.message, path=file, **context) from None


def _translate(arch: HFArchitecture, data: Mapping[str, Any], file: Path) -> DecoderConfig:
    try:
        return arch.config_from_hf(data)
    except (CompatibilityError, ConfigError) as exc:
        context = {k: v for k, v in exc.context.items() if k != "path"}
        raise type(exc)(exc.message, path=file, **context) from None


def _check_directory(directory: Path) -> None:
    if directory.is_file():
        if directory.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_error(directory)
        raise ConfigError(
            "from_hf expects a model directory, got a file",
            path=directory,
            hint="give the directory that holds config.json and model.safetensors",
        )
    if not directory.is_dir():
        raise ConfigError(
            "model directory not found",
            path=directory,
            hint="check the path; download a Hub model first (e.g. `hf download <repo> "
            "--local-dir <dir>`)",
        )


def _pickle_files(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )


def _pickle_error(where: Path) -> CompatibilityError:
    names = _pickle_files(where) if where.is_dir() else [where.name]
    return CompatibilityError(
        f"only pickle checkpoints found ({', '.join(names)}): lego-arch never unpickles "
        "weights, because loading a pickle runs whatever code it contains",
        path=where,
        hint="convert them once, in an environment you trust, to safetensors: "
        "`transformers.AutoModelForCausalLM.from_pretrained(src).save_pretrained(dst, "
        "safe_serialization=True)`, then load dst",
    )


def _weight_files(directory: Path) -> dict[str, str]:
    """Map every tensor name to the safetensors file (relative to ``directory``) holding it."""
    index = directory / INDEX_NAME
    single = directory / SAFETENSORS_NAME
    if index.is_file():
        data = read_json(index, what="safetensors index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise CompatibilityError(
                "the safetensors index has no 'weight_map' of tensor name -> file",
                path=index,
                key="weight_map",
                hint="write the model again (to_hf or save_pretrained)",
            )
        outside = sorted({f for f in weight_map.values() if Path(f).name != f or f in ("", "..")})
        if outside:
            raise FormatError(
                "the safetensors index names files outside the model directory: "
                + ", ".join(repr(f) for f in outside[:MAX_LISTED]),
                path=index,
                key="weight_map",
                hint="shards are plain file names beside the index: write the model again "
                "(to_hf or save_pretrained) or download the index again",
            )
        absent = sorted({f for f in weight_map.values() if not (directory / f).is_file()})
        if absent:
            raise CompatibilityError(
                f"{len(absent)} shard file(s) listed in the index are missing: "
                + ", ".join(absent),
                path=directory,
                hint="download or copy every shard listed in model.safetensors.index.json",
            )
        return dict(weight_map)
    if single.is_file():
        with open_safetensors(single) as handle:
            return dict.fromkeys(handle.keys(), SAFETENSORS_NAME)
    if _pickle_files(directory):
        raise _pickle_error(directory)
    raise ConfigError(
        f"no weights in the model directory: neither {SAFETENSORS_NAME} nor {INDEX_NAME}",
        path=directory,
        hint="download the model's .safetensors files too",
    )
