import io

import pytest

from lego.protocols import ConfigError, make_parser, run_cli
from lego.protocols.cli import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK


def bad_input(argv: list[str]) -> int:
    raise ConfigError("vocab_size must be at least 256", key="vocab_size", hint="use 512")


def test_success_and_return_codes() -> None:
    assert run_cli(lambda argv: None, [], prog="t") == EXIT_OK
    assert run_cli(lambda argv: 3, [], prog="t") == 3
    seen: list[list[str]] = []
    run_cli(lambda argv: seen.append(argv), ["a", "--b"], prog="t")
    assert seen == [["a", "--b"]]


def test_lego_error_is_one_message_and_exit_2() -> None:
    err = io.StringIO()
    assert run_cli(bad_input, [], prog="lego-x", stderr=err) == EXIT_BAD_INPUT
    text = err.getvalue()
    assert text.startswith("lego-x: error: vocab_size must be at least 256")
    assert "what to do: use 512" in text
    assert "Traceback" not in text


def test_debug_shows_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    assert run_cli(bad_input, ["--debug"], prog="t", stderr=err) == EXIT_BAD_INPUT
    assert "Traceback" in err.getvalue()
    monkeypatch.setenv("LEGO_DEBUG", "1")
    err = io.StringIO()
    run_cli(bad_input, [], prog="t", stderr=err)
    assert "Traceback" in err.getvalue()


def test_bug_is_exit_1_with_traceback() -> None:
    def buggy(argv: list[str]) -> int:
        raise ZeroDivisionError("oops")

    err = io.StringIO()
    assert run_cli(buggy, [], prog="t", stderr=err) == EXIT_FAILURE
    assert "Traceback" in err.getvalue()
    assert "unexpected error" in err.getvalue()


def test_interrupt_is_130() -> None:
    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    err = io.StringIO()
    assert run_cli(interrupted, [], prog="t", stderr=err) == EXIT_INTERRUPTED
    assert "interrupted" in err.getvalue()


def test_argparse_usage_errors_exit_2_and_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    parser = make_parser("lego-x", "Does x.", example="lego-x --size 3")
    parser.add_argument("--size", type=int, required=True)

    def main(argv: list[str]) -> int:
        parser.parse_args(argv)
        return 0

    assert run_cli(main, ["--size", "nope"], prog="lego-x") == EXIT_BAD_INPUT
    assert run_cli(main, ["--help"], prog="lego-x") == EXIT_OK
    out = capsys.readouterr().out
    assert "example:\n  lego-x --size 3" in out
    assert "--debug" in out
    assert run_cli(main, ["--size", "3", "--debug"], prog="lego-x") == EXIT_OK


def test_sys_exit_with_message() -> None:
    def exits(argv: list[str]) -> int:
        raise SystemExit("cannot go on")

    err = io.StringIO()
    assert run_cli(exits, [], prog="t", stderr=err) == EXIT_FAILURE
    assert "cannot go on" in err.getvalue()
