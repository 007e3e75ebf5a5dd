r"""Local corpora: text and JSON-lines files, and folders of them.

What a document is:

- ``.jsonl`` files: one document per non-blank line, the string in the ``text_field`` of the
  JSON object on that line;
- other files, by ``unit``: ``"file"`` (the whole file), ``"line"`` (every non-blank line,
  without its line break) or ``"paragraph"`` (runs of non-blank lines separated by blank
  lines, joined with ``"\n"``); with ``separator`` set, documents are the text between lines
  that equal the separator (e.g. TinyStories' ``<|endoftext|>`` lines), stripped of
  surrounding whitespace, empty ones dropped.

A folder contributes every file below it whose suffix is in ``extensions`` (hidden files and
folders excluded), sorted by relative POSIX path. Files are read as UTF-8: a binary file (a
NUL byte in its first 8 KiB) or bytes that are not UTF-8 raise a
[`DataError`][lego.protocols.DataError] naming the file and byte offset; with
``errors="skip"`` the file (``unit="file"``) or the line / paragraph holding the bad bytes is
skipped instead and recorded in [`skipped`][lego.data.corpora.Corpus.skipped]. A corrupt JSON
line, a line that is not an object, or a missing or non-string text field is always an error
naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Final, Literal

from lego.data.corpora.base import Corpus, Skipped
from lego.data.jsonl import iter_json_objects
from lego.protocols import ConfigError, DataError, open_binary

__all__ = ["FileCorpus", "DocumentUnit", "ErrorMode", "DEFAULT_EXTENSIONS"]

DocumentUnit = Literal["file", "line", "paragraph"]
"""What one document is in a text file."""
ErrorMode = Literal["strict", "skip"]
"""What to do with binary or non-UTF-8 input: raise, or skip and record it."""

DEFAULT_EXTENSIONS: Final = (".txt", ".jsonl")
"""File suffixes a folder contributes by default."""
_UNITS: Final = ("file", "line", "paragraph")
_SNIFF: Final = 8192


class _BadBytesError(Exception):
    """Bytes that are not text: ``offset`` is absolute in the file."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


def _decode(raw: bytes, offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _BadBytesError(f"not UTF-8 ({err.reason})", offset + err.start) from None


class FileCorpus(Corpus):
    """Documents from local files and folders.

    Args:
        paths: A file, a folder, or a sequence of them (in the order given).
        unit: What a document is in a non-``.jsonl`` file (see the module docstring).
        separator: When set, documents in non-``.jsonl`` files are separated by lines equal
            to it (overrides ``unit``).
        text_field: The key holding the text in ``.jsonl`` objects.
        errors: ``"strict"`` raises on binary or non-UTF-8 input; ``"skip"`` skips and
            records it.
        extensions: Suffixes that folders contribute (files given directly are always read).
        name: The corpus name recorded in ``meta.json`` (default: the path(s) as given).

    Raises:
        DataError: When a path does not exist, or a folder holds no file with one of the
            ``extensions``.
        ConfigError: On an unknown ``unit`` or ``errors`` value.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        unit: DocumentUnit = "file",
        separator: str | None = None,
        text_field: str = "text",
        errors: ErrorMode = "strict",
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if unit not in _UNITS:
            raise ConfigError(
                f"unit must be one of {', '.join(_UNITS)}, got {unit!r}",
                key="unit",
            )
        if errors not in ("strict", "skip"):
            raise ConfigError(f"errors must be 'strict' or 'skip', got {errors!r}", key="errors")
        if separator is not None and not separator.strip():
            raise ConfigError("separator must contain a visible character", key="separator")
        roots = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not roots:
            raise DataError("no input files given", hint="give a file or a folder")
        self._roots = [Path(p) for p in roots]
        self._unit = unit
        self._separator = separator.strip() if separator is not None else None
        self._text_field = text_field
        self._errors = errors
        self._extensions = tuple(e if e.startswith(".") else "." + e for e in extensions)
        self._name = name if name is not None else ", ".join(os.fspath(p) for p in roots)
        self.files: list[Path] = self._collect()
        """The files read, in order."""

    @property
    def name(self) -> str:
        """The corpus's name (the paths as given, unless named)."""
        return self._name

    def _collect(self) -> list[Path]:
        files: list[Path] = []
        for root in self._roots:
            if root.is_file():
                files.append(root)
            elif root.is_dir():
                found = sorted(
                    (p.relative_to(root).as_posix(), p)
                    for p in root.rglob("*")
                    if p.is_file()
                    and p.suffix.lower() in self._extensions
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)
                )
                if not found:
                    raise DataError(
                        f"the folder holds no file ending in {' or '.join(self._extensions)}",
                        path=root,
                        hint="check the folder, or pass extensions=... / --extensions",
                    )
                files.extend(p for _, p in found)
            else:
                raise DataError(
                    "no such file or folder",
                    path=root,
                    hint="check the path; corpora by name are listed by `lego-data download "
                    "--list`",
                )
        return files

    def iter_documents(self) -> Iterator[str]:
        """Yield the documents of every file, in order."""
        for path in self._collect():
            yield from self._file_documents(path)

    # ------------------------------------------------------------------ one file

    def _file_documents(self, path: Path) -> Iterator[str]:
        with open_binary(path, what="corpus file") as handle:  # unreadable: a ConfigError
            head = handle.read(_SNIFF)
            nul = head.find(b"\0")
            if nul >= 0:
                self._bad(path, _BadBytesError("binary (NUL byte)", nul), line=None)
                return
            handle.seek(0)
            if path.suffix.lower() == ".jsonl":
                yield from self._jsonl(path, handle)
            elif self._separator is not None:
                yield from self._separated(path, handle)
            elif self._unit == "file":
                try:
                    yield _decode(handle.read(), 0)
                except _BadBytesError as err:
                    self._bad(path, err, line=None)
            elif self._unit == "line":
                yield from self._lines(path, handle)
            else:
                yield from self._paragraphs(path, handle)

    def _bad(self, path: Path, err: _BadBytesError, *, line: int | None) -> None:
        """Record a skip, or raise in strict mode."""
        if self._errors == "skip":
            self.skipped.append(Skipped(str(path), err.reason, offset=err.offset, line=line))
            return
        raise DataError(
            f"cannot read the file as text: {err.reason}",
            path=path,
            line=line,
            column=err.offset if line is None else None,
            hint=f"the problem is at byte offset {err.offset}; convert the file to UTF-8, "
            "remove it, or pass errors='skip' (--errors skip) to skip unreadable input",
        )

    def _lines(self, path: Path, handle: BinaryIO) -> Iterator[str]:
        offset = 0
        for number, raw in enumerate(handle, 1):
            try:
                text = _decode(raw, offset).rstrip("\r\n")
            except _BadBytesError as err:
                self._bad(path, err, line=number)
                text = ""
            offset += len(raw)
            if text.strip():
                yield text

    def _paragraphs(self, path: Path, handle: BinaryIO) -> Iterator[str]:
        offset = 0
        lines: list[str] = []
        broken = False
        for number, raw in enumerate(handle, 1):
            try:
                text = _decode(raw, offset).rstrip("\r\n")
            except _BadBytesError as err:
                self._bad(path, err, line=number)
                broken, text = True, "x"  # the rest of this paragraph is skipped
            offset += len(raw)
            if text.strip():
                lines.append(text)
            else:
                if lines and not broken:
                    yield "\n".join(lines)
                lines, broken = [], False
        if lines and not broken:
            yield "\n".join(lines)

    def _separated(self, path: Path, handle: BinaryIO) -> Iterator[str]:
        offset = 0
        lines: list[str] = []
        broken = False
        for number, raw in enumerate(handle, 1):
            try:
                text = _decode(raw, offset)
            except _BadBytesError as err:
                self._bad(path, err, line=number)
                broken, text = True, ""
            offset += len(raw)
            if text.strip() == self._separator:
                document = "".join(lines).strip()
                if document and not broken:
                    yield document
                lines, broken = [], False
            else:
                lines.append(text)
        document = "".join(lines).strip()
        if document and not broken:
            yield document

    def _jsonl(self, path: Path, handle: BinaryIO) -> Iterator[str]:
        field = self._text_field

        def bad_bytes(line: int, offset: int, err: UnicodeDecodeError) -> None:
            self._bad(path, _BadBytesError(f"not UTF-8 ({err.reason})", offset), line=line)

        for number, record in iter_json_objects(handle, path, on_bad_bytes=bad_bytes):
            if field not in record:
                raise DataError(
                    f"the JSON object has no field {field!r}",
                    path=path,
                    line=number,
                    key=field,
                    hint=f"its fields are {sorted(record)}; pass text_field=... "
                    "(--text-field) to read another",
                )
            text = record[field]
            if not isinstance(text, str):
                raise DataError(
                    f"field {field!r} holds a {type(text).__name__}, not a string",
                    path=path,
                    line=number,
                    key=field,
                    hint="every document's text must be a JSON string",
                )
            yield text
