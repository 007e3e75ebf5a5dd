r"""Reading and writing files with errors that name the file: one implementation for every brick.

Readers turn every failure into a [`LegoError`][lego.protocols.LegoError] that says which
file (``path=``), what the file should have been (the ``what`` argument, e.g. ``"tokenizer
file"``) and what to do (``hint=``). One rule decides the kind of error, for the whole
project:

- **the path is wrong** -> [`ConfigError`][lego.protocols.ConfigError]: the file does not
  exist, is a directory, cannot be read, or (when writing) its folder is missing or cannot
  be written. The argument the user gave must change.
- **the content is wrong** -> [`FormatError`][lego.protocols.FormatError]: the bytes are not
  UTF-8 (with the line and the byte), not JSON (with the line and column; a document that
  ends too early is called truncated), or a JSON object repeats a key. The file must change.

Writers are atomic: the content goes to a temporary file in the target's folder, is flushed
and ``fsync``-ed, and then renamed over the target with ``os.replace``, so a reader sees the
old file or the new one and never half of one. The temporary file is removed on any error,
``KeyboardInterrupt`` included, so a failed write leaves the old file as it was and nothing
beside it. A replaced file keeps its permission bits; a new one gets the mode ``open()``
would have given it (``0o666`` minus the umask).

```python
from lego.protocols import atomic_write_text, read_json

atomic_write_text("out/config.json", '{"n_layer": 2}\n')
read_json("out/config.json", what="config file")  # {'n_layer': 2}
read_json("out/missing.json", what="config file")
# ConfigError: config file not found
#   where: out/missing.json
#   what to do: check the path and the file name
```
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from lego.protocols.errors import ConfigError, DataError, FormatError, LegoError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
    "remove_stale_temporaries",
    "temporary_name",
    "write_errors",
    "decode_utf8",
    "open_binary",
    "parse_json",
    "read_bytes",
    "read_json",
    "read_text",
]

_BOM = "\ufeff"
_TEMP_ATTEMPTS = 100


# -- reading --------------------------------------------------------------------------------


def read_bytes(path: str | os.PathLike[str], *, what: str) -> bytes:
    """Read a whole file as bytes.

    Args:
        path: The file.
        what: What the file should be, for messages (e.g. ``"GPT-2 vocab.bpe file"``).

    Returns:
        The file's bytes.

    Raises:
        ConfigError: When the file does not exist, is a directory or cannot be read.
    """
    with open_binary(path, what=what) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise _read_error(exc, path, what) from None


def open_binary(path: str | os.PathLike[str], *, what: str) -> BinaryIO:
    """Open a file for reading bytes, for callers that stream it.

    Args:
        path: The file.
        what: What the file should be, for messages (e.g. ``"training file"``).

    Returns:
        The open file (close it, e.g. with ``with``).

    Raises:
        ConfigError: When the file does not exist, is a directory or cannot be opened.
    """
    try:
        return open(path, "rb")
    except OSError as exc:
        raise _read_error(exc, path, what) from None


def _read_error(exc: OSError, path: str | os.PathLike[str], what: str) -> ConfigError:
    if isinstance(exc, FileNotFoundError):
        return ConfigError(f"{what} not found", path=path, hint="check the path and the file name")
    if isinstance(exc, IsADirectoryError) or Path(path).is_dir():  # Windows: EACCES
        return ConfigError(
            f"expected a {what}, found a directory",
            path=path,
            hint="give the path of the file inside it",
        )
    return ConfigError(
        f"cannot read the {what}: {exc.strerror or exc}",
        path=path,
        hint="check the file's permissions",
    )


def decode_utf8(data: bytes, *, path: str | os.PathLike[str] | None, what: str) -> str:
    """Decode a file's bytes as UTF-8, exactly (a byte-order mark is kept as U+FEFF).

    Args:
        data: The bytes.
        path: The file they came from, for messages (None for a stream such as stdin).
        what: What the bytes should be, for messages.

    Returns:
        The text.

    Raises:
        FormatError: When the bytes are not UTF-8; ``line`` is the 1-based line and
            ``column`` the 1-based byte within it; the message gives the byte offset in the
            file.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FormatError(
            f"the {what} is not UTF-8 text (byte offset {exc.start}: {exc.reason})",
            path=path,
            line=line,
            column=column,
            hint=f"check that this is really a {what} and not a binary or truncated file; "
            "convert other encodings to UTF-8 first (e.g. with iconv)",
        ) from None


def read_text(path: str | os.PathLike[str], *, what: str) -> str:
    """Read a whole UTF-8 text file, exactly (no newline translation, a BOM is kept).

    Args:
        path: The file.
        what: What the file should be, for messages.

    Returns:
        The text.

    Raises:
        ConfigError: When the file does not exist, is a directory or cannot be read.
        FormatError: When it is not UTF-8 (with the line and byte).
    """
    return decode_utf8(read_bytes(path, what=what), path=path, what=what)


class _DuplicateKeyError(Exception):
    """Raised by the object hook; not a ValueError, so json does not mistake it for its own."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeyError(key)
        result[key] = value
    return result


def parse_json(
    text: str,
    *,
    path: str | os.PathLike[str] | None,
    what: str,
    allow_duplicate_keys: bool = False,
) -> Any:
    """Parse a JSON document, with errors that give the line and column.

    A leading byte-order mark is ignored (as RFC 8259 allows).

    Args:
        text: The document.
        path: The file it came from, for messages (None for a stream or a string).
        what: What the document should be, for messages (e.g. ``"config file"``).
        allow_duplicate_keys: Accept an object that names a key twice (the last value wins,
            as in ``json.loads``). By default that is an error: it is the mark of a corrupt
            or carelessly edited file, and which value was meant cannot be known.

    Returns:
        The parsed value.

    Raises:
        FormatError: When the text is empty, is not JSON (with ``line`` and ``column``; a
            document that ends too early is reported as truncated), is nested too deeply or
            holds a number too long to convert, or repeats a key (``key=`` names it).
    """
    text = text.removeprefix(_BOM)
    if not text.strip():
        raise FormatError(
            f"the {what} is empty",
            path=path,
            hint=f"write the {what} again; an empty file is not a JSON document",
        )
    hook = None if allow_duplicate_keys else _unique_keys
    try:
        return json.loads(text, object_pairs_hook=hook)
    except json.JSONDecodeError as exc:
        truncated = _ends_early(text, exc)
        raise FormatError(
            f"the {what} is not valid JSON: {exc.msg}"
            + (" (the document ends too early: truncated)" if truncated else ""),
            path=path,
            line=exc.lineno,
            column=exc.colno,
            hint="the file was cut short (an interrupted write or copy?); write or download it "
            "again"
            if truncated
            else f"repair the syntax or write the file again; is it really a {what}?",
        ) from None
    except _DuplicateKeyError as exc:
        raise FormatError(
            f"the {what} repeats the key {exc.key!r} in one JSON object",
            path=path,
            key=exc.key,
            hint="keep one entry per key; a repeated key means the file is corrupt or was "
            "edited by hand",
        ) from None
    except RecursionError:
        raise FormatError(
            f"the {what} is nested too deeply to read", path=path, hint=f"is it really a {what}?"
        ) from None
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise FormatError(
            f"the {what} holds a value that cannot be read: {exc}",
            path=path,
            hint=f"is it really a {what}?",
        ) from None


_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")
_NUMBER_TAIL = re.compile(r"[-+.eE0-9]+\Z")
_ESCAPE_TAIL = re.compile(r"u[0-9a-fA-F]{0,4}\Z")


def _ends_early(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether the document is cut short: the failing token is the last and runs to the end."""
    rest = text[exc.pos :].rstrip()
    return (
        not rest
        or exc.msg.startswith("Unterminated string")
        or _NUMBER_TAIL.match(rest) is not None
        or _ESCAPE_TAIL.match(rest) is not None
        or any(literal.startswith(rest) for literal in _LITERALS)
    )


def read_json(
    path: str | os.PathLike[str], *, what: str, allow_duplicate_keys: bool = False
) -> Any:
    """Read a UTF-8 JSON file (see [`parse_json`][lego.protocols.files.parse_json]).

    Args:
        path: The file.
        what: What the file should be, for messages (e.g. ``"HuggingFace tokenizer.json"``).
        allow_duplicate_keys: Accept an object that names a key twice (the last value wins).

    Returns:
        The parsed value.

    Raises:
        ConfigError: When the file does not exist, is a directory or cannot be read.
        FormatError: When it is not UTF-8, is empty, is not JSON (with the line and column;
            a truncated document is said to be truncated) or repeats a key in one object.
    """
    text = read_text(path, what=what)
    return parse_json(text, path=path, what=what, allow_duplicate_keys=allow_duplicate_keys)


# -- writing --------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, what: str = "file") -> None:
    """Write a file atomically: a temporary file in the same folder, ``fsync``, then a rename.

    A reader sees the old content or the new, never a mix. On any error (``KeyboardInterrupt``
    included) the temporary file is removed and the old file, if any, is left as it was. A
    replaced file keeps its permission bits; a new one gets ``0o666`` minus the umask. A
    symbolic link at ``path`` is replaced by the file, not followed.

    Args:
        path: The file to write; its folder must exist.
        data: The whole content.
        what: What the file is, for messages (e.g. ``"tokenizer file"``).

    Raises:
        ConfigError: When the folder does not exist, ``path`` is a directory, or the file
            cannot be written (permissions, a full disk); the message names the path.
    """
    target = Path(path)
    folder = target.parent  # Path("name").parent is Path(".")
    if not folder.is_dir():
        raise ConfigError(
            f"cannot write the {what}: its folder does not exist",
            path=folder,
            hint="create the folder first or choose another path",
        )
    if target.is_dir():
        raise ConfigError(
            f"cannot write the {what}: the path is a directory",
            path=target,
            hint="give a file name inside it",
        )
    fd, temp = _create_temp(target, what=what)
    try:
        try:
            with contextlib.suppress(OSError):  # keep the mode of the file we replace
                os.chmod(temp, target.stat().st_mode & 0o777)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise ConfigError(
                f"cannot write the {what}: {exc.strerror or exc}",
                path=target,
                hint="check the free disk space and the folder's permissions",
            ) from None
        raise
    _sync_folder(folder)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, what: str = "file") -> None:
    r"""Write a UTF-8 text file atomically.

    Works as [`atomic_write_bytes`][lego.protocols.files.atomic_write_bytes] does. The text is
    written as given, without newline translation: ``\n`` stays ``\n`` on every platform.

    Args:
        path: The file to write; its folder must exist.
        text: The whole content.
        what: What the file is, for messages.

    Raises:
        ConfigError: When the folder does not exist, ``path`` is a directory, or the file
            cannot be written.
        DataError: When the text holds a lone surrogate, which UTF-8 cannot encode (nothing is
            written).
    """
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"the {what} cannot be written as UTF-8: character {exc.start} is a lone "
            f"surrogate ({text[exc.start]!r})",
            path=path,
            hint="the text came from a lossy decode (errors='surrogateescape'); decode with "
            "errors='replace' or fix the source",
        ) from None
    atomic_write_bytes(path, data, what=what)


def _create_temp(target: Path, *, what: str) -> tuple[int, str]:
    """Create a [`temporary_name()`][lego.protocols.files.temporary_name] beside ``target``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    error: OSError | None = None
    for _ in range(_TEMP_ATTEMPTS):
        temp = str(temporary_name(target))
        try:
            return os.open(temp, flags, 0o666), temp
        except FileExistsError as exc:
            error = exc
        except OSError as exc:
            raise ConfigError(
                f"cannot write the {what} into its folder: {exc.strerror or exc}",
                path=target.parent,
                hint="choose a folder you can write to",
            ) from None
    raise ConfigError(  # pragma: no cover - 100 random names all taken
        f"cannot create a temporary file for the {what}: {error}",
        path=target.parent,
        hint="remove stale .*.tmp files from the folder",
    )


def _sync_folder(folder: Path) -> None:
    """Make the rename durable: fsync the folder where the platform allows it (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows cannot open a folder; the rename is durable there already
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# -- temporaries, outputs and disk errors ---------------------------------------------------

_TEMP = re.compile(r"\.(?P<name>.+)\.tmp-(?P<host>[^.]*)-(?P<pid>\d+)-[0-9a-f]{8}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def temporary_name(target: str | os.PathLike[str]) -> Path:
    """A unique temporary name beside ``target`` that names this process.

    ``.<name>.tmp-<host>-<pid>-<random>``: concurrent writers never share one, and
    [`remove_stale_temporaries()`][lego.protocols.files.remove_stale_temporaries] can tell
    the leftovers of a dead process from the work of a live one.

    Args:
        target: The file or folder that will be renamed into place.

    Returns:
        The temporary path (not created).

    Example:
        >>> temporary_name("out/train.bin").name.startswith(".train.bin.tmp-")
        True
    """
    path = Path(target)
    return path.with_name(f".{path.name}.tmp-{_host()}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that processes of this host left in ``folder`` when they died.

    Only names made by [`temporary_name()`][lego.protocols.files.temporary_name] whose
    process is gone are removed (files or folders); a live process's are kept.

    Args:
        folder: The folder to clean (a missing one is fine).

    Returns:
        The paths removed.
    """
    from lego.protocols.locks import pid_alive  # locks imports this module

    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or match["host"] != _host() or pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def check_output_path(
    output: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    what: str,
    key: str | None = None,
    kind: str = "file",
    overwrite: bool = True,
) -> Path:
    """Check an output path before anything is written: never over an input.

    Args:
        output: Where the output goes.
        inputs: Every file read by the same command (an output equal to one is an error).
        what: What the output is, for messages (``"tokenizer file"``).
        key: The option that named it (``"-o"``), for messages.
        kind: ``"file"`` or ``"folder"``: what the output must be if it exists.
        overwrite: Whether an existing output of the right kind may be replaced.

    Returns:
        The output path.

    Raises:
        ConfigError: The output is one of the inputs (or the same file through another
            path), an existing output of the other kind, or an existing one when
            ``overwrite`` is False.

    Example:
        >>> check_output_path("ids.txt", inputs=["corpus.txt"], what="ids file").name
        'ids.txt'
    """
    path = Path(output)
    for source in inputs:
        if _same_file(path, Path(source)):
            raise ConfigError(
                f"the {what} would overwrite an input: {source}",
                path=path,
                key=key,
                hint="write the output to another path",
            )
    if path.exists():
        wrong = path.is_dir() if kind == "file" else not path.is_dir()
        if wrong:
            other = "a folder" if kind == "file" else "a file"
            raise ConfigError(
                f"the {what} must be a {kind}, but {path} is {other}",
                path=path,
                key=key,
                hint=f"give the path of a {kind}",
            )
        if not overwrite:
            raise ConfigError(
                f"the {what} already exists",
                path=path,
                key=key,
                hint="choose a new path, or ask to overwrite it",
            )
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_MESSAGES = ("No space left on device", "Disk quota exceeded", "file write failed")


@contextlib.contextmanager
def write_errors(
    path: str | os.PathLike[str],
    *,
    what: str,
    error: type[LegoError] = ConfigError,
    hint: str | None = None,
) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk into one clear error while writing.

    ``OSError`` with ``ENOSPC``, ``EDQUOT``, ``EROFS``, ``EACCES``, ``EPERM`` or ``EFBIG``,
    and the ``RuntimeError`` that ``torch.save`` raises on a full disk ("file write failed"),
    become ``error`` naming the path and what to do; anything else passes through.

    Args:
        path: What is being written (a file or a folder), for the message.
        what: What it is, for the message (``"checkpoint"``).
        error: The error class to raise (default [`ConfigError`][lego.protocols.ConfigError]).
        hint: What to do (default: free space or fix permissions, then run again).

    Yields:
        Nothing.

    Raises:
        LegoError: Of class ``error``, for a disk that cannot take the write.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_ERRNOS:
            raise
        reason = exc.strerror or str(exc)
        raise error(
            f"cannot write the {what}: {reason}",
            path=getattr(exc, "filename", None) or path,
            hint=hint or "free some disk space (or fix the folder's permissions) and run again",
        ) from exc
    except RuntimeError as exc:
        if not any(text in str(exc) for text in _DISK_MESSAGES):
            raise
        raise error(
            f"cannot write the {what}: the disk is full or the write failed ({exc})",
            path=path,
            hint=hint or "free some disk space and run again",
        ) from exc
