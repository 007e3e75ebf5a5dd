"""Streamed, resumable, verified downloads with the standard library only.

[`download()`][lego.data.download.download] fetches a URL into ``<dest>.part``, resuming an
earlier partial file with an HTTP ``Range`` request, checks the sha256 when one is known and
only then renames the file to ``dest``: ``dest`` is never half-written, and a file whose
checksum does not match is removed. Network failures become a
[`DataError`][lego.protocols.DataError] that says what to do, never a traceback.

Resuming: when ``<dest>.part`` exists, the request asks for ``bytes=<size>-``. A ``206``
answer whose ``Content-Range`` starts at that size is appended; a ``200`` answer (a server
that ignores ``Range``) restarts the file from the first byte; a ``416`` answer (the part is
as long as the file, or longer) restarts it too. A connection lost mid-body is retried from
where it stopped, ``retries`` times; after that the part file stays for the next call.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Final

from lego.data.__about__ import __version__
from lego.protocols import (
    ConfigError,
    DataError,
    Progress,
    check_float,
    check_int,
    make_progress,
)
from lego.protocols.progress import ProgressMode

__all__ = ["download", "sha256_file", "is_url", "PART_SUFFIX"]

PART_SUFFIX: Final = ".part"
"""Suffix of the partial file a download writes before the final rename."""
_CHUNK: Final = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def is_url(text: str) -> bool:
    """Tell whether ``text`` is an ``http://`` or ``https://`` URL.

    Args:
        text: A corpus name, path or URL.

    Returns:
        True for an HTTP(S) URL.
    """
    return text.startswith(("http://", "https://"))


def sha256_file(path: str | os.PathLike[str], *, chunk_size: int = _CHUNK) -> str:
    """Return the sha256 hex digest of a file, read in chunks.

    Args:
        path: The file.
        chunk_size: Bytes read at a time.

    Returns:
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class _InterruptedError(Exception):
    """The body stopped before its end; the part file holds what arrived."""


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    resume: bool = True,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool | ProgressMode | Progress = False,
    chunk_size: int = _CHUNK,
) -> Path:
    """Download ``url`` to ``dest`` through ``<dest>.part``, verified and renamed at the end.

    When ``dest`` already exists and its sha256 matches (or none is known), nothing is
    downloaded.

    Args:
        url: An ``http://`` or ``https://`` URL.
        dest: The file to create (its folder is created if missing).
        sha256: The expected sha256 hex digest, or None to skip verification.
        resume: Continue an existing ``<dest>.part`` with an HTTP Range request; when False
            the part file is discarded and the download starts over.
        retries: How many times a connection lost mid-body is resumed within this call.
        timeout: Seconds to wait for the server on each connect and read.
        progress: True (or ``"auto"``) for a progress bar (rich on a terminal, plain lines
            otherwise), a mode of [`make_progress`][lego.protocols.make_progress], or a
            [`Progress`][lego.protocols.Progress] display to report to (left open).
        chunk_size: Bytes read and written at a time.

    Returns:
        The path of the downloaded file (``dest``).

    Raises:
        ConfigError: On a URL that is not HTTP(S) or a malformed ``sha256``.
        DataError: When the server cannot be reached, answers with an HTTP error, the
            transfer keeps failing, or the checksum does not match (the file is removed).
    """
    if not is_url(url):
        raise ConfigError(
            f"not an http(s) URL: {url!r}",
            key="url",
            hint="give a URL starting with https:// or http://, or a local file",
        )
    check_int("retries", retries, minimum=0, owner="download")
    check_float("timeout", timeout, low=0.0, low_open=True, owner="download")
    check_int("chunk_size", chunk_size, minimum=1, owner="download")
    if sha256 is not None and not _HEX64.fullmatch(sha256):
        raise ConfigError(
            f"sha256 must be 64 hex digits, got {sha256!r}", key="sha256", hint="check the digest"
        )
    expected = sha256.lower() if sha256 is not None else None
    target = Path(dest)
    if target.is_dir():
        raise ConfigError(
            "the destination is a directory; give the file to write",
            path=target,
            hint=f"e.g. {target / _url_filename(url)}",
        )
    if target.is_file() and (expected is None or sha256_file(target) == expected):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    if not resume:
        part.unlink(missing_ok=True)
    # a caller's display stays open; one made here closes at the end
    with make_progress(progress) as reporter:
        attempt = 0
        while True:
            try:
                _fetch(url, part, timeout=timeout, chunk_size=chunk_size, progress=reporter)
                break
            except _InterruptedError as err:
                attempt += 1
                if attempt > retries:
                    raise DataError(
                        f"the download of {url} keeps breaking off ({err}); "
                        f"{_size(part)} bytes are kept",
                        path=part,
                        hint="run the same command again to resume, or check your network",
                    ) from None
    actual = sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
            "the downloaded file was removed",
            path=target,
            hint="the file on the server changed or the transfer was corrupted; try again, "
            "or check the URL",
        )
    os.replace(part, target)
    return target


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _url_filename(url: str) -> str:
    name = Path(urllib.parse.urlparse(url).path).name
    return name or "download"


def _host(url: str) -> str:
    return urllib.parse.urlparse(url).netloc or url


def _open(url: str, *, start: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"lego-data/{__version__}", "Accept-Encoding": "identity"}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response: http.client.HTTPResponse = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start > 0:
            err.close()
            raise
        err.close()
        raise DataError(
            f"the server answered HTTP {err.code} {err.reason} for {url}",
            hint="check the URL" if err.code in (400, 401, 403, 404, 410) else "try again later",
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DataError(
            f"could not reach {_host(url)} ({reason}); check your network or pass a local file",
            hint="download the file elsewhere and give its path instead of the name or URL",
        ) from None
    return response


def _fetch(url: str, part: Path, *, timeout: float, chunk_size: int, progress: Progress) -> None:
    """Bring ``part`` up to the whole file, appending to it when the server allows."""
    start = _size(part)
    try:
        response = _open(url, start=start, timeout=timeout)
    except urllib.error.HTTPError:
        # 416: the part file is already as long as (or longer than) the file; start over.
        part.unlink(missing_ok=True)
        start = 0
        response = _open(url, start=0, timeout=timeout)
    with response:
        status = response.status
        if start > 0 and status == 206:
            first = _content_range_start(response.headers.get("Content-Range"))
            if first != start:
                # A range we did not ask for: do not splice it in.
                response.close()
                part.unlink(missing_ok=True)
                raise _InterruptedError(f"the server sent bytes from {first}, asked for {start}")
            mode = "ab"
        else:
            start, mode = 0, "wb"  # 200: the server ignored Range (or there was none)
        length_header = response.headers.get("Content-Length")
        length = int(length_header) if length_header and length_header.isdigit() else None
        total = start + length if length is not None else None
        name = part.name.removesuffix(PART_SUFFIX)
        received = 0
        with (
            progress.task(f"downloading {name}", total=total, unit="B", completed=start) as task,
            open(part, mode) as handle,
        ):
            try:
                while True:
                    chunk = response.read(chunk_size)
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    task.update(start + received)
            except (http.client.IncompleteRead, OSError) as err:
                handle.flush()
                done = start + received
                raise _InterruptedError(f"{type(err).__name__} after {done} bytes") from None
            if length is not None and received < length:  # the task ends without "done"
                raise _InterruptedError(f"got {start + received} of {total} bytes")


def _content_range_start(header: str | None) -> int | None:
    if header is None:
        return None
    match = _CONTENT_RANGE.match(header.strip())
    return int(match.group(1)) if match else None
