"""Check built distributions and what a wheel brings when installed alone.

Three modes, used by the ``build`` and ``release`` nox sessions:

``python tools/check_dist.py DIST NAME``
    The wheel and sdist of brick NAME (at its in-tree version) are in DIST; the wheel holds
    only ``lego/<short>/`` and its ``.dist-info`` (no ``lego/__init__.py``), ships
    ``py.typed``, and declares exactly the dependencies of the brick's pyproject.toml.
``python -I tools/check_dist.py --installed NAME``
    Run with a clean venv's interpreter: every installed distribution (but the installer's
    own) is NAME or something NAME requires, directly or not (stdlib only).
``python -I tools/check_dist.py --no-torch``
    torch is not importable in this interpreter.

Exit code 0 when everything holds, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import zipfile
from pathlib import Path

INSTALLER_DISTS = {"pip", "setuptools", "wheel", "distribute"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return canonical(match.group(1)) if match else ""


def check_built(dist: Path, name: str, root: Path) -> list[str]:
    sys.path.insert(0, str(root / "tools"))
    import bricks  # needs packaging, which the build venv has

    brick = bricks.discover(root)[name]
    stem = f"{name.replace('-', '_')}-{brick.version}"
    wheel = dist / f"{stem}-py3-none-any.whl"
    sdist = dist / f"{stem}.tar.gz"
    problems = [f"missing {path}" for path in (wheel, sdist) if not path.is_file()]
    if problems:
        return problems
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(f"{stem}.dist-info/METADATA").decode("utf-8")
    allowed = (f"lego/{brick.import_name}/", f"{stem}.dist-info/")
    problems += [
        f"{wheel.name} ships {n} (only {allowed[0]})" for n in names if not n.startswith(allowed)
    ]
    if f"lego/{brick.import_name}/py.typed" not in names:
        problems.append(f"{wheel.name} lacks lego/{brick.import_name}/py.typed")
    declared = sorted(requirement_name(r) for r in brick.dependencies)
    shipped = sorted(
        requirement_name(line.split(":", 1)[1])
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    )
    if shipped != declared:
        problems.append(f"{wheel.name} requires {shipped}, pyproject declares {declared}")
    print(f"{wheel.name}: {len(names)} files, requires {shipped or 'nothing'}")
    return problems


def check_installed(name: str) -> list[str]:
    installed = {canonical(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    needed: set[str] = set()
    todo = [canonical(name)]
    while todo:
        current = todo.pop()
        if current in needed or current not in installed:
            continue
        needed.add(current)
        for requirement in installed[current].requires or []:
            if "extra ==" not in requirement:
                todo.append(requirement_name(requirement))
    extra = sorted(set(installed) - needed - INSTALLER_DISTS)
    print(f"{name} alone brings: {sorted(needed)}")
    problems = [f"{name} is not installed"] if canonical(name) not in installed else []
    return problems + [f"{d} is installed but {name} does not require it" for d in extra]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--installed"] and len(argv) == 2:
        problems = check_installed(argv[1])
    elif argv == ["--no-torch"]:
        found = importlib.util.find_spec("torch") is not None
        problems = ["torch is importable but must not be installed here"] if found else []
    elif len(argv) == 2:
        problems = check_built(Path(argv[0]), argv[1], Path(__file__).resolve().parents[1])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
