"""One writer per folder: a lock file that names its holder, and stale locks taken over.

Folders that one process writes at a time (a training run's ``out_dir``, a dataset being
prepared, a pipeline's run) are guarded by [`FolderLock`][lego.protocols.locks.FolderLock]:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with FolderLock(folder, what="training run"):
    ...     pass  # write the run; a second writer gets a ConfigError naming this process

The lock is a file (``.lego.lock``) created with ``O_EXCL`` that holds the holder's pid,
host and start time as JSON. A second writer gets one clear
[`ConfigError`][lego.protocols.ConfigError] naming the holder. A lock left by a process that
died (same host, pid gone) is stale: it is taken over, with a line on stderr that says so.
A lock from another host is never taken over (its pid means nothing here): the message
says how to remove it once that host's process is gone. The one exception is a lock of the
same ``job`` (the ``job`` argument, e.g. torchrun's ``TORCHELASTIC_RUN_ID``): an elastic
launcher restarts a job's processes only after stopping the old ones, on whatever machine
they ran, so a lock that names the same job and another process is a leftover of an earlier
attempt and is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from lego.protocols.errors import ConfigError

__all__ = ["LOCK_FILE", "FolderLock", "pid_alive"]

LOCK_FILE = ".lego.lock"
"""The name of the lock file inside a locked folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine.

    Args:
        pid: A process id.

    Returns:
        False only when the process surely does not exist.

    Example:
        >>> pid_alive(os.getpid())
        True
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return True
    return True


class FolderLock:
    """Hold ``folder/.lego.lock`` while one process writes the folder.

    Use as a context manager (or call [`acquire()`][lego.protocols.locks.FolderLock.acquire]
    and [`release()`][lego.protocols.locks.FolderLock.release]). The folder is created when
    missing.

    Args:
        folder: The folder to lock.
        what: What the folder is, for messages (``"training run"``).
        stream: Where the notice about a stale lock goes (default: ``sys.stderr``).
        job: The job this process belongs to (an elastic launcher's run id), or None; a
            lock of the same job held by another process (any host) is an earlier attempt
            of this job and is taken over.

    Raises:
        ConfigError: From ``acquire``: another live process holds the lock, or the folder
            cannot be written.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        what: str,
        stream: TextIO | None = None,
        job: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.what = what
        self.job = job or None
        self.path = self.folder / LOCK_FILE
        self._stream = stream
        self._token = ""
        self.held = False

    def acquire(self) -> FolderLock:
        """Take the lock (taking over a stale one).

        Returns:
            The lock itself.

        Raises:
            ConfigError: The lock is held by a live process (here or on another host), or
                the folder cannot be written.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the {self.what} folder: {exc.strerror or exc}",
                path=self.folder,
                hint="choose a folder you can write to",
            ) from None
        self._token = secrets.token_hex(8)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "token": self._token,
        }
        if self.job is not None:
            record["job"] = self.job
        text = json.dumps(record) + "\n"
        for _ in range(3):
            try:
                created = self._create(text)
            except OSError as exc:
                raise ConfigError(
                    f"cannot lock the {self.what}: {exc.strerror or exc}",
                    path=self.path,
                    hint="choose a folder you can write to",
                ) from None
            if created:
                self.held = True
                return self
            holder = self._read_holder()
            if holder is not None and not self._stale(holder):
                raise self._held_error(holder) from None
            self._take_over(holder)
        raise ConfigError(  # pragma: no cover - three takeovers lost to other processes
            f"cannot lock the {self.what}: other processes keep taking it",
            path=self.path,
            hint="run one writer at a time",
        )

    def _create(self, text: str) -> bool:
        """Create the lock file holding ``text`` at once; False when it exists.

        The record is written to a private file first and hard-linked into place, so no
        other process ever reads a lock file that is still empty (and takes it for the
        remains of a writer killed mid-write). Where the filesystem has no hard links,
        the file is created exclusively and then written.
        """
        private = self.path.with_name(f"{LOCK_FILE}.new-{os.getpid()}-{secrets.token_hex(4)}")
        with open(private, "x", encoding="utf-8") as handle:
            handle.write(text)
        try:
            os.link(private, self.path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(private)
        return True

    def release(self) -> None:
        """Remove the lock file if it is still ours (idempotent)."""
        if not self.held:
            return
        self.held = False
        holder = self._read_holder()
        if holder is not None and holder.get("token") == self._token:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _read_holder(self) -> dict[str, Any] | None:
        """The lock's record, or None when the file is gone or unreadable (stale)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _stale(self, holder: dict[str, Any]) -> bool:
        pid = holder.get("pid")
        if not isinstance(pid, int) or not isinstance(holder.get("host"), str):
            return True  # damaged (a writer killed mid-write)
        if holder["host"] != socket.gethostname():
            # On another host, only an earlier attempt of this job is known to be gone.
            return self.job is not None and holder.get("job") == self.job
        return not pid_alive(pid)

    def _take_over(self, holder: dict[str, Any] | None) -> None:
        if holder is None:  # removed between our attempt and the read: just retry
            return
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{secrets.token_hex(4)}")
        try:
            os.replace(self.path, aside)  # atomic: one taker wins
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError):
            aside.unlink()
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')}"
            if holder
            else "an unreadable lock file"
        )
        stream = self._stream if self._stream is not None else sys.stderr
        print(
            f"note: took over the {self.what} lock of {who}, which is no longer running "
            f"({self.path})",
            file=stream,
            flush=True,
        )

    def _held_error(self, holder: dict[str, Any]) -> ConfigError:
        host = holder.get("host")
        here = host == socket.gethostname()
        where = "this machine" if here else f"host {host}"
        hint = (
            "wait for it to finish (or stop it), or choose another folder"
            if here
            else f"if that process is gone, delete {self.path} and run again"
        )
        return ConfigError(
            f"the {self.what} is being written by another process: pid {holder.get('pid')} "
            f"on {where}, since {holder.get('started')}",
            path=self.folder,
            hint=hint,
        )

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
