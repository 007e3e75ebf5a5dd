"""LegoLLM's one task runner.

Bricks are discovered from ``packages/*/pyproject.toml``: adding a folder adds its
``test-<brick>`` session. Every environment is a fresh pip virtualenv installed under
``constraints.txt`` (which pins the CPU build of torch).

    python3 -m nox -l            # list the sessions
    python3 -m nox -t ci         # the whole test suite (what .ci/run runs)
    python3 -m nox -s demo       # the main job
    python3 -m nox -s release -- protocols minor

Every session keeps its temporary files (``TMPDIR``: pytest's folders, torch's compile
cache) in its own environment folder, ``.nox/<session>/tmp``. With ``LEGO_NOX_PRUNE=1``
(``.ci/run`` sets it) each session deletes that folder, virtualenv included, when it ends,
so a run holds one environment with torch at a time instead of all of them (about 17 GB).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))

import bricks as brick_tools  # noqa: E402 - tools/ is put on the path just above

nox.options.default_venv_backend = "virtualenv"
nox.options.error_on_missing_interpreters = True

CONSTRAINTS = ROOT / "constraints.txt"
DIST = ROOT / "dist"
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
BRICKS = brick_tools.discover(ROOT)
SHARED_DATA = Path(os.environ.get("LEGO_SHARED_DATA", ROOT.parent / "shared" / "data"))
TEST_ENV = {
    "LEGO_SHARED_DATA": str(SHARED_DATA),
    "TIKTOKEN_CACHE_DIR": str(SHARED_DATA / "tiktoken-cache"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


SessionFunction = Callable[[nox.Session], None]


def lego_session(**options: Any) -> Callable[[SessionFunction], SessionFunction]:
    """``nox.session`` with temporary files kept in the session's folder, pruned on request.

    The session's ``TMPDIR`` is ``.nox/<session>/tmp`` (``Session.create_tmp``). When
    ``LEGO_NOX_PRUNE=1`` the whole ``.nox/<session>`` folder is deleted when the session
    ends, passed or failed.
    """

    def register(function: SessionFunction) -> SessionFunction:
        @functools.wraps(function)
        def run(session: nox.Session) -> None:
            session.create_tmp()
            try:
                function(session)
            finally:
                if os.environ.get("LEGO_NOX_PRUNE") == "1":
                    prune(session)

        nox.session(**options)(run)
        return run

    return register


def prune(session: nox.Session) -> None:
    """Delete the session's folder (its virtualenv and its ``tmp``)."""
    location = getattr(session.virtualenv, "location", None)
    if location and Path(location).is_dir():
        shutil.rmtree(location, ignore_errors=True)
        session.log(f"LEGO_NOX_PRUNE=1: deleted {location}")


def group(name: str) -> tuple[str, ...]:
    """Requirements of one dependency group of the root pyproject.toml."""
    return nox.project.dependency_groups(PYPROJECT, name)


def install(session: nox.Session, *requirements: str) -> None:
    """Install under the root constraints file (torch stays the pinned CPU build)."""
    session.install("-c", str(CONSTRAINTS), *requirements)


def all_brick_paths() -> list[str]:
    return [str(brick.path) for brick in BRICKS.values()]


def all_test_requirements() -> list[str]:
    """Every brick's test group, less the sibling bricks (installed from their folders)."""
    return sorted(
        {req for b in BRICKS.values() for req in brick_tools.test_closure(BRICKS, b.name)[1]}
    )


def pytest(session: nox.Session, *paths: str) -> None:
    """Run pytest with the root configuration; exit code 5 (no tests) fails the session."""
    session.run(
        "pytest", "-c", str(ROOT / "pyproject.toml"), *paths, *session.posargs, env=TEST_ENV
    )


# -- lint and types -------------------------------------------------------------------------


@lego_session(tags=["ci"])
def lint(session: nox.Session) -> None:
    """Ruff (check and format) and the layout rules of tools/check_layout.py."""
    install(session, *group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("python", "tools/check_layout.py")


@lego_session(tags=["ci"])
def typecheck(session: nox.Session) -> None:
    """mypy --strict, one run per brick, plus tools/, examples/ and benchmarks/."""
    install(session, *all_brick_paths(), "torch", *group("typecheck"), *group("bench"))
    sources = [str(brick.path / "src") for brick in BRICKS.values()]
    for brick in BRICKS.values():
        session.run("mypy", "-p", brick.module, env={"MYPYPATH": os.pathsep.join(sources)})
    # tools/ is not a package: its scripts import each other by path (`import bricks`).
    tools_path = os.pathsep.join([*sources, str(ROOT / "tools")])
    session.run("mypy", "tools", "noxfile.py", env={"MYPYPATH": tools_path})
    session.run("mypy", "benchmarks", "examples", env={"MYPYPATH": os.pathsep.join(sources)})


# -- tests ----------------------------------------------------------------------------------


def _alone_session(brick: brick_tools.Brick) -> None:
    def test_brick(session: nox.Session) -> None:
        closure, others = brick_tools.test_closure(BRICKS, brick.name)
        install(session, *(str(b.path) for b in closure), *others)
        pytest(session, str(brick.path / "tests"))

    test_brick.__doc__ = (
        f"Test {brick.name} alone: a fresh venv with only it, the siblings it declares "
        "and its test group (sibling bricks named there come from their folders)."
    )
    lego_session(name=f"test-{brick.short}", tags=["ci", "tests"])(test_brick)


for _brick in BRICKS.values():
    _alone_session(_brick)


@lego_session(name="test-all", tags=["ci", "tests"])
def test_all(session: nox.Session) -> None:
    """Every brick installed together in one venv; every brick's tests."""
    install(session, *all_brick_paths(), *all_test_requirements())
    pytest(session, *(str(brick.path / "tests") for brick in BRICKS.values()))


@lego_session(tags=["ci", "tests"])
def integration(session: nox.Session) -> None:
    """tests-integration/: cross-brick tests, oracles, examples, tools."""
    install(session, *all_brick_paths(), *group("integration"))
    pytest(session, "tests-integration")


@lego_session(tags=["ci"])
def docs(session: nox.Session) -> None:
    """Build the mkdocs-material site with --strict (API pages from packages/*/src)."""
    install(session, *group("docs"))
    with tempfile.TemporaryDirectory() as site:
        session.run("mkdocs", "build", "--strict", "--site-dir", site)


# -- distributions --------------------------------------------------------------------------


def build_dists(session: nox.Session, selected: list[brick_tools.Brick]) -> None:
    """Build the sdist and wheel of each selected brick into dist/."""
    DIST.mkdir(exist_ok=True)
    for brick in selected:
        for old in DIST.glob(f"{brick.name.replace('-', '_')}-*"):
            old.unlink()
        session.run("python", "-m", "build", "--outdir", str(DIST), str(brick.path))


def check_wheel_alone(
    session: nox.Session, brick: brick_tools.Brick, bricks: dict[str, brick_tools.Brick]
) -> None:
    """Install one wheel in a clean venv (siblings only from dist/) and import it with -I."""
    session.run("python", "tools/check_dist.py", str(DIST), brick.name)
    wheels = [
        str(DIST / f"{b.name.replace('-', '_')}-{b.version}-py3-none-any.whl")
        for b in brick_tools.closure(bricks, brick.name)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        session.run("python", "-m", "venv", str(venv))
        python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
        run = functools.partial(session.run, external=True)
        run(python, "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), *wheels)
        run(python, "-I", "-c", f"import {brick.module} as m; print(m.__name__, m.__version__)")
        run(python, "-I", str(ROOT / "tools" / "check_dist.py"), "--installed", brick.name)
        if brick.short in brick_tools.TORCH_FREE:
            run(python, "-I", str(ROOT / "tools" / "check_dist.py"), "--no-torch")


@lego_session(tags=["ci"])
def build(session: nox.Session) -> None:
    """Wheel + sdist per brick into dist/; each wheel installed alone in a clean venv."""
    install(session, *group("build"))
    selected = list(BRICKS.values())
    build_dists(session, selected)
    for brick in selected:
        check_wheel_alone(session, brick, BRICKS)


@lego_session(default=False)
def release(session: nox.Session) -> None:
    """Release one brick: nox -s release -- <brick> <major|minor|patch|first>."""
    parts = ("major", "minor", "patch", "first")
    if len(session.posargs) != 2 or session.posargs[1] not in parts:
        session.error(f"usage: nox -s release -- <brick> <{'|'.join(parts)}>")
    name, part = session.posargs
    try:
        brick_tools.find(BRICKS, name)
    except brick_tools.BrickError as err:
        session.error(str(err))
    install(session, *group("release"))
    session.run("python", "tools/release.py", name, part)
    bricks = brick_tools.discover(ROOT)  # versions changed
    brick = brick_tools.find(bricks, name)
    build_dists(session, brick_tools.closure(bricks, brick.name))
    check_wheel_alone(session, brick, bricks)
    session.log(
        f"released {brick.name} {brick.version}: push the tag {brick.name}-v{brick.version}"
    )


# -- running things -------------------------------------------------------------------------


@lego_session(default=False)
def bench(session: nox.Session) -> None:
    """Run benchmarks/ side by side with their peers; results in benchmarks/results/."""
    install(session, *all_brick_paths(), *group("bench"))
    session.run("python", "benchmarks/run.py", *session.posargs, env=TEST_ENV)


@lego_session(default=False)
def demo(session: nox.Session) -> None:
    """The main job: raw text to a talking model, with a report (examples/pipelines/tiny.yaml).

    Installs every brick and the application (``legollm[plot]``), then runs
    ``legollm pipeline`` from the repository root: tokenizer, data, pretraining, samples,
    runs/<timestamp>/report.md. Extra arguments are key=value overrides, e.g.
    ``nox -s demo -- max_steps=200``.
    """
    paths = [str(b.path) + ("[plot]" if b.is_application else "") for b in BRICKS.values()]
    install(session, *paths)
    config = ROOT / "examples" / "pipelines" / "tiny.yaml"
    session.run("legollm", "pipeline", "--config", str(config), *session.posargs, env=TEST_ENV)
