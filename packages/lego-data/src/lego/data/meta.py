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

Token counts include the end-of-text ids. Each section is a
[`Config`][lego.protocols.Config] (the one validation mechanism): the field types come from
the annotations, the rules from each class's ``validate()``.
[`read_meta()`][lego.data.meta.read_meta] checks ``format`` and ``version`` first (a newer
file may hold fields this version does not know), then every field with
[`Config.from_header()`][lego.protocols.Config.from_header]: a bad file is a
[`FormatError`][lego.protocols.FormatError] that names the file and the dotted key
(``splits.val.tokens``). [`open_split()`][lego.data.meta.open_split] also checks that the file
size equals ``tokens * itemsize`` before mapping it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from lego.protocols import (
    CompatibilityError,
    Config,
    ConfigError,
    DataError,
    FormatError,
    check_envelope,
    check_float,
    check_int,
    did_you_mean,
)
from lego.protocols.files import atomic_write_text, read_json

__all__ = [
    "META_FILENAME",
    "META_FORMAT",
    "META_VERSION",
    "DTYPES",
    "TokenDtype",
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

TokenDtype = Literal["uint16", "uint32"]
"""The dtypes of token files."""
SplitMethod = Literal["documents", "characters"]
"""How train and validation were separated: whole documents, or a character fraction."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FILE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
_WHAT = "dataset metadata (meta.json)"
_FIX = "meta.json was edited or written by another tool; prepare the dataset again"


# The sections take positional arguments too (``SplitFile("train.bin", 5, 1)``), as they
# did before they became Configs; TokenMeta is keyword-only.


@dataclass(frozen=True)
class TokenizerInfo(Config):
    """Which tokenizer produced the ids.

    Attributes:
        kind: ``"tiktoken"`` (a tiktoken encoding), ``"lego"`` (a lego-tokenize tokenizer),
            ``"hf"`` / ``"gpt2"`` (a HuggingFace or GPT-2 file) or ``"python"`` (any other
            in-process tokenizer).
        name: The encoding name, the tokenizer file's name, or the class name.
        sha256: A hex digest identifying the vocabulary: the lego tokenizer file's bytes, or
            [`lego.tokenize.tokenizer_fingerprint`][lego.tokenize.tokenizer_fingerprint];
            None when unknown.
    """

    kind: str
    name: str
    sha256: str | None = None

    def validate(self) -> None:
        """Check that kind and name are not empty and the digest is 64 lowercase hex digits."""
        super().validate()
        for key in ("kind", "name"):
            if not getattr(self, key):
                raise ConfigError(f"tokenizer.{key} must not be empty", key=key)
        if self.sha256 is not None and not _HEX64.fullmatch(self.sha256):
            raise ConfigError(
                f"tokenizer.sha256 must be 64 lowercase hex digits or null, got {self.sha256!r}",
                key="sha256",
            )


@dataclass(frozen=True)
class SourceInfo(Config):
    """Where the text came from.

    Attributes:
        corpus: The corpus name, path or URL as given to ``prepare``.
        documents: How many documents it held.
        bytes: Its size in UTF-8 bytes.
    """

    corpus: str
    documents: int
    bytes: int

    def validate(self) -> None:
        """Check that the name is not empty and the counts are not negative."""
        super().validate()
        if not self.corpus:
            raise ConfigError("source.corpus must not be empty", key="corpus")
        check_int("documents", self.documents, minimum=0)
        check_int("bytes", self.bytes, minimum=0)


@dataclass(frozen=True)
class SplitInfo(Config):
    """How the corpus was split into train and validation.

    Attributes:
        method: ``"documents"`` or ``"characters"``.
        val_fraction: The fraction of documents (or characters) in validation, in ``[0, 1)``.
        seed: The seed of the document choice (recorded for ``"characters"`` too).
    """

    method: SplitMethod
    val_fraction: float
    seed: int

    def validate(self) -> None:
        """Check that ``val_fraction`` lies in ``[0, 1)``."""
        super().validate()
        check_float("val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)


@dataclass(frozen=True)
class SplitFile(Config):
    """One split's token file.

    Attributes:
        file: The file name inside the dataset directory, e.g. ``"train.bin"``.
        tokens: How many token ids it holds, end-of-text ids included.
        documents: How many documents (or document pieces) it holds.
    """

    file: str
    tokens: int
    documents: int

    def validate(self) -> None:
        """Check that the file is a plain name inside the directory and counts are >= 0."""
        super().validate()
        if not _FILE_NAME.fullmatch(self.file) or self.file in (".", "..", META_FILENAME):
            raise ConfigError(
                f"file must be a plain file name inside the dataset directory, got {self.file!r}",
                key="file",
            )
        check_int("tokens", self.tokens, minimum=0)
        check_int("documents", self.documents, minimum=0)


@dataclass(frozen=True, kw_only=True)
class TokenMeta(Config):
    """The validated content of a ``meta.json``.

    Attributes:
        format: Always ``"lego-tokens"``.
        version: The format version (1).
        dtype: ``"uint16"`` or ``"uint32"``.
        vocab_size: The tokenizer's id space; every id in the files is below it.
        eot_id: The end-of-text id appended after every document.
        tokenizer: Which tokenizer produced the ids.
        source: Where the text came from.
        split: How train and validation were separated.
        splits: Split name (``"train"``, ``"val"``) to its token file.
    """

    format: str = META_FORMAT
    version: int = META_VERSION
    dtype: TokenDtype
    vocab_size: int
    eot_id: int
    tokenizer: TokenizerInfo
    source: SourceInfo
    split: SplitInfo
    splits: Mapping[str, SplitFile]

    def validate(self) -> None:
        """Check the rules between fields: the envelope, ids against the vocabulary, splits."""
        super().validate()
        if self.format != META_FORMAT:
            raise ConfigError(
                f"not a lego token dataset: format is {self.format!r}, expected {META_FORMAT!r}",
                key="format",
            )
        check_int("version", self.version, minimum=1, maximum=META_VERSION)
        check_int("vocab_size", self.vocab_size, minimum=1)
        if self.vocab_size > DTYPES[self.dtype]:
            raise ConfigError(
                f"a vocabulary of {self.vocab_size} ids does not fit dtype {self.dtype}",
                key="dtype",
            )
        check_int("eot_id", self.eot_id, minimum=0, maximum=self.vocab_size - 1)
        if "train" not in self.splits:
            raise ConfigError("splits lacks the 'train' split", key="splits.train")
        files: set[str] = set()
        for name, entry in self.splits.items():
            if not _FILE_NAME.fullmatch(name):
                raise ConfigError(f"invalid split name {name!r}", key=f"splits.{name}")
            if entry.file in files:
                raise ConfigError(
                    f"splits.{name}.file {entry.file!r} is used twice",
                    key=f"splits.{name}.file",
                )
            files.add(entry.file)

    @property
    def numpy_dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        """The little-endian numpy dtype of the token files (``<u2`` or ``<u4``)."""
        return np.dtype("<u2") if self.dtype == "uint16" else np.dtype("<u4")

    @property
    def itemsize(self) -> int:
        """Bytes per token id (2 or 4)."""
        return 2 if self.dtype == "uint16" else 4

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
        where = path if path is not None else META_FILENAME
        check_envelope(
            data,
            format=META_FORMAT,
            version=META_VERSION,
            path=where,
            what="lego token dataset (meta.json)",
            reader="lego-data",
            hint="point at a folder written by lego-data prepare",
        )
        return cls.from_header(data, path=where, what=_WHAT, hint=_FIX)

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


def dtype_for_vocab(vocab_size: int) -> TokenDtype:
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
    if vocab_size <= DTYPES["uint16"]:
        return "uint16"
    if vocab_size <= DTYPES["uint32"]:
        return "uint32"
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
