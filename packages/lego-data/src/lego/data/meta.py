"""The prepared-dataset format: raw token files plus a validated ``meta.json``.

A prepared dataset is a directory::

    train.bin   raw little-endian uint16 (vocab_size <= 65536) or uint32 token ids
    val.bin     the same, for the validation split
    meta.json   what the files hold (this module)

The end-of-text id follows every document in the ``.bin`` files, so the files read with
``np.memmap(path, dtype=meta.numpy_dtype, mode="r")`` are the concatenation of the encoded
documents of each split. ``meta.json`` looks like::

    {
      "format": "lego-tokens", "version": 1,
      "dtype": "uint16",
      "vocab_size": 50257, "eot_id": 50256,
      "tokenizer": {"kind": "tiktoken", "name": "gpt2", "sha256": "<hex>"},
      "source": {"corpus": "tiny_shakespeare", "documents": 1, "bytes": 1115394},
      "split": {"method": "characters", "val_fraction": 0.1, "seed": 0},
      "splits": {
        "train": {"file": "train.bin", "tokens": 301967, "documents": 1},
        "val": {"file": "val.bin", "tokens": 36060, "documents": 1}
      }
    }

Token counts include the end-of-text ids. [`read_meta()`][lego.data.meta.read_meta]
validates every field; [`open_split()`][lego.data.meta.open_split] also checks that the file
size equals ``tokens * itemsize`` before mapping it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from lego.protocols import CompatibilityError, DataError, FormatError, did_you_mean
from lego.protocols.files import atomic_write_text, read_json

__all__ = [
    "META_FILENAME",
    "META_FORMAT",
    "META_VERSION",
    "DTYPES",
    "SplitMethod",
    "TokenizerInfo",
    "SourceInfo",
    "SplitInfo",
    "SplitFile",
    "TokenMeta",
    "dtype_for_vocab",
    "read_meta",
    "write_meta",
    "meta_path",
    "open_split",
]

META_FILENAME: Final = "meta.json"
"""The file name of the metadata inside a prepared-dataset directory."""
META_FORMAT: Final = "lego-tokens"
"""The value of the ``"format"`` field."""
META_VERSION: Final = 1
"""The format version this module reads and writes."""
DTYPES: Final[dict[str, int]] = {"uint16": 2**16, "uint32": 2**32}
"""The token dtypes, with the number of ids each can hold."""

SplitMethod = Literal["documents", "characters"]
"""How train and validation were separated: whole documents, or a character fraction."""

_SPLIT_METHODS: Final = ("documents", "characters")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer produced the ids.

    Attributes:
        kind: ``"tiktoken"`` (a tiktoken encoding by name), ``"lego"`` (a lego-tokenize
            JSON file) or ``"python"`` (any other in-process tokenizer).
        name: The encoding name, the tokenizer file's name, or the class name.
        sha256: A hex digest identifying the vocabulary (the tokenizer file's bytes, or the
            encoding's ranks and specials), or None when unknown.
    """

    kind: str
    name: str
    sha256: str | None = None


@dataclass(frozen=True)
class SourceInfo:
    """Where the text came from.

    Attributes:
        corpus: The corpus name, path or URL as given to ``prepare``.
        documents: How many documents it held.
        bytes: Its size in UTF-8 bytes.
    """

    corpus: str
    documents: int
    bytes: int


@dataclass(frozen=True)
class SplitInfo:
    """How the corpus was split into train and validation.

    Attributes:
        method: ``"documents"`` or ``"characters"``.
        val_fraction: The fraction of documents (or characters) in validation, in ``[0, 1)``.
        seed: The seed of the document choice (recorded for ``"characters"`` too).
    """

    method: SplitMethod
    val_fraction: float
    seed: int


@dataclass(frozen=True)
class SplitFile:
    """One split's token file.

    Attributes:
        file: The file name inside the dataset directory, e.g. ``"train.bin"``.
        tokens: How many token ids it holds, end-of-text ids included.
        documents: How many documents (or document pieces) it holds.
    """

    file: str
    tokens: int
    documents: int


@dataclass(frozen=True)
class TokenMeta:
    """The validated content of a ``meta.json``.

    Attributes:
        dtype: ``"uint16"`` or ``"uint32"``.
        vocab_size: The tokenizer's id space; every id in the files is below it.
        eot_id: The end-of-text id appended after every document.
        tokenizer: Which tokenizer produced the ids.
        source: Where the text came from.
        split: How train and validation were separated.
        splits: Split name (``"train"``, ``"val"``) to its token file.
        format: Always ``"lego-tokens"``.
        version: The format version (1).
    """

    dtype: str
    vocab_size: int
    eot_id: int
    tokenizer: TokenizerInfo
    source: SourceInfo
    split: SplitInfo
    splits: Mapping[str, SplitFile]
    format: str = META_FORMAT
    version: int = META_VERSION

    def __post_init__(self) -> None:
        _validate(self.to_dict(), path=None)

    @property
    def numpy_dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """The little-endian numpy dtype of the token files (``<u2`` or ``<u4``)."""
        return np.dtype("<u2") if self.dtype == "uint16" else np.dtype("<u4")

    @property
    def itemsize(self) -> int:
        """Bytes per token id (2 or 4)."""
        return 2 if self.dtype == "uint16" else 4

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dictionary, in the documented key order."""
        return {
            "format": self.format,
            "version": self.version,
            "dtype": self.dtype,
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "source": dataclasses.asdict(self.source),
            "split": dataclasses.asdict(self.split),
            "splits": {name: dataclasses.asdict(entry) for name, entry in self.splits.items()},
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, path: str | os.PathLike[str] | None = None
    ) -> TokenMeta:
        """Build a ``TokenMeta`` from a parsed ``meta.json``, validating every field.

        Args:
            data: The parsed JSON object.
            path: The file it came from, for error messages.

        Returns:
            The metadata.

        Raises:
            FormatError: On a missing, unknown or invalid field (naming the key).
        """
        _validate(data, path=path)  # every section holds exactly its dataclass's fields
        split = {**data["split"], "val_fraction": float(data["split"]["val_fraction"])}
        return cls(
            dtype=data["dtype"],
            vocab_size=data["vocab_size"],
            eot_id=data["eot_id"],
            tokenizer=TokenizerInfo(**data["tokenizer"]),
            source=SourceInfo(**data["source"]),
            split=SplitInfo(**split),
            splits={name: SplitFile(**entry) for name, entry in data["splits"].items()},
            format=data["format"],
            version=data["version"],
        )

    def check_tokenizer(self, vocab_size: int, eot_id: int, sha256: str | None = None) -> None:
        """Check that a tokenizer fits the ids in this dataset.

        Args:
            vocab_size: The tokenizer's (or model's) vocabulary size.
            eot_id: The tokenizer's end-of-text id.
            sha256: The tokenizer's identity digest; compared only when both sides know it.

        Raises:
            CompatibilityError: When the vocabulary size, the end-of-text id or the digest
                differ.
        """
        name = f"{self.tokenizer.kind} tokenizer {self.tokenizer.name!r}"
        if vocab_size != self.vocab_size:
            raise CompatibilityError(
                f"the dataset was prepared with a vocabulary of {self.vocab_size} ({name}), "
                f"the tokenizer given has {vocab_size}",
                key="vocab_size",
                hint="use the tokenizer the data was prepared with, or prepare it again",
            )
        if eot_id != self.eot_id:
            raise CompatibilityError(
                f"the dataset's end-of-text id is {self.eot_id} ({name}), "
                f"the tokenizer given uses {eot_id}",
                key="eot_id",
                hint="use the tokenizer the data was prepared with, or prepare it again",
            )
        known = self.tokenizer.sha256
        if sha256 is not None and known is not None and sha256.lower() != known:
            raise CompatibilityError(
                f"the dataset was prepared with another tokenizer ({name}, sha256 "
                f"{known[:12]}…), the tokenizer given has sha256 {sha256.lower()[:12]}…",
                key="tokenizer.sha256",
                hint="use the tokenizer the data was prepared with, or prepare it again",
            )


def dtype_for_vocab(vocab_size: int) -> str:
    """Choose the token dtype for a vocabulary size.

    Args:
        vocab_size: The number of ids (every id is below it).

    Returns:
        ``"uint16"`` when ``vocab_size <= 65536``, else ``"uint32"``.

    Raises:
        DataError: When ``vocab_size`` is not positive or exceeds 2**32.
    """
    if vocab_size <= 0:
        raise DataError(f"vocab_size must be positive, got {vocab_size}", key="vocab_size")
    for name, capacity in DTYPES.items():
        if vocab_size <= capacity:
            return name
    raise DataError(
        f"a vocabulary of {vocab_size} ids does not fit uint32",
        key="vocab_size",
        hint="token files store uint16 or uint32 ids; use a vocabulary below 2**32",
    )


def meta_path(path: str | os.PathLike[str]) -> Path:
    """Return the ``meta.json`` path of a dataset directory (or the path itself if a file).

    Args:
        path: A prepared-dataset directory or its ``meta.json``.

    Returns:
        The path of the metadata file.
    """
    p = Path(path)
    return p / META_FILENAME if p.is_dir() else p


def read_meta(path: str | os.PathLike[str]) -> TokenMeta:
    """Read and validate a dataset's ``meta.json``.

    Args:
        path: The prepared-dataset directory, or its ``meta.json``.

    Returns:
        The validated metadata.

    Raises:
        DataError: When the file does not exist.
        ConfigError: When it cannot be read (permissions, a directory).
        FormatError: When it is not UTF-8, not JSON (with the line and column), repeats a key,
            or a field is missing, unknown or invalid.
    """
    file = meta_path(path)
    if not file.is_file():
        raise DataError(
            "no prepared dataset here: meta.json is missing",
            path=file,
            hint="run `lego-data prepare` first, or point at the directory it wrote",
        )
    return TokenMeta.from_dict(read_json(file, what="meta.json"), path=file)


def write_meta(directory: str | os.PathLike[str], meta: TokenMeta) -> Path:
    """Write ``meta.json`` into a directory atomically (a temporary file, then a rename).

    Args:
        directory: The dataset directory (created if missing).
        meta: The metadata to write.

    Returns:
        The path written.

    Raises:
        ConfigError: When meta.json cannot be written (permissions, a full disk).
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / META_FILENAME
    atomic_write_text(target, json.dumps(meta.to_dict(), indent=2) + "\n", what="meta.json")
    return target


def open_split(
    path: str | os.PathLike[str], split: str = "train", *, meta: TokenMeta | None = None
) -> np.memmap[Any, np.dtype[np.unsignedinteger[Any]]]:
    """Map one split's token file read-only, after checking its size against ``meta.json``.

    Args:
        path: The prepared-dataset directory.
        split: The split name, e.g. ``"train"`` or ``"val"``.
        meta: The already-read metadata (read from ``path`` when None).

    Returns:
        A read-only 1-D ``np.memmap`` of the split's ids, shape ``(tokens,)``. An empty split
        is returned as a zero-length array (``np.memmap`` cannot map empty files).

    Raises:
        DataError: When the split is unknown or its file is missing.
        FormatError: When the file's size is not ``tokens * itemsize``.
    """
    folder = Path(path)
    if folder.name == META_FILENAME:
        folder = folder.parent
    meta = read_meta(folder) if meta is None else meta
    if split not in meta.splits:
        raise DataError(
            f"the dataset has no split {split!r}",
            path=folder,
            key=split,
            hint=did_you_mean(split, meta.splits),
        )
    entry = meta.splits[split]
    file = folder / entry.file
    if not file.is_file():
        raise DataError(
            f"the {split} token file is missing",
            path=file,
            hint="prepare the dataset again",
        )
    expected = entry.tokens * meta.itemsize
    actual = file.stat().st_size
    if actual != expected:
        raise FormatError(
            f"the {split} token file holds {actual} bytes, meta.json promises {entry.tokens} "
            f"{meta.dtype} tokens ({expected} bytes): the file is truncated or does not belong "
            "to this meta.json",
            path=file,
            key=f"splits.{split}.tokens",
            hint="prepare the dataset again",
        )
    if entry.tokens == 0:
        empty: Any = np.zeros(0, dtype=meta.numpy_dtype)
        return empty  # type: ignore[no-any-return]
    return np.memmap(file, dtype=meta.numpy_dtype, mode="r", shape=(entry.tokens,))


# --------------------------------------------------------------------------- validation

_TOP_KEYS: Final = (
    "format",
    "version",
    "dtype",
    "vocab_size",
    "eot_id",
    "tokenizer",
    "source",
    "split",
    "splits",
)


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


_SECTION_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "tokenizer": _field_names(TokenizerInfo),
    "source": _field_names(SourceInfo),
    "split": _field_names(SplitInfo),
}
_SPLIT_FILE_KEYS: Final = _field_names(SplitFile)


def _fail(message: str, *, path: str | os.PathLike[str] | None, key: str) -> FormatError:
    return FormatError(
        message,
        path=path,
        key=key,
        hint="meta.json was edited or written by another tool; prepare the dataset again",
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(
    obj: object,
    expected: tuple[str, ...],
    *,
    path: str | os.PathLike[str] | None,
    prefix: str,
) -> Mapping[str, Any]:
    where = prefix or "meta.json"
    if not isinstance(obj, Mapping):
        raise _fail(f"{where} must be a JSON object", path=path, key=prefix or "(root)")
    for key in obj:
        if key not in expected:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise FormatError(
                f"unknown field {full!r} in meta.json",
                path=path,
                key=full,
                hint=did_you_mean(str(key), expected),
            )
    for key in expected:
        if key not in obj:
            full = f"{prefix}.{key}" if prefix else key
            raise _fail(f"meta.json lacks the field {full!r}", path=path, key=full)
    return obj


def _count(value: object, *, path: str | os.PathLike[str] | None, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _fail(f"{key} must be a non-negative integer, got {value!r}", path=path, key=key)
    return value


def _validate(data: object, *, path: str | os.PathLike[str] | None) -> None:
    root = _check_keys(data, _TOP_KEYS, path=path, prefix="")
    if root["format"] != META_FORMAT:
        raise FormatError(
            f"not a lego token dataset: format is {root['format']!r}, expected {META_FORMAT!r}",
            path=path,
            key="format",
        )
    version = root["version"]
    if not _is_int(version) or version < 1:
        raise _fail(
            f"version must be a positive integer, got {version!r}", path=path, key="version"
        )
    if version > META_VERSION:
        raise FormatError(
            f"meta.json has format version {version}; this lego-data reads version {META_VERSION}",
            path=path,
            key="version",
            hint="upgrade lego-data",
        )
    dtype = root["dtype"]
    if dtype not in DTYPES:
        raise _fail(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}", path=path, key="dtype")
    vocab_size = root["vocab_size"]
    if not _is_int(vocab_size) or vocab_size <= 0:
        raise _fail(
            f"vocab_size must be a positive integer, got {vocab_size!r}",
            path=path,
            key="vocab_size",
        )
    if vocab_size > DTYPES[dtype]:
        raise _fail(
            f"a vocabulary of {vocab_size} ids does not fit dtype {dtype}",
            path=path,
            key="dtype",
        )
    eot_id = root["eot_id"]
    if not _is_int(eot_id) or not 0 <= eot_id < vocab_size:
        raise _fail(
            f"eot_id must be an integer in [0, {vocab_size}), got {eot_id!r}",
            path=path,
            key="eot_id",
        )
    for section, keys in _SECTION_KEYS.items():
        _check_keys(root[section], keys, path=path, prefix=section)
    tok = root["tokenizer"]
    for key in ("kind", "name"):
        if not isinstance(tok[key], str) or not tok[key]:
            raise _fail(
                f"tokenizer.{key} must be a non-empty string, got {tok[key]!r}",
                path=path,
                key=f"tokenizer.{key}",
            )
    sha = tok["sha256"]
    if sha is not None and (not isinstance(sha, str) or not _HEX64.fullmatch(sha)):
        raise _fail(
            f"tokenizer.sha256 must be 64 lowercase hex digits or null, got {sha!r}",
            path=path,
            key="tokenizer.sha256",
        )
    src = root["source"]
    if not isinstance(src["corpus"], str) or not src["corpus"]:
        raise _fail(
            f"source.corpus must be a non-empty string, got {src['corpus']!r}",
            path=path,
            key="source.corpus",
        )
    _count(src["documents"], path=path, key="source.documents")
    _count(src["bytes"], path=path, key="source.bytes")
    spl = root["split"]
    if spl["method"] not in _SPLIT_METHODS:
        raise _fail(
            f"split.method must be 'documents' or 'characters', got {spl['method']!r}",
            path=path,
            key="split.method",
        )
    fraction = spl["val_fraction"]
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not math.isfinite(fraction)
        or not 0.0 <= fraction < 1.0
    ):
        raise _fail(
            f"split.val_fraction must be a number in [0, 1), got {fraction!r}",
            path=path,
            key="split.val_fraction",
        )
    if not _is_int(spl["seed"]):
        raise _fail(
            f"split.seed must be an integer, got {spl['seed']!r}", path=path, key="split.seed"
        )
    splits = root["splits"]
    if not isinstance(splits, Mapping):
        raise _fail("splits must be a JSON object", path=path, key="splits")
    if "train" not in splits:
        raise _fail("splits lacks the 'train' split", path=path, key="splits.train")
    files: set[str] = set()
    for name, entry in splits.items():
        prefix = f"splits.{name}"
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
            raise _fail(f"invalid split name {name!r}", path=path, key=prefix)
        _check_keys(entry, _SPLIT_FILE_KEYS, path=path, prefix=prefix)
        file = entry["file"]
        if not isinstance(file, str) or not _FILE_NAME.fullmatch(file) or file in (".", ".."):
            raise _fail(
                f"{prefix}.file must be a plain file name inside the dataset directory, "
                f"got {file!r}",
                path=path,
                key=f"{prefix}.file",
            )
        if file == META_FILENAME or file in files:
            raise _fail(f"{prefix}.file {file!r} is used twice", path=path, key=f"{prefix}.file")
        files.add(file)
        _count(entry["tokens"], path=path, key=f"{prefix}.tokens")
        _count(entry["documents"], path=path, key=f"{prefix}.documents")
