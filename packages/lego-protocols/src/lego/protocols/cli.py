"""The command-line conventions every ``lego-<brick>`` tool shares.

Exit codes: 0 success, 1 unexpected failure (a bug: the traceback is shown), 2 bad input (a
[`LegoError`][lego.protocols.LegoError]: one clear message, no traceback unless ``--debug``),
130 interrupted. Help texts end with an example.

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
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from lego.protocols.errors import LegoError

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "make_parser",
    "run_cli",
]

EXIT_OK = 0
"""Exit code of a successful run."""
EXIT_FAILURE = 1
"""Exit code of an unexpected failure (a bug)."""
EXIT_BAD_INPUT = 2
"""Exit code of bad input: a [`LegoError`][lego.protocols.LegoError] or a usage error."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT)."""

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
        The exit code: 0, 1, 2 or 130 (or what ``main`` returned / passed to ``sys.exit``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    out = stderr if stderr is not None else sys.stderr
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        code = main(args)
    except LegoError as err:
        if debug:
            traceback.print_exc(file=out)
        print(f"{prog}: error: {err}", file=out)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=out)
        return EXIT_INTERRUPTED
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
