"""The README's code blocks do what they say.

Every ``python`` block runs (in a fresh interpreter, from an empty directory, warnings as
errors); every command in a ``bash`` block names things that exist: nox sessions of the
noxfile, console scripts of the bricks and of legollm with their subcommands, and files of
the repository.
The demo's own command is run end to end, with small settings, by test_pipeline.py.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import bricks  # tools/, put on the path by conftest.py
import pytest

ROOT = Path(__file__).resolve().parents[1]

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [line for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()]


def test_the_readme_has_runnable_blocks() -> None:
    assert len(PYTHON) >= 2
    assert any("nox -s demo" in line for line in BASH)


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _scripts() -> dict[str, str]:
    scripts: dict[str, str] = {}
    for pyproject in ROOT.glob("packages/*/pyproject.toml"):
        scripts.update(bricks.read_toml(pyproject)["project"].get("scripts", {}))
    return scripts


def _commands() -> list[list[str]]:
    commands = []
    for line in BASH:
        code = line.split("#", 1)[0].strip()
        for part in code.split("&&"):
            if part.strip():
                commands.append(shlex.split(part.replace("<timestamp>", "TIMESTAMP")))
    return commands


def test_nox_sessions_exist() -> None:
    noxfile = (ROOT / "noxfile.py").read_text()
    named = [cmd[cmd.index("-s") + 1] for cmd in _commands() if "nox" in cmd and "-s" in cmd]
    assert named
    for session in named:
        assert re.search(rf"def {session}\(|name=\"{session}\"", noxfile), session


def test_console_scripts_and_files_exist() -> None:
    scripts = _scripts()
    used = [cmd for cmd in _commands() if cmd[0].startswith("lego-") or cmd[0] == "legollm"]
    assert used
    for cmd in used:
        assert cmd[0] in scripts, cmd[0]
        module = scripts[cmd[0]].split(":")[0]
        help_text = subprocess.run(
            [sys.executable, "-m", module, cmd[1], "--help"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert help_text.returncode == 0, (cmd, help_text.stderr)
        for arg in cmd[2:]:
            if arg.endswith((".yaml", ".py")):
                assert (ROOT / arg).is_file(), arg
