"""The command-line conventions every ``lego-<brick>`` tool shares.

Exit codes: 0 success, 1 unexpected failure (a bug: the traceback is shown), 2 bad input (a
[`LegoError`][lego.protocols.LegoError]: one clear message, no traceback unless ``--debug``),
130 interrupted by SIGINT (Ctrl-C), 143 by SIGTERM. Help texts end with an example.

Interrupted work exits 130 or 143 everywhere, so ``&&`` chains and schedulers see it: while
[`run_cli()`][lego.protocols.run_cli] runs, SIGTERM raises
[`Terminated`][lego.protocols.cli.Terminated] (a ``KeyboardInterrupt``) in the main thread,
so ``finally`` blocks and context managers clean up as they do for Ctrl-C. Work that stops
gracefully after saving (a trainer that finishes its step and writes a checkpoint) raises
[`Interrupted`][lego.protocols.cli.Interrupted] with a message that says how to continue.

Example:
    ``src/lego/tokenize/cli.py`` of a brick::

        def build_parser() -> argparse.ArgumentParser:
            parser = make_parser("lego-tokenize", "Train and run tokenizers.",
                                 example="lego-tokenize train corpus/ -o tok.json")
            ...
            return parser

        def _main(argv: list[str]) -> int:
            args = build_parser().parse_args(argv)
            ...
            return 0

        def main() -> NoReturn:  # the console-script entry point
            sys.exit(run_cli(_main, prog="lego-tokenize"))
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from lego.protocols.errors import LegoError

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Interrupted",
    "Terminated",
    "make_parser",
    "run_cli",
    "stop_signals_blocked",
    "terminate_raises",
    "worker_signals",
]

EXIT_OK = 0
"""Exit code of a successful run."""
EXIT_FAILURE = 1
"""Exit code of an unexpected failure (a bug)."""
EXIT_BAD_INPUT = 2
"""Exit code of bad input: a [`LegoError`][lego.protocols.LegoError] or a usage error."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT)."""
EXIT_TERMINATED = 143
"""Exit code after SIGTERM (128 + SIGTERM)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``.

    Attributes:
        signum: The signal number (``signal.SIGTERM``).
    """

    signum = int(signal.SIGTERM)


class Interrupted(Exception):  # noqa: N818 - the outcome, not a failure
    """Work stopped by a signal after saving what it could.

    The command exits ``128 + signum`` (130 for SIGINT, 143 for SIGTERM) and prints the
    message and what to do, without a traceback.

    Args:
        message: What was saved, e.g. ``"stopped at step 120 of 300: checkpoint saved"``.
        signum: The signal that stopped the work.
        hint: How to continue (``"run the same command again to continue"``).

    Attributes:
        message: As given.
        signum: As given.
        hint: As given.
    """

    def __init__(
        self, message: str, *, signum: int = signal.SIGINT, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.signum = int(signum)
        self.hint = hint

    @property
    def exit_code(self) -> int:
        """``128 + signum``."""
        return 128 + self.signum

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_interrupted, (self.message, self.signum, self.hint))


def _rebuild_interrupted(message: str, signum: int, hint: str | None) -> Interrupted:
    return Interrupted(message, signum=signum, hint=hint)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises [`Terminated`][lego.protocols.cli.Terminated].

    Only in the main thread (elsewhere signals cannot be handled); the previous handler
    comes back at the end.

    Yields:
        Nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def worker_signals() -> None:
    """Set a worker process's signals: Ctrl-C is the parent's to report, SIGTERM ends it.

    Call it first in a worker (a ``multiprocessing.Pool`` initializer). Ctrl-C in a terminal
    sends SIGINT to every process of the group: workers ignore it, so the parent alone
    reports the interruption (once, exit 130) and stops its pool, instead of one
    ``KeyboardInterrupt`` traceback per worker. SIGTERM (from the parent's
    ``Pool.terminate()``, or sent to the whole group) raises ``SystemExit``: the worker
    unwinds quietly, releasing the pool's queue locks (a worker that died holding one
    would hang the parent's ``terminate()``), without a traceback.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_worker)
    if hasattr(signal, "pthread_sigmask"):  # started under stop_signals_blocked()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Start a process pool inside this block: SIGINT and SIGTERM reach the main thread only.

    A ``multiprocessing.Pool`` starts three helper threads and forks its workers from the
    thread that creates it (and later from one of those helpers, to replace a worker). A
    signal sent to the process goes to any thread that does not block it: when one of the
    helpers takes it, Python runs the handler only once the main thread executes again,
    and a main thread waiting on a result never does (the run hangs instead of exiting
    130/143). Created inside this block, the helpers and the workers start with both
    signals blocked: signals to the parent reach its main thread, which interrupts the
    wait; a worker holds them until [`worker_signals()`][lego.protocols.cli.worker_signals]
    (its initializer) has set its own handlers, so none lands mid-fork.

    Example:
        >>> import multiprocessing
        >>> with stop_signals_blocked():
        ...     pool = multiprocessing.get_context("spawn").Pool(1, initializer=worker_signals)
        >>> pool.apply(abs, (-3,))
        3
        >>> pool.close(); pool.join()
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no per-thread masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_worker(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


DEBUG_ENV = "LEGO_DEBUG"


def make_parser(prog: str, description: str, *, example: str) -> argparse.ArgumentParser:
    """Create an argument parser that shows an example and knows ``--debug``.

    Args:
        prog: The command's name, e.g. ``"lego-tokenize"``.
        description: One or two sentences on what the command does.
        example: One or more example command lines, shown at the end of ``--help``.

    Returns:
        A parser with ``--debug`` defined (``run_cli`` acts on it).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show tracebacks for bad-input errors (or set {DEBUG_ENV}=1)",
    )
    return parser


def run_cli(
    main: Callable[[list[str]], int | None],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    stderr: TextIO | None = None,
) -> int:
    """Run a command's ``main`` and turn its outcome into an exit code.

    Args:
        main: Parses its arguments and does the work; returns an exit code or None (0).
        argv: The arguments (default: ``sys.argv[1:]``).
        prog: The command's name, prefixed to error messages.
        stderr: Where messages go (default: ``sys.stderr``).

    Returns:
        The exit code: 0, 1, 2, 130 or 143 (or what ``main`` returned / passed to
        ``sys.exit``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    out = stderr if stderr is not None else sys.stderr
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        with terminate_raises():
            code = main(args)
    except LegoError as err:
        if debug:
            traceback.print_exc(file=out)
        print(f"{prog}: error: {err}", file=out)
        return EXIT_BAD_INPUT
    except Interrupted as stop:
        text = f"{prog}: {stop.message}"
        if stop.hint:
            text += f"\n  what to do: {stop.hint}"
        print(text, file=out)
        return stop.exit_code
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(f"{prog}: {'terminated' if terminated else 'interrupted'}", file=out)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    except SystemExit as exit_:
        # argparse exits 2 on usage errors and 0 after --help; keep those codes.
        if exit_.code is None:
            return EXIT_OK
        if isinstance(exit_.code, int):
            return exit_.code
        print(exit_.code, file=out)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (e.g. ``| head``): not an error of ours.
        _silence_stdout()
        return EXIT_OK
    except Exception:
        traceback.print_exc(file=out)
        print(f"{prog}: unexpected error (a bug); please report it with the traceback", file=out)
        return EXIT_FAILURE
    return EXIT_OK if code is None else code


def _silence_stdout() -> None:
    # Python flushes stdout at exit and would raise BrokenPipeError again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
