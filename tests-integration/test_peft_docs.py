"""The code blocks of docs/bricks/peft.md run as they are, and its commands exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "bricks" / "peft.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", PAGE, flags=re.MULTILINE | re.DOTALL)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [line for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()]


def test_the_page_shows_lora_and_qlora() -> None:
    assert len(PYTHON) >= 2
    assert any("quantize_model" in code for code in PYTHON)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs(code: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_commands_are_lego_peft_subcommands() -> None:
    from lego.peft.cli import build_parser

    commands = [line.split("#")[0].split() for line in BASH if line.strip()]
    assert {c[1] for c in commands} == {"info", "merge", "quantize"}
    for command in commands:
        assert command[0] == "lego-peft"
        build_parser().parse_args(command[1:])  # exits 2 on an unknown option
