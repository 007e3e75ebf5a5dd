"""The fault-injection suite's tools: run a command as a user would, break things, compare.

Every fault test follows one shape (DESIGN.md §10): make the inputs, take a
[`snapshot()`][harness.snapshot] of every file that exists, run the command in a real
subprocess with the fault injected, then assert the exit code, a one-message stderr without
"Traceback" ([`assert_one_message()`][harness.assert_one_message]) and that every file that
existed before is byte-identical ([`assert_unchanged()`][harness.assert_unchanged]).

Faults: bad arguments and files (the test writes them), signals at chosen points
([`run_until()`][harness.run_until] then ``send_signal``), a full disk
([`small_disk()`][harness.small_disk]: a real tmpfs of a few hundred KiB where the machine
allows mounting one, else a per-process file-size limit, ``RLIMIT_FSIZE``, under which the
kernel fails writes with ``EFBIG``), concurrent writers (two processes started together).

Counters: each helper records what it did in [`COUNTS`][harness.COUNTS] (commands run,
faults injected, files compared); ``conftest.py`` prints them at the end of the run, for
the reliability page (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

COUNTS: Counter[str] = Counter()
"""``commands``, ``faults``, ``files_compared``: what the suite did, for the catalogue."""

CAPTURED: list[tuple[str, str]] = []
"""(command, stderr) of every command the suite ran: ``conftest.py`` writes them to one log
and fails the run if any holds a "Traceback" (the issue's ``grep -rn Traceback``)."""

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
}


@dataclass(frozen=True)
class Result:
    """A finished command.

    Attributes:
        code: The exit code.
        stdout: Its standard output.
        stderr: Its standard error.
    """

    code: int
    stdout: str
    stderr: str


def command(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with the interpreter running the tests."""
    return [sys.executable, "-m", module, *args]


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, **(extra or {})}


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    file_size_limit: int | None = None,
    stdin: str | None = None,
) -> Result:
    """Run a command to its end.

    Args:
        argv: The command.
        cwd: Its working directory.
        env: Extra environment variables.
        timeout: Seconds before the test fails.
        file_size_limit: Bytes any one file may grow to (``RLIMIT_FSIZE``), or None.
        stdin: Text fed to its standard input.

    Returns:
        The [`Result`][harness.Result].
    """
    COUNTS["commands"] += 1
    done = subprocess.run(
        list(argv),
        cwd=cwd,
        env=_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_limit(file_size_limit),
    )
    CAPTURED.append((" ".join(argv), done.stderr))
    return Result(done.returncode, done.stdout, done.stderr)


def as_in_a_terminal() -> None:
    """In the child before it runs: Ctrl-C and SIGQUIT as a terminal's shell leaves them.

    A suite started in the background (``cmd &``, nohup, some CI runners) inherits
    SIGINT ignored, and Python keeps an ignored SIGINT ignored: the Ctrl-C tests would
    test nothing. Every command the suite starts gets the default actions back.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def _limit(size: int | None):  # type: ignore[no-untyped-def]
    if size is None:
        return as_in_a_terminal

    def apply() -> None:
        as_in_a_terminal()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return apply


def start(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start a command in the background (stdout and stderr merged, text)."""
    COUNTS["commands"] += 1
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_in_a_terminal,
    )


def run_until(process: subprocess.Popen[str], marker: str, *, timeout: float = 600) -> str:
    """Read a started command's output until a line contains ``marker``.

    Returns:
        The output read so far.

    Raises:
        AssertionError: The command ended (or ``timeout`` passed) before printing it.
    """
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            _record(process, "".join(seen))
            return "".join(seen)
        if time.monotonic() > deadline:
            break
    process.kill()
    _record(process, "".join(seen))
    raise AssertionError(f"{marker!r} never printed:\n{''.join(seen)}")


def _children(pid: int) -> list[int]:
    """The ids of a process's children (Linux: /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat_file.parent.name))
    return found


def _ignores_sigint(pid: int) -> bool:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGINT - 1)))
    return False


def stop_at(process: subprocess.Popen[str], marker: str, *, workers: int = 0) -> None:
    """Stop the command's whole group once it printed ``marker`` and, when ``workers``,
    once that many worker processes run and ignore SIGINT (the parent's to report).

    Raises:
        AssertionError: The workers never appeared, or do not ignore SIGINT.
    """
    run_until(process, marker)
    for _ in range(1000):
        os.killpg(process.pid, signal.SIGSTOP)
        children = _children(process.pid) if workers else []
        if len(children) >= workers and all(_ignores_sigint(c) for c in children):
            return
        os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.01)  # let it run on a little, then look again
    raise AssertionError(f"no {workers} worker processes that ignore SIGINT: {children}")


def interrupt(process: subprocess.Popen[str], signum: int, *, timeout: float = 600) -> Result:
    """Send a signal and wait for the command to end.

    Returns:
        The [`Result`][harness.Result] (stdout holds the merged rest of the output).
    """
    COUNTS["faults"] += 1
    process.send_signal(signum)
    try:
        rest, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    _record(process, rest)
    return Result(process.returncode, rest, rest)


def _record(process: subprocess.Popen[str], output: str) -> None:
    CAPTURED.append((" ".join(map(str, process.args)), output))


def snapshot(root: Path, *, exclude: Sequence[Path] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (paths relative to it), minus ``exclude``.

    Args:
        root: The folder.
        exclude: Files or folders left out (the command's declared outputs).

    Returns:
        Relative path to digest.
    """
    skipped = [p.resolve() for p in exclude]
    digests: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(_below(path.resolve(), s) for s in skipped):
            continue
        digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _below(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def assert_unchanged(before: Mapping[str, str], root: Path) -> None:
    """Every file of ``before`` still exists under ``root`` with the same bytes."""
    after = snapshot(root)
    COUNTS["files_compared"] += len(before)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or removed: {changed}"


def assert_one_message(
    result: Result, *, code: int = 2, prog: str | None = None, phrase: str | None = None
) -> None:
    """The command failed cleanly: the exit code, one message, no traceback.

    Args:
        result: The finished command.
        code: The expected exit code (2 for bad input).
        prog: The command's name, when its message must start with ``prog: error:``.
        phrase: Text the message must contain.
    """
    COUNTS["faults"] += 1
    detail = f"exit {result.code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.code == code, detail
    assert "Traceback" not in result.stderr, detail
    assert "Traceback" not in result.stdout, detail
    if code == 2:
        assert result.stderr.count("error:") == 1, detail
        if prog is not None:
            assert f"{prog}: error:" in result.stderr, detail
    if phrase is not None:
        assert phrase in result.stderr + result.stdout, detail


@contextlib.contextmanager
def small_disk(folder: Path, *, size_kib: int) -> Iterator[tuple[Path, int | None]]:
    """A folder on a disk that fills up: a real tmpfs, or a file-size limit.

    Yields:
        ``(folder, file_size_limit)``: with a tmpfs the limit is None (the disk itself is
        small); where no tmpfs can be mounted (not root, a container without the
        capability) the folder is ordinary and every file the command writes is limited to
        ``size_kib`` KiB through ``RLIMIT_FSIZE`` (pass it to [`run()`][harness.run]).
    """
    folder.mkdir(parents=True, exist_ok=True)
    mounted = False
    if sys.platform.startswith("linux") and hasattr(os, "geteuid") and os.geteuid() == 0:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)],
            capture_output=True,
            check=False,
        )
        mounted = done.returncode == 0
    try:
        yield folder, (None if mounted else size_kib * 1024)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)
