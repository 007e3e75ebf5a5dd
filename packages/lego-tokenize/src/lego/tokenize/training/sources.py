r"""Training data sources: strings, files and iterables of both, streamed in chunks.

A ``str`` is always text, never a path. A ``pathlib.Path`` (any ``os.PathLike``) is a file,
read as UTF-8 in blocks. An iterable mixes both; each string and each file is one
*document*. Documents are grouped into chunks of about ``chunk_size`` characters, which is
what the worker processes receive.

Pre-tokens never cross a document border. A document longer than a chunk is cut only at
*safe points*: a line break with a non-space character on both sides (``"x\\ny"``), or,
in a document without such a point, before a space that follows a non-space character and
precedes a letter (``"x| y"``). No built-in split pattern matches across either point or
splits differently next to it, so the counts do not depend on the chunk size. Documents
that must stay whole (naive BPE has no pre-tokens) are never cut.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable, Iterator
from typing import Literal

from lego.protocols import ConfigError, FormatError, TrainingData, check_int, open_binary

__all__ = ["DEFAULT_CHUNK_SIZE", "Errors", "iter_chunks", "iter_documents"]

DEFAULT_CHUNK_SIZE = 1 << 20
"""Characters per chunk sent to a worker (about 1 MiB of text)."""

_BLOCK_BYTES = 1 << 20
_LINE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_SPACE_CUT = re.compile(r"(?<=\S)(?= \w)")

Errors = Literal["strict", "replace"]
"""How undecodable bytes in a training file are handled: an error, or U+FFFD."""


def _check_errors(errors: str) -> None:
    if errors not in ("strict", "replace"):
        raise ConfigError(
            f"errors must be 'strict' or 'replace', got {errors!r}",
            key="errors",
            hint="'strict' stops at the first byte that is not UTF-8; 'replace' writes U+FFFD",
        )


def _sources(data: TrainingData) -> Iterator[str | os.PathLike[str]]:
    if isinstance(data, (str, os.PathLike)):
        yield data
        return
    value: object = data
    if isinstance(value, (bytes, bytearray)):
        raise ConfigError(
            "training data must be text, a path or an iterable of them, not bytes",
            key="data",
            hint="decode the bytes first, or pass the file's path",
        )
    try:
        items = iter(data)
    except TypeError:
        raise ConfigError(
            f"training data must be a str, a path or an iterable of them, got "
            f"{type(data).__name__}",
            key="data",
        ) from None
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            yield item
        else:
            raise ConfigError(
                f"training data items must be str (text) or paths, got {type(item).__name__}",
                key="data",
                hint="wrap file names in pathlib.Path; a plain str is always text",
            )


def _read_file(path: os.PathLike[str], errors: Errors) -> Iterator[str]:
    """Yield a file's text in blocks, naming the byte offset of undecodable input."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = 0  # bytes fed to the decoder so far
    line = 1
    with open_binary(path, what="training file") as handle:
        while True:
            block = handle.read(_BLOCK_BYTES)
            final = not block
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                data = pending + block
                bad = offset - len(pending) + exc.start
                line_no = line + data[: exc.start].count(b"\n")
                raise FormatError(
                    f"the training file is not valid UTF-8: byte "
                    f"{data[exc.start : exc.start + 1]!r} at byte offset {bad} ({exc.reason})",
                    path=path,
                    line=line_no,
                    hint="convert the file to UTF-8, or train with errors='replace' "
                    "(--errors replace) to read bad bytes as U+FFFD",
                ) from None
            line += block.count(b"\n")
            offset += len(block)
            if text:
                yield text
            if final:
                return


def iter_documents(data: TrainingData, *, errors: Errors = "strict") -> Iterator[Iterator[str]]:
    """Yield each document as an iterator over its text blocks.

    Args:
        data: A string, a path, or an iterable of strings and paths.
        errors: ``"strict"`` or ``"replace"`` for undecodable bytes in files.

    Yields:
        One iterator per document; a string is one block, a file several.

    Raises:
        ConfigError: On data of the wrong type, or a file that does not exist or cannot be
            read.
        FormatError: With ``errors="strict"``, on a file that is not UTF-8 (naming the line
            and byte offset).
    """
    _check_errors(errors)
    for source in _sources(data):
        if isinstance(source, str):
            yield iter((source,))
        else:
            yield _read_file(source, errors)


def _last_cut(text: str, limit: int) -> int:
    """The last safe cut point in ``text[1:limit]`` (0 when there is none)."""
    for finder in (_LINE_CUT, _SPACE_CUT):
        last = 0
        for match in finder.finditer(text, 1, limit):
            last = match.start()
        if last > 0:
            return last
    return 0


def _first_cut(text: str, start: int) -> int:
    """The first safe cut point at or after ``start`` (0 when there is none)."""
    for finder in (_LINE_CUT, _SPACE_CUT):
        match = finder.search(text, max(1, start))
        if match is not None and match.start() < len(text):
            return match.start()
    return 0


def iter_chunks(
    data: TrainingData,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    errors: Errors = "strict",
    split_documents: bool = True,
) -> Iterator[list[str]]:
    """Group documents into chunks of about ``chunk_size`` characters.

    Args:
        data: A string, a path, or an iterable of strings and paths.
        chunk_size: Characters per chunk (at least 1; a chunk may exceed it when a document
            has no safe cut point).
        errors: ``"strict"`` or ``"replace"`` for undecodable bytes in files.
        split_documents: Cut documents longer than a chunk at safe points; when False each
            document stays whole in one piece.

    Yields:
        Lists of text pieces: each piece is a whole document or a safely cut part of one,
        and pre-tokens never cross pieces.

    Raises:
        ConfigError: On data of the wrong type, a chunk size below 1, or a file that does not
            exist or cannot be read.
        FormatError: With ``errors="strict"``, on a file that is not UTF-8.
    """
    check_int("chunk_size", chunk_size, minimum=1, hint="pass a positive number of characters")
    chunk: list[str] = []
    size = 0
    for document in iter_documents(data, errors=errors):
        if not split_documents:
            carry = "".join(document)  # kept whole
        else:
            carry = ""
            for block in document:
                carry += block
                while size + len(carry) >= chunk_size:
                    room = chunk_size - size
                    cut = _last_cut(carry, room + 1) if room > 0 else 0
                    if cut == 0 and chunk:
                        yield chunk  # this document starts the next chunk
                        chunk, size = [], 0
                        continue
                    if cut == 0:
                        cut = _first_cut(carry, chunk_size)
                        if cut == 0:
                            break  # no safe point yet: read on
                    chunk.append(carry[:cut])
                    carry = carry[cut:]
                    yield chunk
                    chunk, size = [], 0
        if carry:
            chunk.append(carry)
            size += len(carry)
        if size >= chunk_size:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def total_chars(chunks: Iterable[list[str]]) -> int:
    """Count the characters in chunks (a test and progress helper).

    Args:
        chunks: Chunks from [`iter_chunks`][lego.tokenize.training.sources.iter_chunks].

    Returns:
        The number of characters.
    """
    return sum(len(piece) for chunk in chunks for piece in chunk)
