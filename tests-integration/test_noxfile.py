"""The noxfile keeps its promises: a folder is a brick, and a test run that tests nothing fails.

These tests run nox on a copy of the repository's noxfile, tools and root pyproject beside a
small fake packages/ tree, so they never touch the real checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("nox", reason="the integration test group installs nox")


def copy_runner(repo: Path) -> None:
    """Put the real noxfile, tools, constraints and root pyproject into a fake repo."""
    shutil.copy(ROOT / "noxfile.py", repo / "noxfile.py")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shutil.copy(ROOT / "constraints.txt", repo / "constraints.txt")
    shutil.copytree(ROOT / "tools", repo / "tools", ignore=shutil.ignore_patterns("__pycache__"))


def nox(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nox", "-f", str(repo / "noxfile.py"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def listed(repo: Path, *args: str) -> dict[str, bool]:
    """Session name -> selected, from ``nox -l`` (lines ``* name [tags] -> doc`` / ``- ...``)."""
    listing = nox(repo, "-l", *args)
    assert listing.returncode == 0, listing.stderr
    sessions = {}
    for line in listing.stdout.splitlines():
        if line[:2] in ("* ", "- "):
            sessions[line[2:].split(" ")[0]] = line.startswith("*")
    return sessions


def session_names(repo: Path) -> set[str]:
    return set(listed(repo))


def test_real_repository_lists_a_session_per_brick() -> None:
    names = session_names(ROOT)
    folders = sorted(p.name for p in (ROOT / "packages").iterdir() if p.is_dir())
    assert folders, "packages/ holds no brick"
    for folder in folders:
        assert f"test-{folder.removeprefix('lego-')}" in names
    assert {"test-all", "integration", "lint", "typecheck", "docs", "build"} <= names
    assert {"bench", "demo", "release"} <= names


def test_adding_a_folder_adds_a_session(repo: Path, make_brick: Callable[..., Path]) -> None:
    copy_runner(repo)
    before = session_names(repo)
    assert {"test-protocols", "test-tokenize", "test-layers"} <= before
    make_brick(repo, "generate", dependencies=("lego-protocols>=0.1,<0.2",))
    assert session_names(repo) - before == {"test-generate"}


def test_ci_tag_selects_the_checks_but_not_demo_bench_release(repo: Path) -> None:
    copy_runner(repo)
    selected = {name for name, chosen in listed(repo, "-t", "ci").items() if chosen}
    assert "test-protocols" in selected
    assert {"demo", "bench", "release"}.isdisjoint(selected)


@pytest.mark.slow
def test_a_brick_whose_tests_collect_nothing_fails(repo: Path) -> None:
    copy_runner(repo)
    tests = repo / "packages" / "lego-protocols" / "tests"
    (tests / "test_nothing.py").write_text('"""No tests here."""\n')
    result = nox(repo, "-s", "test-protocols", timeout=300)
    assert result.returncode != 0
    assert "exit code 5" in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_a_brick_with_a_passing_test_passes_alone(repo: Path) -> None:
    copy_runner(repo)
    tests = repo / "packages" / "lego-tokenize" / "tests"
    (tests / "test_import.py").write_text(
        "import importlib.metadata\n\n"
        "def test_siblings_installed():\n"
        "    import lego.protocols, lego.tokenize\n"
        "    names = {d.metadata['Name'] for d in importlib.metadata.distributions()}\n"
        "    assert 'lego-layers' not in names\n"
    )
    result = nox(repo, "-s", "test-tokenize", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
