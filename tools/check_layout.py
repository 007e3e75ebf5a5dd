"""Check the monorepo layout and the dependency rules between bricks.

Usage: ``python tools/check_layout.py [--root DIR]``. Prints one line per problem and
exits 1, or exits 0 silently. Needs Python >= 3.11; standard library + ``packaging``.

Checks:
    a. no ``packages/*/src/lego/__init__.py`` (it would break the ``lego`` namespace);
    b. each brick's folder, names, files and hatch settings follow the template;
    c. every sibling range (dependencies and extras) admits the in-tree sibling version;
    d. no brick imports a sibling it does not declare (module level: ``dependencies``;
       inside functions: ``dependencies`` or an extra; ``TYPE_CHECKING`` blocks are free);
    e. lego-protocols and lego-tokenize never import torch outside ``TYPE_CHECKING``;
    f. each brick has a docs page ``docs/bricks/<short>.md``;
    g. no brick depends on the application (``legollm``), in dependencies or extras.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import bricks
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

__all__ = ["TORCH_FREE", "check", "imports", "main"]

TORCH_FREE = bricks.TORCH_FREE

Scope = Literal["module", "function", "typing"]


def check(root: Path) -> list[str]:
    """Check the monorepo at ``root``.

    Returns:
        One message per problem (empty when all is well), paths relative to ``root``.
    """
    problems = [
        f"{_rel(init, root)}: remove it; no brick may ship lego/__init__.py (PEP 420 namespace)"
        for init in sorted((root / "packages").glob("*/src/lego/__init__.py"))
    ]
    for folder in sorted((root / "packages").iterdir() if (root / "packages").is_dir() else []):
        if folder.is_dir() and not (folder / "pyproject.toml").exists():
            problems.append(f"{_rel(folder, root)}: no pyproject.toml; every brick needs one")
    try:
        found = bricks.discover(root)
    except bricks.BrickError as exc:
        return [*problems, _rel_message(exc, root)]
    if not found:
        return [*problems, "packages/: no bricks found"]
    for brick in found.values():
        problems += _check_files(brick, root)
        problems += _check_ranges(brick, found, root)
        problems += _check_imports(brick, found, root)
    return problems


def _check_files(brick: bricks.Brick, root: Path) -> list[str]:
    """Check (b) and (f): names, files and hatch settings of one brick."""
    where = _rel(brick.path, root)
    problems = []
    if brick.path.name != brick.name:
        problems.append(f"{where}: folder must be named {brick.name} (its [project] name)")
    if brick.pyproject["project"]["name"] != brick.name:
        problems.append(f"{where}/pyproject.toml: write the name as {brick.name!r}")
    lego = brick.path / "src" / "lego"
    entries = sorted(
        entry.name
        for entry in (lego.iterdir() if lego.is_dir() else [])
        if entry.name not in ("__pycache__", "__init__.py")  # __init__.py: check (a)
    )
    if entries != [brick.import_name] or not brick.package_dir.is_dir():
        problems.append(
            f"{where}/src/lego: must hold exactly one folder, {brick.import_name}/ (found: "
            f"{', '.join(entries) or 'nothing'})"
        )
    for path, kind in [
        (brick.package_dir / "py.typed", "file"),
        (brick.path / "README.md", "file"),
        (brick.path / "CHANGELOG.md", "file"),
        (brick.path / "tests", "folder"),
    ]:
        if not (path.is_file() if kind == "file" else path.is_dir()):
            problems.append(f"{_rel(path, root)}: missing {kind}; create it")
    hatch = brick.pyproject.get("tool", {}).get("hatch", {})
    packages = hatch.get("build", {}).get("targets", {}).get("wheel", {}).get("packages")
    if packages != ["src/lego"]:
        problems.append(
            f"{where}/pyproject.toml: set [tool.hatch.build.targets.wheel] "
            f'packages = ["src/lego"] (found {packages!r})'
        )
    version_path = hatch.get("version", {}).get("path")
    expected = f"src/lego/{brick.import_name}/__about__.py"
    if version_path != expected:
        problems.append(
            f'{where}/pyproject.toml: set [tool.hatch.version] path = "{expected}" '
            f"(found {version_path!r})"
        )
    docs = root / "docs" / "bricks" / f"{brick.short}.md"
    if not docs.is_file():
        problems.append(f"{_rel(docs, root)}: missing docs page for {brick.name}; write it")
    return problems


def _check_ranges(brick: bricks.Brick, found: dict[str, bricks.Brick], root: Path) -> list[str]:
    """Check (c): every ``lego-*`` requirement names a brick and admits its version."""
    where = f"{_rel(brick.pyproject_file, root)}"
    versions = {other.name: other.version for other in found.values()}
    problems = []
    declared = [("dependencies", text) for text in brick.dependencies] + [
        (f"optional-dependencies.{extra}", text)
        for extra, texts in brick.optional_dependencies.items()
        for text in texts
    ]
    for table, text in declared:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == bricks.APPLICATION[0] and not brick.is_application:
            problems.append(
                f"{where}: {table} names {req.name}; bricks never depend on the application "
                "(it composes them): move the code that needs it into legollm"
            )
            continue
        if not (name.startswith(bricks.PREFIX) or name == bricks.APPLICATION[0]) or (
            name == brick.name
        ):
            continue
        if name not in versions:
            problems.append(f"{where}: {table} names {req.name}, which is no brick in packages/")
        elif not req.specifier.contains(versions[name], prereleases=True):
            problems.append(
                f"{where}: {table} requires {text!r} but the in-tree {name} is "
                f"{versions[name]}; widen the range"
            )
    return problems


def _check_imports(brick: bricks.Brick, found: dict[str, bricks.Brick], root: Path) -> list[str]:
    """Check (d) and (e): sibling imports are declared; torch-free bricks stay torch-free."""
    required = {canonicalize_name(req.name) for req in brick.siblings}
    optional = required | {
        canonicalize_name(req.name) for reqs in brick.optional_siblings.values() for req in reqs
    }
    shorts = {other.import_name: other.name for other in found.values() if other is not brick}
    src = brick.path / "src"
    problems = []
    for file in sorted(src.rglob("*.py")):
        where = _rel(file, root)
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        except SyntaxError as exc:
            problems.append(f"{where}:{exc.lineno}: invalid Python; fix the syntax")
            continue
        package = list(file.relative_to(src).parent.parts)
        for module, line, scope in imports(tree, package):
            if scope == "typing":
                continue
            parts = module.split(".")
            if brick.short in TORCH_FREE and parts[0] == "torch":
                problems.append(
                    f"{where}:{line}: {brick.name} must not import torch; import it only "
                    "under `if TYPE_CHECKING:`"
                )
            if parts[0] != "lego" or len(parts) < 2 or parts[1] not in shorts:
                continue
            dist = shorts[parts[1]]
            if scope == "module" and dist not in required:
                problems.append(
                    f"{where}:{line}: imports lego.{parts[1]} at module level but {dist} is not "
                    "in [project] dependencies; declare it, or import it inside a function "
                    "and declare it in an extra"
                )
            elif scope == "function" and dist not in optional:
                problems.append(
                    f"{where}:{line}: imports lego.{parts[1]} but {dist} is declared neither in "
                    "[project] dependencies nor in an extra; declare it"
                )
    return problems


def imports(tree: ast.Module, package: list[str]) -> Iterator[tuple[str, int, Scope]]:
    """Yield every import of a module with its line and scope.

    Args:
        tree: The parsed module.
        package: The module's package as parts (e.g. ``["lego", "arch"]``), to resolve
            relative imports.

    Yields:
        ``(module, line, scope)``: the absolute module imported (``from lego import x``
        yields ``"lego.x"``), and ``"typing"`` under ``if TYPE_CHECKING:``, else
        ``"function"`` inside a function, else ``"module"``.
    """

    def walk(node: ast.AST, scope: Scope) -> Iterator[tuple[str, int, Scope]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, scope
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                name = f"{base}.{alias.name}" if base in ("lego", "") else base
                yield name.strip("."), node.lineno, scope
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                yield from walk(stmt, "typing")
            for stmt in node.orelse:
                yield from walk(stmt, scope)
        else:
            inner: Scope = scope
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                inner = "typing" if scope == "typing" else "function"
            for child in ast.iter_child_nodes(node):
                yield from walk(child, inner)

    yield from walk(tree, "module")


def _absolute(node: ast.ImportFrom, package: list[str]) -> str:
    """The absolute module of a ``from ... import``, resolving relative levels."""
    if node.level == 0:
        return node.module or ""
    base = package[: len(package) - node.level + 1] if node.level <= len(package) else []
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` tests ``TYPE_CHECKING`` or ``<module>.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _rel_message(exc: bricks.BrickError, root: Path) -> str:
    message = str(exc)
    if exc.path is not None:
        message = message.replace(str(exc.path), _rel(exc.path, root), 1)
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks from the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parents[1], help="monorepo root"
    )
    args = parser.parse_args(argv)
    problems = check(args.root)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
