"""Discover the bricks (distributions) under ``packages/``.

Shared by ``tools/check_layout.py``, ``tools/release.py`` and ``noxfile.py``. The tools need
Python >= 3.10 (``tomllib``, or ``tomli`` before 3.11), the standard library and
``packaging``. This folder is not a package: import the module by path::

    sys.path.insert(0, str(ROOT / "tools"))
    import bricks

    for brick in bricks.discover(ROOT).values():
        ...
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # nox itself depends on tomli on Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "APPLICATION",
    "PREFIX",
    "TORCH_FREE",
    "Brick",
    "BrickError",
    "closure",
    "test_closure",
    "dependency_group",
    "discover",
    "find",
    "read_toml",
    "read_version",
]

PREFIX = "lego-"

APPLICATION = ("legollm", "recipes")
"""The application distribution and its import folder (``lego.recipes``): the one
distribution not named ``lego-<short>``; it composes the bricks and no brick may depend on it."""

TORCH_FREE = frozenset({"protocols", "tokenize"})
"""Short names of the bricks that must never import torch at run time (DESIGN.md §2)."""


class BrickError(Exception):
    """Bad or missing brick metadata; the message names the file and what to do."""

    def __init__(self, path: Path | None, message: str) -> None:
        super().__init__(message if path is None else f"{path}: {message}")
        self.path = path


@dataclasses.dataclass(frozen=True)
class Brick:
    """One distribution under ``packages/``.

    Attributes:
        name: Distribution name, e.g. ``"lego-tokenize"``.
        short: Short name, e.g. ``"tokenize"``; the application's is ``"legollm"``.
        import_name: The folder under ``src/lego``, e.g. ``"tokenize"`` (imported as
            ``lego.tokenize``); the application's is ``"recipes"``.
        path: The brick folder, e.g. ``packages/lego-tokenize``.
        version: The version in ``src/lego/<short>/__about__.py``.
        dependencies: ``[project] dependencies``, as written.
        optional_dependencies: ``[project.optional-dependencies]``, as written.
        siblings: Requirements in ``dependencies`` on other bricks.
        optional_siblings: Requirements on other bricks, per extra.
        test_requirements: The ``test`` dependency group, includes resolved.
        pyproject: The parsed ``pyproject.toml``.
    """

    name: str
    short: str
    import_name: str
    path: Path
    version: str
    dependencies: list[str] = dataclasses.field(hash=False)
    optional_dependencies: dict[str, list[str]] = dataclasses.field(hash=False)
    siblings: list[Requirement] = dataclasses.field(hash=False)
    optional_siblings: dict[str, list[Requirement]] = dataclasses.field(hash=False)
    test_requirements: list[str] = dataclasses.field(hash=False)
    pyproject: dict[str, Any] = dataclasses.field(hash=False, compare=False, repr=False)

    @property
    def module(self) -> str:
        """The import name, e.g. ``"lego.tokenize"``."""
        return f"lego.{self.import_name}"

    @property
    def package_dir(self) -> Path:
        """The import package folder, ``src/lego/<import_name>``."""
        return self.path / "src" / "lego" / self.import_name

    @property
    def is_application(self) -> bool:
        """Whether this is the application distribution (``legollm``), not a brick."""
        return self.name == APPLICATION[0]

    @property
    def about_file(self) -> Path:
        """The file that holds ``__version__``."""
        return self.package_dir / "__about__.py"

    @property
    def pyproject_file(self) -> Path:
        """The brick's ``pyproject.toml``."""
        return self.path / "pyproject.toml"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file.

    Raises:
        BrickError: The file is missing or is not valid TOML.
    """
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BrickError(path, f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BrickError(path, f"invalid TOML ({exc}); fix the syntax") from exc
    return data


def read_version(path: Path) -> str:
    """Read ``__version__ = "X.Y.Z"`` from a module without importing it.

    Raises:
        BrickError: The file is missing, or has no valid string ``__version__``.
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except OSError as exc:
        raise BrickError(
            path, f'cannot read ({exc.strerror}); create it with __version__ = "0.1.0"'
        ) from exc
    except SyntaxError as exc:
        raise BrickError(path, f"invalid Python at line {exc.lineno}") from exc
    for node in tree.body:
        value: ast.expr | None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        else:
            continue
        if not (isinstance(target, ast.Name) and target.id == "__version__"):
            continue
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            raise BrickError(path, "__version__ must be assigned a string literal")
        try:
            Version(value.value)
        except InvalidVersion as exc:
            raise BrickError(path, f"__version__ {value.value!r} is not a valid version") from exc
        return value.value
    raise BrickError(path, 'no top-level __version__ = "X.Y.Z"; add one')


def dependency_group(groups: dict[str, Any], name: str, path: Path) -> list[str]:
    """Resolve one PEP 735 dependency group, following ``{include-group = ...}``.

    Args:
        groups: The ``[dependency-groups]`` table.
        name: The group to resolve; a missing group resolves to ``[]``.
        path: The file the table came from (for error messages).

    Raises:
        BrickError: An include names a missing group, a cycle, or a bad entry.
    """
    table = {canonicalize_name(key): value for key, value in groups.items()}

    def resolve(group: str, seen: tuple[str, ...]) -> list[str]:
        key = canonicalize_name(group)
        if key in seen:
            raise BrickError(path, f"dependency group cycle: {' -> '.join((*seen, key))}")
        if key not in table:
            raise BrickError(path, f"dependency group {group!r} is included but not defined")
        entries = table[key]
        if not isinstance(entries, list):
            raise BrickError(path, f"dependency group {group!r} must be a list")
        out: list[str] = []
        for entry in entries:
            if isinstance(entry, str):
                out.append(entry)
            elif isinstance(entry, dict) and set(entry) == {"include-group"}:
                out.extend(resolve(str(entry["include-group"]), (*seen, key)))
            else:
                raise BrickError(path, f"bad entry {entry!r} in dependency group {group!r}")
        return out

    return resolve(name, ()) if canonicalize_name(name) in table else []


def _strings(value: object, path: Path, where: str) -> list[str]:
    if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise BrickError(path, f"{where} must be a list of requirement strings")
    return list(value)


def _requirement(text: str, path: Path) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise BrickError(path, f"invalid requirement {text!r}: {exc}") from exc


def _load(folder: Path) -> Brick:
    """Read one brick without resolving siblings (``siblings`` are filled in later)."""
    file = folder / "pyproject.toml"
    data = read_toml(file)
    project = data.get("project")
    if not isinstance(project, dict) or not isinstance(project.get("name"), str):
        raise BrickError(file, '[project] name is missing; set name = "lego-<short>"')
    name = canonicalize_name(project["name"])
    short: str
    import_name: str
    if name == APPLICATION[0]:
        short, import_name = str(name), APPLICATION[1]
    elif not name.startswith(PREFIX) or name == PREFIX:
        raise BrickError(file, f'[project] name {project["name"]!r} must be "lego-<short>"')
    else:
        short = import_name = name.removeprefix(PREFIX)
    dependencies = _strings(project.get("dependencies", []), file, "[project] dependencies")
    extras = project.get("optional-dependencies", {})
    if not isinstance(extras, dict):
        raise BrickError(file, "[project.optional-dependencies] must be a table")
    optional = {
        extra: _strings(reqs, file, f"optional dependency {extra!r}")
        for extra, reqs in extras.items()
    }
    for text in [*dependencies, *(req for reqs in optional.values() for req in reqs)]:
        _requirement(text, file)
    groups = data.get("dependency-groups", {})
    if not isinstance(groups, dict):
        raise BrickError(file, "[dependency-groups] must be a table")
    brick = Brick(
        name=name,
        short=short,
        import_name=import_name,
        path=folder,
        version="",
        dependencies=dependencies,
        optional_dependencies=optional,
        siblings=[],
        optional_siblings={},
        test_requirements=dependency_group(groups, "test", file),
        pyproject=data,
    )
    return dataclasses.replace(brick, version=read_version(brick.about_file))


def discover(root: Path) -> dict[str, Brick]:
    """Find every brick under ``root/packages/*/pyproject.toml``.

    Args:
        root: The monorepo root.

    Returns:
        Bricks keyed by distribution name (``"lego-tokenize"``), in name order.

    Raises:
        BrickError: A pyproject or ``__about__.py`` is missing data or invalid, or two
            folders declare the same distribution.
    """
    loaded: list[Brick] = []
    for file in sorted((root / "packages").glob("*/pyproject.toml")):
        brick = _load(file.parent)
        for other in loaded:
            if other.name == brick.name:
                raise BrickError(file, f"{brick.name} is already declared in {other.path}")
        loaded.append(brick)
    names = {brick.name for brick in loaded}

    def siblings(brick: Brick, texts: list[str]) -> list[Requirement]:
        reqs = [_requirement(text, brick.pyproject_file) for text in texts]
        return [r for r in reqs if canonicalize_name(r.name) in names - {brick.name}]

    return {
        brick.name: dataclasses.replace(
            brick,
            siblings=siblings(brick, brick.dependencies),
            optional_siblings={
                extra: siblings(brick, texts)
                for extra, texts in brick.optional_dependencies.items()
            },
        )
        for brick in loaded
    }


def find(bricks: dict[str, Brick], name: str) -> Brick:
    """Look a brick up by short name (``"tokenize"``) or distribution name.

    Raises:
        BrickError: No such brick.
    """
    key = canonicalize_name(name)
    for brick in bricks.values():
        if key in (brick.short, brick.name):
            return brick
    known = ", ".join(brick.short for brick in bricks.values()) or "none"
    raise BrickError(None, f"unknown brick {name!r}; known bricks: {known}")


def closure(bricks: dict[str, Brick], name: str) -> list[Brick]:
    """Return a brick and every sibling it needs through ``dependencies``.

    Args:
        bricks: The result of `discover`.
        name: A short or distribution name.

    Returns:
        The bricks in dependency-first order, ``name`` last.

    Raises:
        BrickError: Unknown brick, or a dependency cycle.
    """
    order: list[Brick] = []

    def visit(brick: Brick, path: tuple[str, ...]) -> None:
        if brick.name in path:
            cycle = " -> ".join((*path, brick.name))
            raise BrickError(brick.pyproject_file, f"dependency cycle: {cycle}")
        if any(done.name == brick.name for done in order):
            return
        for req in brick.siblings:
            visit(find(bricks, req.name), (*path, brick.name))
        order.append(brick)

    visit(find(bricks, name), ())
    return order


def test_closure(bricks: dict[str, Brick], name: str) -> tuple[list[Brick], list[str]]:
    """What testing a brick alone installs: bricks from their folders, the rest by name.

    A brick's ``test`` group may name sibling bricks it needs only in its tests (lego-serve's
    engine tests run a lego-arch model): those, with everything they depend on, are installed
    from their folders like the brick's own closure, never looked up on the package index.

    Args:
        bricks: The result of `discover`.
        name: A short or distribution name.

    Returns:
        ``(bricks to install from their folders, other test requirements)``.

    Raises:
        BrickError: Unknown brick, or a dependency cycle.
    """
    brick = find(bricks, name)
    order = closure(bricks, brick.name)
    others: list[str] = []
    names = {b.name for b in bricks.values()}
    for text in brick.test_requirements:
        requirement = _requirement(text, brick.pyproject_file)
        if canonicalize_name(requirement.name) not in names:
            others.append(text)
            continue
        for sibling in closure(bricks, requirement.name):
            if all(done.name != sibling.name for done in order):
                order.append(sibling)
    return order, others
