"""The legollm command: help, parsing and bad input (exit 2, one message, no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lego.recipes.cli import build_parser, main

SUBCOMMANDS = ("pipeline", "pretrain", "generate", "chat", "configs")


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    code = info.value.code
    assert isinstance(code, int)
    return code


def test_help_lists_every_subcommand_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out
    assert "legollm pipeline --config examples/pipelines/tiny.yaml" in out
    assert "legollm generate --model" in out


@pytest.mark.parametrize("command", ["pipeline", "pretrain", "generate", "chat"])
def test_each_subcommand_help_shows_an_example(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit([command, "--help"]) == 0
    assert f"legollm {command}" in capsys.readouterr().out


def test_configs_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit(["configs"]) == 0
    assert capsys.readouterr().out.split() == ["gpt2-124m", "tiny"]


def test_generate_flags_parse() -> None:
    args = build_parser().parse_args(
        ["generate", "--model", "m", "--prompt", "hi", "--top-p", "0.9", "--stop", "\n"]
    )
    assert (args.top_p, args.stop_strings, args.device) == (0.9, ["\n"], "auto")


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["pretrain", "--config", "tiny", "max_step=3"], "max_steps"),
        (["pretrain", "--config", "tinyy"], "tiny"),
        (["pretrain", "--config", "tiny", "optim.lr="], "has no value"),
        (["generate", "--model", "/nonexistent/model", "--prompt", "hi"], "does not exist"),
        (["generate", "--model", ".", "--prompt", ""], "prompt is empty"),
    ],
)
def test_bad_input_exits_2_with_one_message(
    argv: list[str], phrase: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("legollm: error:")
    assert phrase in err
    assert "Traceback" not in err


def test_file_as_model_dir_says_model_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    assert _exit(["generate", "--model", str(file), "--prompt", "hi"]) == 2
    assert "legollm: error:" in capsys.readouterr().err
