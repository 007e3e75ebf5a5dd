"""The lego-generate command: parsing and bad input (lego-arch is not installed here)."""

from __future__ import annotations

import importlib.util

import pytest

from lego.generate.cli import build_parser, main


def test_help_shows_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "lego-generate run --model" in capsys.readouterr().out


def test_run_flags_parse() -> None:
    args = build_parser().parse_args(
        ["run", "--model", "m", "--prompt", "hi", "--top-p", "0.9", "--stop", "\n", "--seed", "1"]
    )
    assert (args.top_p, args.stop_strings, args.seed) == (0.9, ["\n"], 1)


def test_missing_model_dir_exits_2(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", "/nonexistent/model", "--prompt", "hi"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "lego-generate: error:" in err
    if importlib.util.find_spec("lego.arch") is None:
        assert "lego-arch" in err
    else:
        assert "model directory not found" in err
