"""Prepare the release of one brick: bump its version, date its changelog, widen dependents.

Usage: ``python tools/release.py <short> <major|minor|patch> [--root DIR] [--date YYYY-MM-DD]``

1. bumps ``src/lego/<short>/__about__.py`` (SemVer ``X.Y.Z``);
2. turns the ``## [Unreleased]`` section of its CHANGELOG.md (Keep a Changelog) into
   ``## [X.Y.Z] - DATE`` under a fresh, empty ``## [Unreleased]``;
3. for every brick whose requirement on it (dependencies or extras) does not admit the
   new version, keeps the lower bound, sets the upper bound to the next breaking version
   (``0.y.z`` -> ``<0.(y+1)``, ``x.y.z`` -> ``<(x+1)``), rewriting that string in its
   pyproject.toml in place, and adds ``- Allow <dist> <version>.`` under ``### Changed``
   in its ``## [Unreleased]`` section.

It prints the files it changed, one per line, and last the tag to push
(``lego-<short>-vX.Y.Z``). It touches neither git nor the network and builds nothing.
Bad input exits 2 with one message. Needs Python >= 3.11; standard library + ``packaging``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import bricks
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "PARTS",
    "ReleaseError",
    "ReleaseResult",
    "add_changelog_entry",
    "bump_version",
    "main",
    "next_breaking",
    "release",
    "release_changelog",
    "widen",
]

PARTS = ("major", "minor", "patch", "first")
_SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)")
_UNRELEASED = re.compile(r"## \[Unreleased\]\s*", re.IGNORECASE)
_LINK_DEFINITION = re.compile(r"\[[^\]]+\]:\s")
_VERSION_LINE = re.compile(r"""^(__version__\s*(?::\s*str\s*)?=\s*)(["'])(.*?)\2""", re.MULTILINE)


class ReleaseError(Exception):
    """The release cannot be prepared; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class ReleaseResult:
    """What `release` did.

    Attributes:
        name: The released distribution, e.g. ``"lego-tokenize"``.
        old_version: Its version before the bump.
        version: Its new version.
        tag: The git tag to push, ``lego-<short>-vX.Y.Z``.
        changed: The files written, in order.
        widened: The dependents whose range was widened.
    """

    name: str
    old_version: str
    version: str
    tag: str
    changed: list[Path]
    widened: list[str]


def _parse(version: str) -> tuple[int, int, int]:
    match = _SEMVER.fullmatch(version)
    if match is None:
        raise ReleaseError(f"version {version!r} is not SemVer X.Y.Z; fix __about__.py first")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def bump_version(version: str, part: str) -> str:
    """Bump a SemVer ``X.Y.Z`` version.

    Args:
        version: The current version, e.g. ``"0.1.3"``.
        part: ``"major"``, ``"minor"`` or ``"patch"``.

    Returns:
        The new version: ``0.1.3`` -> ``1.0.0`` / ``0.2.0`` / ``0.1.4``.

    Raises:
        ReleaseError: The version is not ``X.Y.Z`` or the part is unknown.
    """
    major, minor, patch = _parse(version)
    if part == "major":
        return f"{major + 1}.0.0"
    if part == "minor":
        return f"{major}.{minor + 1}.0"
    if part == "patch":
        return f"{major}.{minor}.{patch + 1}"
    raise ReleaseError(f"unknown part {part!r}; use one of {', '.join(PARTS)}")


def next_breaking(version: str) -> str:
    """The first version that may break users of ``version`` (an exclusive upper bound).

    ``0.y.z`` -> ``0.(y+1)``; ``x.y.z`` with ``x >= 1`` -> ``x+1``.
    """
    major, minor, _ = _parse(version)
    return f"0.{minor + 1}" if major == 0 else f"{major + 1}"


def widen(text: str, version: str) -> str | None:
    """Widen a requirement so it admits ``version``.

    Lower bounds (``>=``, ``>``; ``~=V`` and ``==V`` become ``>=V``) and exclusions stay;
    the upper bound becomes ``<next_breaking(version)``.

    Returns:
        The new requirement text, or None when ``text`` already admits ``version``.
    """
    req = Requirement(text)
    if req.specifier.contains(version, prereleases=True):
        return None
    lower, excluded = [], []
    for spec in req.specifier:
        if spec.operator in (">=", ">"):
            lower.append(str(spec))
        elif spec.operator in ("~=", "==", "==="):
            lower.append(f">={spec.version.removesuffix('.*')}")
        elif spec.operator == "!=":
            excluded.append(str(spec))
    specifier = ",".join([*sorted(lower), f"<{next_breaking(version)}", *sorted(excluded)])
    if not SpecifierSet(specifier).contains(version, prereleases=True):
        raise ReleaseError(f"cannot widen {text!r} to admit {version}; edit it by hand")
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}{specifier}{marker}"


def _unreleased(lines: list[str], file: Path) -> tuple[int, int]:
    """The index of the ``## [Unreleased]`` heading and the end of its section."""
    for start, line in enumerate(lines):
        if _UNRELEASED.fullmatch(line):
            end = next(
                (
                    i
                    for i in range(start + 1, len(lines))
                    if lines[i].startswith("## ") or _LINK_DEFINITION.match(lines[i])
                ),
                len(lines),
            )
            return start, end
    raise ReleaseError(f"{file}: no '## [Unreleased]' section; add one above the releases")


def _entries(lines: list[str]) -> list[str]:
    """The section body without empty ``###`` subsections and outer blank lines."""
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("#"):
            blocks.append([line])
        else:
            blocks[-1].append(line)
    kept = [
        line
        for block in blocks
        if any(line.strip() for line in block if not line.startswith("#"))
        for line in block
    ]
    while kept and not kept[-1].strip():
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)
    return kept


def release_changelog(text: str, version: str, date: str, file: Path) -> str:
    """Move the ``## [Unreleased]`` entries under ``## [version] - date``.

    Raises:
        ReleaseError: No Unreleased section, nothing in it, or ``version`` already there.
    """
    lines = text.splitlines()
    start, end = _unreleased(lines, file)
    body = _entries(lines[start + 1 : end])
    if not body:
        raise ReleaseError(
            f"{file}: nothing to release: the [Unreleased] section has no entries; "
            "describe the changes there first"
        )
    if any(line.startswith(f"## [{version}]") for line in lines):
        raise ReleaseError(f"{file}: {version} is already released")
    head = [*lines[:start], "## [Unreleased]", "", f"## [{version}] - {date}", "", *body]
    tail = lines[end:]
    return "\n".join([*head, "", *tail] if tail else head) + "\n"


def _after_last_text(lines: list[str], start: int, end: int) -> int:
    """The index just after the last non-blank line in ``lines[start:end]``."""
    return next(i + 1 for i in range(end - 1, start - 1, -1) if lines[i].strip())


def add_changelog_entry(text: str, entry: str, file: Path, kind: str = "Changed") -> str:
    """Add ``entry`` under ``### <kind>`` in the ``## [Unreleased]`` section.

    The section is created above the first release where missing, and the subsection at
    the end of the Unreleased section. An entry already there is not added again.
    """
    lines = text.splitlines()
    if not any(_UNRELEASED.fullmatch(line) for line in lines):
        first = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        lines[first:first] = ["## [Unreleased]", ""]
    start, end = _unreleased(lines, file)
    if entry in (line.strip() for line in lines[start:end]):
        return text
    heading = next((i for i in range(start + 1, end) if lines[i].strip() == f"### {kind}"), None)
    if heading is None:
        at = _after_last_text(lines, start, end)
        insert = ["", f"### {kind}", entry]
    else:
        stop = next((i for i in range(heading + 1, end) if lines[i].startswith("#")), end)
        at = _after_last_text(lines, heading, stop)
        insert = [entry]
    if at < len(lines) and lines[at].strip():
        insert.append("")
    lines[at:at] = insert
    return "\n".join(lines) + "\n"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read ({exc.strerror})") from exc


def _set_version(text: str, old: str, new: str, file: Path) -> str:
    matches = list(_VERSION_LINE.finditer(text))
    if len(matches) != 1 or matches[0].group(3) != old:
        raise ReleaseError(f'{file}: expected one line __version__ = "{old}"')
    match = matches[0]
    quote = match.group(2)
    return f"{text[: match.start()]}{match.group(1)}{quote}{new}{quote}{text[match.end() :]}"


def _replace_string(text: str, old: str, new: str, file: Path) -> str:
    """Replace every quoted TOML string ``old`` by ``new``, keeping the rest as is."""
    if f'"{old}"' not in text and f"'{old}'" not in text:
        raise ReleaseError(f"{file}: cannot find the string {old!r}; widen it by hand")
    return text.replace(f'"{old}"', f'"{new}"').replace(f"'{old}'", f"'{new}'")


def _names(text: str, name: str) -> bool:
    """Whether requirement ``text`` is on distribution ``name``."""
    return canonicalize_name(Requirement(text).name) == name


def release(root: Path, short: str, part: str, date: str) -> ReleaseResult:
    """Bump one brick, date its changelog and widen its dependents' ranges.

    All files are computed first and written only when every step succeeded.

    Args:
        root: The monorepo root.
        short: The brick's short name (``"tokenize"``) or distribution name.
        part: ``"major"``, ``"minor"`` or ``"patch"``; or ``"first"`` to release the
            in-tree version unchanged (a brick's first release).
        date: The release date, ``YYYY-MM-DD``.

    Raises:
        ReleaseError: Bad input or a file that cannot be updated.
        bricks.BrickError: Bad brick metadata, or an unknown brick.
    """
    try:
        datetime.date.fromisoformat(date)
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
            raise ValueError(date)
    except ValueError as exc:
        raise ReleaseError(f"date {date!r} is not YYYY-MM-DD") from exc
    found = bricks.discover(root)
    brick = bricks.find(found, short)
    changelog = brick.path / "CHANGELOG.md"
    if part == "first":  # the in-tree version was never released: release it as it is
        version = brick.version
        if re.search(rf"^## \[{re.escape(version)}\]", _read(changelog), flags=re.MULTILINE):
            raise ReleaseError(
                f"{brick.name} {version} is already in {changelog.name}; "
                "release major, minor or patch instead"
            )
    else:
        version = bump_version(brick.version, part)
    about = brick.about_file
    edits = {
        about: _set_version(_read(about), brick.version, version, about),
        changelog: release_changelog(_read(changelog), version, date, changelog),
    }
    entry = f"- Allow {brick.name} {version}."
    widened = []
    for other in found.values():
        if other is brick:
            continue
        original = pyproject = _read(other.pyproject_file)
        extras = other.optional_dependencies.values()
        for text in dict.fromkeys([*other.dependencies, *(t for ts in extras for t in ts)]):
            new = widen(text, version) if _names(text, brick.name) else None
            if new is not None:
                pyproject = _replace_string(pyproject, text, new, other.pyproject_file)
        if pyproject != original:
            own_log = other.path / "CHANGELOG.md"
            edits[other.pyproject_file] = pyproject
            edits[own_log] = add_changelog_entry(_read(own_log), entry, own_log)
            widened.append(other.name)
    for path, text in edits.items():
        path.write_text(text, encoding="utf-8")
    return ReleaseResult(
        name=brick.name,
        old_version=brick.version,
        version=version,
        tag=f"{brick.name}-v{version}",
        changed=list(edits),
        widened=widened,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run a release from the command line; return the exit status."""
    parser = argparse.ArgumentParser(
        description="Bump a brick, date its changelog and widen its dependents' ranges.",
        epilog="example: python tools/release.py tokenize minor --date 2025-01-31",
    )
    parser.add_argument("brick", help="short name, e.g. tokenize")
    parser.add_argument("part", choices=PARTS)
    parser.add_argument(
        "--root", type=Path, default=Path(__file__).resolve().parents[1], help="monorepo root"
    )
    parser.add_argument(
        "--date", default=datetime.date.today().isoformat(), help="YYYY-MM-DD (default: today)"
    )
    args = parser.parse_args(argv)
    try:
        result = release(args.root, args.brick, args.part, args.date)
    except (ReleaseError, bricks.BrickError, OSError) as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 2
    for path in result.changed:
        try:
            print(path.relative_to(args.root).as_posix())
        except ValueError:
            print(path)
    print(result.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
