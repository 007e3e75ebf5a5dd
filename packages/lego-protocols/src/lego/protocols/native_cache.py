"""The kernel cache: a built library is loaded only after it is verified, else rebuilt.

A cache folder ([`kernel_cache_dir()`][lego.protocols.kernel_cache_dir]) holds, per
kernel source, compiler and flags (see [`lego.protocols.native`][lego.protocols.native])::

    <name>-<key>.so          the built library, e.g. skinny-0123456789abcdef.so
    <name>-<key>.so.sha256   its SHA-256, in ``sha256sum`` format: "<hex>  <name>-<key>.so"

[`verified_library()`][lego.protocols.native_cache.verified_library] returns the library
only when all of these hold, since loading it runs its code in this process:

1. the folder belongs to this user and is not writable by group or others; otherwise
   nothing is loaded from it and nothing is built into it (a
   [`ConfigError`][lego.protocols.ConfigError] that says how to fix it);
2. the library and its record are regular files (not links) of this user, not writable by
   group or others, and the library's SHA-256 is the one recorded.

A library that fails 2 (truncated, empty, planted, replaced, without a record or with a
damaged one, of another user, writable by others) is never loaded: it is rebuilt, and the
caller is told why (``announce``). One process builds at a time (the folder's
[`FolderLock`][lego.protocols.FolderLock]; the others wait, then use its build). A build
writes under [`temporary_name()`][lego.protocols.temporary_name]s and renames into place;
the temporaries of builders that died are removed whenever the cache is used. New files get
the mode the umask gives (``0o755`` for the library, ``0o644`` for the record, minus the
umask), never writable by group or others.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp()) / "kernels"
    >>> said = []
    >>> library = verified_library(
    ...     folder / "demo-0123456789abcdef.so",
    ...     build=lambda output: output.write_bytes(b"not really a library"),
    ...     announce=said.append,
    ... )
    >>> said, library_problem(library)
    (['is not built yet'], None)
    >>> sorted(p.name for p in folder.iterdir())
    ['demo-0123456789abcdef.so', 'demo-0123456789abcdef.so.sha256']
    >>> import shutil
    >>> shutil.rmtree(folder.parent)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lego.protocols.errors import ConfigError
from lego.protocols.files import remove_stale_temporaries, temporary_name
from lego.protocols.locks import FolderLock

__all__ = ["MISSING", "RECORD_SUFFIX", "check_folder", "library_problem", "verified_library"]

RECORD_SUFFIX = ".sha256"
"""The record of a library ``<name>-<key>.so`` is ``<name>-<key>.so.sha256``."""

MISSING = "is not built yet"
"""[`library_problem()`][lego.protocols.native_cache.library_problem]'s answer for a library
that does not exist."""

_RECORD = re.compile(r"(?P<digest>[0-9a-f]{64})  (?P<name>[^\n/]+)\n")
_LEGACY_AGE_S = 3600.0
_LOCK_WAIT_S = 900.0
_LOCK_POLL_S = 0.05


def _record(library: Path) -> Path:
    return library.with_name(library.name + RECORD_SUFFIX)


def _uid() -> int | None:
    geteuid = getattr(os, "geteuid", None)
    return geteuid() if callable(geteuid) else None


def _ownership(info: os.stat_result) -> str | None:
    """Why a file or folder of these stats must not be trusted, or None."""
    uid = _uid()
    if uid is not None and info.st_uid != uid:
        return f"belongs to another user (uid {info.st_uid}, this process runs as uid {uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):#o})"
    return None


def check_folder(folder: Path) -> None:
    """Create the cache folder if need be and make sure only this user can write it.

    Args:
        folder: The cache folder.

    Raises:
        ConfigError: It cannot be created, is not a folder, belongs to another user or is
            writable by group or others.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            "the native kernel cache is not a folder",
            path=folder,
            hint="remove it or set LEGO_KERNELS_HOME to a folder of your own",
        )
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o755)
        info = folder.stat()
    except OSError as exc:
        raise ConfigError(
            f"cannot create the native kernel cache folder: {exc.strerror or exc}",
            path=folder,
            hint="set LEGO_KERNELS_HOME to a folder you can write",
        ) from None
    reason = _ownership(info)
    if reason is not None:
        raise ConfigError(
            f"the native kernel cache folder {reason}, so others could plant code in it",
            path=folder,
            hint=f"make it yours and private (chmod go-w {folder}), or set LEGO_KERNELS_HOME "
            "to a folder of your own",
        )


def library_problem(library: Path) -> str | None:
    """Why a cached library must not be loaded, or None when it verifies.

    Args:
        library: ``<name>-<key>.so`` in a cache folder that passed the folder check.

    Returns:
        None, [`MISSING`][lego.protocols.native_cache.MISSING], or what is wrong with the
        library or its record.
    """
    try:
        info = os.lstat(library)
    except FileNotFoundError:
        return MISSING
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    reason = _ownership(info)
    if reason is not None:
        return reason
    record = _record(library)
    try:
        record_info = os.lstat(record)
    except FileNotFoundError:
        return f"has no SHA-256 record ({record.name})"
    except OSError as exc:
        return f"has an unreadable record ({exc.strerror or exc})"
    if not stat.S_ISREG(record_info.st_mode) or record_info.st_size > 1024:
        return f"has a damaged record ({record.name})"
    reason = _ownership(record_info)
    if reason is not None:
        return f"has a record that {reason}"
    try:
        data = library.read_bytes()
        text = record.read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError):
        return f"has a damaged record ({record.name})"
    match = _RECORD.fullmatch(text)
    if match is None or match["name"] != library.name:
        return f"has a damaged record ({record.name})"
    if not data:
        return "is empty"
    if hashlib.sha256(data).hexdigest() != match["digest"]:
        return (
            f"does not match its recorded SHA-256 ({len(data)} bytes; truncated, damaged or "
            "replaced)"
        )
    return None


@contextlib.contextmanager
def _one_builder(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; wait while another live process builds."""
    lock = FolderLock(folder, what="native kernel cache")
    deadline = time.monotonic() + _LOCK_WAIT_S
    while True:
        try:
            lock.acquire()
            break
        except ConfigError:
            if not lock.path.exists() or time.monotonic() > deadline:
                raise  # not a lock held by a builder (an unwritable folder), or waited enough
            time.sleep(_LOCK_POLL_S)
    try:
        yield
    finally:
        lock.release()


def _remove_leftovers(folder: Path, stem: str) -> None:
    """Remove the temporaries of builders that died (and old ones of earlier versions).

    Before the cache had records, lego-generate built ``skinny-<key>.so`` under
    ``.skinny-`` + 8 random letters, digits or underscores + ``.so``, a name that does not
    say whose it is: such a file (``.<name>-`` + 8 of them + ``.so`` for the library
    ``<name>-<key>.so``) is removed once it is an hour old.
    """
    remove_stale_temporaries(folder)
    legacy = re.compile(re.escape("." + stem + "-") + r"[A-Za-z0-9_]{8}\.so")
    now = time.time()
    for entry in folder.iterdir():
        if legacy.fullmatch(entry.name):
            with contextlib.suppress(OSError):
                if now - entry.lstat().st_mtime > _LEGACY_AGE_S:
                    entry.unlink()


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (which must not exist) with ``mode`` minus the umask, and sync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


def _install(built: Path, library: Path) -> None:
    """Copy a fresh build into place with its record: library first, then the record."""
    data = built.read_bytes()
    if not data:
        raise OSError(f"the compiler wrote an empty library ({built.name})")
    staged = temporary_name(library)
    record = _record(library)
    staged_record = temporary_name(record)
    try:
        _write_new(staged, data, 0o755)
        digest = hashlib.sha256(data).hexdigest()
        _write_new(staged_record, f"{digest}  {library.name}\n".encode("ascii"), 0o644)
        os.replace(staged, library)
        os.replace(staged_record, record)
    finally:
        for leftover in (staged, staged_record):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def verified_library(
    library: Path,
    *,
    build: Callable[[Path], None],
    announce: Callable[[str], None],
) -> Path:
    """The cached library, verified; built (or rebuilt) first when missing or bad.

    Args:
        library: Where the library belongs: ``<cache folder>/<name>-<key>.so``.
        build: Compiles the library into the path it is given (a temporary name).
        announce: Called with [`MISSING`][lego.protocols.native_cache.MISSING] or the
            problem of the cached library before a build, to say so on stderr.

    Returns:
        ``library``, verified.

    Raises:
        ConfigError: The cache folder is not safe (see
            [`check_folder()`][lego.protocols.native_cache.check_folder]) or another
            process holds its lock too long.
        OSError: The build failed, or its result does not verify.
    """
    folder = library.parent
    stem = library.name.rpartition("-")[0]
    check_folder(folder)
    if library_problem(library) is None:
        _remove_leftovers(folder, stem)  # a verified cache never builds again: clean it here too
        return library
    with _one_builder(folder):
        _remove_leftovers(folder, stem)
        problem = library_problem(library)  # another process may have built it meanwhile
        if problem is not None:
            announce(problem)
            built = temporary_name(library)
            try:
                build(built)
                _install(built, library)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    built.unlink()
    problem = library_problem(library)
    if problem is not None:
        raise OSError(f"the freshly built {library.name} {problem}")
    return library
