"""tiktoken's encodings and ``.tiktoken`` files, read and written.

A ``.tiktoken`` file holds a byte-level BPE as mergeable ranks, one token per line: the
token's bytes in base64, one space, and its rank (= id), e.g. ``IQ== 0`` for ``b"!"``. The
split pattern and the special tokens are not in the file: tiktoken's encoding constructors
supply them in code. A tiktoken *encoding name* (``"gpt2"``, ``"r50k_base"``,
``"cl100k_base"``, ``"o200k_base"``, ...) gives all three.

An encoding by name (tiktoken fetches its file once, then reads its cache)::

    ranks, pattern, specials = read_tiktoken("cl100k_base")
    len(ranks), specials["<|endoftext|>"]  # (100256, 100257)

A file (no pattern, no special tokens):

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_tiktoken_file(folder / "tiny.tiktoken", {bytes([b]): b for b in range(256)})
    >>> ranks, pattern, specials = read_tiktoken(folder / "tiny.tiktoken")
    >>> len(ranks), pattern, specials
    (256, None, {})
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from lego.protocols import (
    CompatibilityError,
    ConfigError,
    DataError,
    FormatError,
    atomic_write_bytes,
    did_you_mean,
    read_bytes,
)
from lego.tokenize.interop.merges import check_ranks

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "read_tiktoken",
    "read_tiktoken_file",
    "write_tiktoken_file",
    "tiktoken_names",
    "get_encoding",
    "encoding_parts",
    "is_tiktoken_path",
]

_WHAT = ".tiktoken file"


def tiktoken_names() -> list[str]:
    """Return the encoding names the installed tiktoken knows, sorted.

    Returns:
        E.g. ``["cl100k_base", "gpt2", "o200k_base", "p50k_base", ...]``.
    """
    import tiktoken

    return sorted(tiktoken.list_encoding_names())


def is_tiktoken_path(name: str) -> bool:
    """Whether a ``tiktoken:`` target is a file rather than an encoding name.

    Args:
        name: The text after ``tiktoken:``.

    Returns:
        True when it ends in ``.tiktoken``, holds a path separator or names an existing
        file.
    """
    return (
        name.endswith(".tiktoken")
        or "/" in name
        or os.sep in name
        or (os.altsep is not None and os.altsep in name)
        or Path(name).exists()
    )


def read_tiktoken(
    name_or_path: str | os.PathLike[str],
) -> tuple[dict[bytes, int], str | None, dict[str, int]]:
    """Read a tiktoken encoding by name, or a ``.tiktoken`` file.

    A string is a tiktoken encoding name when tiktoken knows it; a string that looks like a
    path (it ends in ``.tiktoken``, holds a path separator or names an existing file) and
    any ``os.PathLike`` is a file. tiktoken downloads an encoding's file the first time it
    is used (``TIKTOKEN_CACHE_DIR`` sets where it keeps it); a failed download is a
    [`DataError`][lego.protocols.DataError], not a traceback.

    Args:
        name_or_path: An encoding name such as ``"cl100k_base"``, or a file path.

    Returns:
        ``(ranks, pattern, special_tokens)``: token bytes to ids, the split regex (None for
        a bare file, which does not hold one) and the special tokens (empty for a file).

    Raises:
        ConfigError: On an unknown encoding name (with the close names) or a missing file.
        DataError: When tiktoken cannot load the encoding (e.g. no network for the
            download).
        FormatError: When the file is not a valid ``.tiktoken`` file (with the line).
    """
    if not isinstance(name_or_path, str):
        return read_tiktoken_file(name_or_path), None, {}
    if is_tiktoken_path(name_or_path):
        return read_tiktoken_file(name_or_path), None, {}
    return _read_encoding(name_or_path)


def _read_encoding(name: str) -> tuple[dict[bytes, int], str | None, dict[str, int]]:
    return encoding_parts(get_encoding(name))


def get_encoding(name: str) -> tiktoken.Encoding:
    """Return tiktoken's encoding of that name (tiktoken caches it per process).

    Args:
        name: An encoding name such as ``"cl100k_base"``.

    Returns:
        The ``tiktoken.Encoding``.

    Raises:
        ConfigError: On an unknown name (with the close names).
        DataError: When tiktoken cannot load the encoding (e.g. no network for the
            download).
    """
    import tiktoken

    names = tiktoken_names()
    if name not in names:
        raise ConfigError(
            f"unknown tiktoken encoding {name!r}",
            key=name,
            hint=did_you_mean(name, names) + " (or give the path of a .tiktoken file)",
        )
    try:
        return tiktoken.get_encoding(name)
    except Exception as exc:  # network, hash mismatch, cache folder, ...: all one story
        cache = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
        raise DataError(
            f"tiktoken could not load the encoding {name!r}: {type(exc).__name__}: {exc}",
            key=name,
            hint="tiktoken downloads an encoding's file on first use: connect to the "
            "network once, or set TIKTOKEN_CACHE_DIR to a folder holding the cached file "
            + (f"(now {cache!r}), " if cache else "")
            + "or pass the path of a local .tiktoken file",
        ) from exc


def encoding_parts(
    encoding: tiktoken.Encoding,
) -> tuple[dict[bytes, int], str, dict[str, int]]:
    """Return a ``tiktoken.Encoding``'s ranks, split pattern and special tokens.

    Args:
        encoding: The encoding.

    Returns:
        ``(ranks, pattern, special_tokens)``, new dictionaries.

    Raises:
        CompatibilityError: When this tiktoken version does not expose them.
    """
    try:
        ranks = dict(encoding._mergeable_ranks)
        pattern = str(encoding._pat_str)
        specials = dict(encoding._special_tokens)
    except AttributeError as exc:  # pragma: no cover - a tiktoken that renamed its fields
        raise CompatibilityError(
            f"this tiktoken version does not expose the encoding's ranks ({exc})",
            key=encoding.name,
            hint="install a tiktoken version between 0.7 and the latest tested one",
        ) from exc
    return ranks, pattern, specials


def read_tiktoken_file(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """Read and validate a ``.tiktoken`` file.

    Each non-empty line must be ``<base64 token> <rank>``; tokens and ranks must be unique,
    the ranks must be 0..n-1 and all 256 single bytes must be tokens.

    Args:
        path: The file.

    Returns:
        Token bytes to ids.

    Raises:
        ConfigError: When the file does not exist or cannot be read.
        FormatError: On a malformed line (with its number), a repeated token or rank, a
            gap in the ranks, missing single bytes, or an empty file.
    """
    data = read_bytes(path, what=_WHAT)
    ranks: dict[bytes, int] = {}
    token_lines: dict[bytes, int] = {}
    rank_lines: dict[int, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise FormatError(
                f"expected '<base64 token> <rank>', got {_show(line)}",
                path=path,
                line=number,
                hint="each line of a .tiktoken file holds one token in base64, a space and "
                "its rank; the file may be truncated or of another format",
            )
        encoded, rank_text = fields
        try:
            token = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FormatError(
                f"the token {_show(encoded)} is not valid base64",
                path=path,
                line=number,
                hint="tokens are written in standard base64 (A-Z a-z 0-9 + / and = padding)",
            ) from None
        if not token:
            raise FormatError(
                "the token is empty",
                path=path,
                line=number,
                hint="every token holds at least one byte",
            )
        if not rank_text.isdigit():
            raise FormatError(
                f"the rank {_show(rank_text)} is not a non-negative integer",
                path=path,
                line=number,
                hint="the second field of each line is the token's rank (its id)",
            )
        rank = int(rank_text)
        if token in token_lines:
            raise FormatError(
                f"the token {token!r} appears again (first on line {token_lines[token]})",
                path=path,
                line=number,
                hint="each token appears once; the file is corrupt",
            )
        if rank in rank_lines:
            raise FormatError(
                f"the rank {rank} appears again (first on line {rank_lines[rank]})",
                path=path,
                line=number,
                hint="each rank appears once; the file is corrupt",
            )
        ranks[token] = rank
        token_lines[token] = number
        rank_lines[rank] = number
    if not ranks:
        raise FormatError(
            f"the {_WHAT} holds no tokens",
            path=path,
            hint="a .tiktoken file has one '<base64 token> <rank>' line per token",
        )
    n = len(ranks)
    if max(rank_lines) != n - 1:
        missing = next(r for r in range(n) if r not in rank_lines)
        raise FormatError(
            f"the ranks are not 0..{n - 1}: rank {missing} is missing and the highest is "
            f"{max(rank_lines)} (line {rank_lines[max(rank_lines)]})",
            path=path,
            line=rank_lines[max(rank_lines)],
            hint="ranks are the token ids and must be contiguous from 0; the file may be "
            "truncated or edited",
        )
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        shown = ", ".join(f"0x{b:02x}" for b in missing_bytes[:8])
        raise FormatError(
            f"the {_WHAT} lacks single-byte tokens for {len(missing_bytes)} byte value(s) "
            f"({shown}{', ...' if len(missing_bytes) > 8 else ''})",
            path=path,
            hint="a byte-level BPE has a token for each of the 256 bytes; the file is "
            "incomplete or not a byte-level vocabulary",
        )
    return ranks


def _show(field: bytes) -> str:
    text = field.decode("utf-8", errors="replace")
    return repr(text if len(text) <= 60 else text[:57] + "...")


def write_tiktoken_file(path: str | os.PathLike[str], ranks: Mapping[bytes, int]) -> None:
    """Write mergeable ranks as a ``.tiktoken`` file (atomically), in rank order.

    ``tiktoken.load.load_tiktoken_bpe`` and
    [`read_tiktoken_file`][lego.tokenize.interop.tiktoken_files.read_tiktoken_file] read it
    back to the same ranks.

    Args:
        path: The file to write.
        ranks: Token bytes to ids 0..n-1.

    Raises:
        CompatibilityError: When the ranks are malformed (not bytes to distinct
            non-negative ids, or a single byte missing) or the ids are not 0..n-1.
        ConfigError: When the file cannot be written.
    """
    check_ranks(ranks)
    n = len(ranks)
    ordered = sorted(ranks.items(), key=lambda item: item[1])
    if ordered[-1][1] != n - 1:
        raise CompatibilityError(
            f"the ids are not 0..{n - 1} (the highest is {ordered[-1][1]})",
            hint="a .tiktoken file's ranks are contiguous from 0",
        )
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in ordered]
    atomic_write_bytes(path, b"\n".join(lines) + b"\n", what=_WHAT)
