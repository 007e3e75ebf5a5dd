"""Shared fixtures for the integration tests.

tools/ is not a package: its modules (bricks, check_layout, release) are imported by path.
This folder is put on the path too, for its helper modules (``tiny_hf``, ``tiny_train``).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

TOOLS = Path(__file__).resolve().parents[1] / "tools"
HERE = Path(__file__).resolve().parent
for _folder in (TOOLS, HERE):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

CHANGELOG = """\
# Changelog

All notable changes to {name} are documented in this file. The format follows
[Keep a Changelog](https://keepachangelog.com/en/1.1.0/).

## [Unreleased]

### Added
- Something new in {name}.

## [{version}] - 2025-01-01

### Added
- First release.
"""


def write_brick(
    root: Path,
    short: str,
    *,
    version: str = "0.1.0",
    dependencies: tuple[str, ...] = (),
    optional: dict[str, list[str]] | None = None,
    groups: str = 'test = ["pytest>=8"]',
    application: bool = False,
) -> Path:
    """Write a brick that passes every layout check; return its folder.

    With ``application=True`` it is the application instead: distribution ``legollm``,
    import folder ``lego/recipes`` (``short`` is ignored), docs page ``legollm.md``.
    """
    name = f"lego-{short}"
    folder_name = short
    if application:
        name, short, folder_name = "legollm", "legollm", "recipes"
    folder = root / "packages" / name
    package = folder / "src" / "lego" / folder_name
    package.mkdir(parents=True)
    (package / "__about__.py").write_text(f'"""Version."""\n\n__version__ = "{version}"\n')
    (package / "__init__.py").write_text(f'"""The {name} brick."""\n')
    (package / "py.typed").write_text("")
    (folder / "tests").mkdir()
    (folder / "README.md").write_text(f"# {name}\n")
    (folder / "CHANGELOG.md").write_text(CHANGELOG.format(name=name, version=version))
    deps = "".join(f'\n  "{dep}",' for dep in dependencies)
    extras = "".join(
        f"{extra} = [{', '.join(repr(req) for req in reqs)}]\n"
        for extra, reqs in (optional or {}).items()
    )
    (folder / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [build-system]
            requires = ["hatchling>=1.24"]
            build-backend = "hatchling.build"

            [project]
            name = "{name}"
            dynamic = ["version"]
            description = "A test brick."
            dependencies = [{deps}
            ]

            [project.optional-dependencies]
            {extras}
            [dependency-groups]
            {groups}

            [tool.hatch.version]
            path = "src/lego/{folder_name}/__about__.py"

            [tool.hatch.build.targets.wheel]
            packages = ["src/lego"]
            """
        ).format(name=name, deps=deps, extras=extras, groups=groups, folder_name=folder_name)
    )
    docs = root / "docs" / "bricks"
    docs.mkdir(parents=True, exist_ok=True)
    (docs / f"{short}.md").write_text(f"# {name}\n")
    return folder


@pytest.fixture
def make_brick() -> Callable[..., Path]:
    """`write_brick`, for tests that need more bricks."""
    return write_brick


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small valid monorepo.

    - lego-protocols 0.1.0: no dependencies;
    - lego-tokenize 0.1.0: needs lego-protocols;
    - lego-layers 0.3.0: needs lego-protocols and numpy; extra ``tok`` = lego-tokenize;
      its test group includes another group.
    """
    write_brick(tmp_path, "protocols")
    write_brick(tmp_path, "tokenize", dependencies=("lego-protocols>=0.1,<0.2",))
    write_brick(
        tmp_path,
        "layers",
        version="0.3.0",
        dependencies=("lego-protocols>=0.1,<0.2", "numpy>=1.26"),
        optional={"tok": ["lego-tokenize>=0.1,<0.2"]},
        groups='base = ["pytest>=8"]\ntest = [{ include-group = "base" }, "hypothesis>=6"]',
    )
    return tmp_path
