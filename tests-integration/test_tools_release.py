"""Tests for tools/release.py on small fake monorepos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bricks
import check_layout
import pytest
import release
from release import ReleaseError

TOOLS = Path(__file__).resolve().parents[1] / "tools"
DATE = "2025-02-03"


def snapshot(root: Path) -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(root.rglob("*")) if path.is_file()}


def changed_files(before: dict[Path, str], root: Path) -> list[str]:
    after = snapshot(root)
    return sorted(
        path.relative_to(root).as_posix() for path in after if after[path] != before.get(path)
    )


# --- version arithmetic -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "part", "expected"),
    [
        ("0.1.3", "major", "1.0.0"),
        ("0.1.3", "minor", "0.2.0"),
        ("0.1.3", "patch", "0.1.4"),
        ("1.2.3", "major", "2.0.0"),
        ("1.2.3", "minor", "1.3.0"),
        ("1.2.3", "patch", "1.2.4"),
        ("0.0.9", "patch", "0.0.10"),
    ],
)
def test_bump_version(version: str, part: str, expected: str) -> None:
    assert release.bump_version(version, part) == expected


@pytest.mark.parametrize(
    ("version", "part"),
    [("0.1", "minor"), ("0.1.0rc1", "patch"), ("01.2.3", "major"), ("1.2.3", "huge")],
)
def test_bump_version_rejects_bad_input(version: str, part: str) -> None:
    with pytest.raises(ReleaseError):
        release.bump_version(version, part)


@pytest.mark.parametrize(
    ("version", "expected"), [("0.2.0", "0.3"), ("0.0.5", "0.1"), ("1.0.0", "2"), ("2.5.1", "3")]
)
def test_next_breaking(version: str, expected: str) -> None:
    assert release.next_breaking(version) == expected


@pytest.mark.parametrize(
    ("text", "version", "expected"),
    [
        ("lego-protocols>=0.1,<0.2", "0.2.0", "lego-protocols>=0.1,<0.3"),
        ("lego-protocols>=0.1,<0.2", "0.1.5", None),
        ("lego-protocols>=0.9,<0.10", "1.0.0", "lego-protocols>=0.9,<2"),
        ("lego-protocols>=1.2,<2", "2.0.0", "lego-protocols>=1.2,<3"),
        ("lego-protocols~=0.1.0", "0.2.0", "lego-protocols>=0.1.0,<0.3"),
        ("lego-protocols==0.1.*", "0.2.0", "lego-protocols>=0.1,<0.3"),
        ("lego-protocols<=0.1.9,!=0.1.2", "0.2.0", "lego-protocols<0.3,!=0.1.2"),
        (
            'Lego_Protocols[extra]>=0.1,<0.2; python_version >= "3.10"',
            "0.2.0",
            'Lego_Protocols[extra]>=0.1,<0.3; python_version >= "3.10"',
        ),
    ],
)
def test_widen(text: str, version: str, expected: str | None) -> None:
    assert release.widen(text, version) == expected


# --- changelog editing --------------------------------------------------------------------


def test_release_changelog_drops_empty_subsections() -> None:
    text = (
        "# Changelog\n\n## [Unreleased]\n\n### Added\n\n### Fixed\n- A bug.\n\n"
        "## [0.1.0] - 2025-01-01\n\n- First.\n\n[0.1.0]: https://example.org/0.1.0\n"
    )
    assert release.release_changelog(text, "0.1.1", DATE, Path("CHANGELOG.md")) == (
        "# Changelog\n\n## [Unreleased]\n\n## [0.1.1] - 2025-02-03\n\n### Fixed\n- A bug.\n\n"
        "## [0.1.0] - 2025-01-01\n\n- First.\n\n[0.1.0]: https://example.org/0.1.0\n"
    )


def test_release_changelog_as_last_section() -> None:
    text = "# Changelog\n\n## [Unreleased]\n- Everything.\n"
    assert release.release_changelog(text, "0.1.0", DATE, Path("CHANGELOG.md")) == (
        "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2025-02-03\n\n- Everything.\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2025-01-01\n- x\n", "nothing to release"),
        ("# Changelog\n\n## [Unreleased]\n\n### Added\n\n### Fixed\n", "nothing to release"),
        ("# Changelog\n\n## [0.1.0] - 2025-01-01\n- x\n", "no '## \\[Unreleased\\]' section"),
        ("## [Unreleased]\n- y\n\n## [0.2.0] - 2025-01-01\n- x\n", "0.2.0 is already released"),
    ],
)
def test_release_changelog_errors(text: str, message: str) -> None:
    with pytest.raises(ReleaseError, match=message):
        release.release_changelog(text, "0.2.0", DATE, Path("CHANGELOG.md"))


ENTRY = "- Allow lego-protocols 0.2.0."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # a new subsection at the end of Unreleased
            "## [Unreleased]\n\n### Added\n- A.\n\n## [0.1.0] - 2025-01-01\n",
            f"## [Unreleased]\n\n### Added\n- A.\n\n"
            f"### Changed\n{ENTRY}\n\n## [0.1.0] - 2025-01-01\n",
        ),
        (  # an empty Unreleased section
            "# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2025-01-01\n",
            f"# Changelog\n\n## [Unreleased]\n\n### Changed\n{ENTRY}\n\n## [0.1.0] - 2025-01-01\n",
        ),
        (  # an existing Changed subsection
            "## [Unreleased]\n### Changed\n- B.\n\n### Fixed\n- C.\n",
            f"## [Unreleased]\n### Changed\n- B.\n{ENTRY}\n\n### Fixed\n- C.\n",
        ),
        (  # no Unreleased section at all
            "# Changelog\n\n## [0.1.0] - 2025-01-01\n",
            f"# Changelog\n\n## [Unreleased]\n\n### Changed\n{ENTRY}\n\n## [0.1.0] - 2025-01-01\n",
        ),
        (  # already there
            f"## [Unreleased]\n\n### Changed\n{ENTRY}\n",
            f"## [Unreleased]\n\n### Changed\n{ENTRY}\n",
        ),
    ],
)
def test_add_changelog_entry(text: str, expected: str) -> None:
    assert release.add_changelog_entry(text, ENTRY, Path("CHANGELOG.md")) == expected


# --- release() on a fake monorepo ---------------------------------------------------------


def test_release_minor_widens_dependents(repo: Path) -> None:
    before = snapshot(repo)
    result = release.release(repo, "protocols", "minor", DATE)

    assert (result.name, result.old_version, result.version) == ("lego-protocols", "0.1.0", "0.2.0")
    assert result.tag == "lego-protocols-v0.2.0"
    assert result.widened == ["lego-layers", "lego-tokenize"]
    expected = [
        "packages/lego-layers/CHANGELOG.md",
        "packages/lego-layers/pyproject.toml",
        "packages/lego-protocols/CHANGELOG.md",
        "packages/lego-protocols/src/lego/protocols/__about__.py",
        "packages/lego-tokenize/CHANGELOG.md",
        "packages/lego-tokenize/pyproject.toml",
    ]
    assert changed_files(before, repo) == expected
    assert sorted(path.relative_to(repo).as_posix() for path in result.changed) == expected

    protocols = repo / "packages/lego-protocols"
    about = protocols / "src/lego/protocols/__about__.py"
    assert about.read_text() == before[about].replace('"0.1.0"', '"0.2.0"')
    assert bricks.discover(repo)["lego-protocols"].version == "0.2.0"
    assert (
        (protocols / "CHANGELOG.md")
        .read_text()
        .endswith(
            "## [Unreleased]\n\n"
            "## [0.2.0] - 2025-02-03\n\n"
            "### Added\n- Something new in lego-protocols.\n\n"
            "## [0.1.0] - 2025-01-01\n\n"
            "### Added\n- First release.\n"
        )
    )
    for short in ("tokenize", "layers"):
        pyproject = repo / f"packages/lego-{short}/pyproject.toml"
        assert pyproject.read_text() == before[pyproject].replace(
            '"lego-protocols>=0.1,<0.2"', '"lego-protocols>=0.1,<0.3"'
        )  # only that string changed: formatting is kept
        changelog = repo / f"packages/lego-{short}/CHANGELOG.md"
        new_entry = f"- Something new in lego-{short}.\n"
        assert changelog.read_text() == before[changelog].replace(
            new_entry, f"{new_entry}\n### Changed\n- Allow lego-protocols 0.2.0.\n"
        )
    assert check_layout.check(repo) == []


def test_release_widens_optional_dependencies(repo: Path) -> None:
    pyproject = repo / "packages/lego-layers/pyproject.toml"
    before = pyproject.read_text()
    result = release.release(repo, "lego-tokenize", "minor", DATE)
    assert result.widened == ["lego-layers"]
    assert pyproject.read_text() == before.replace(
        "'lego-tokenize>=0.1,<0.2'", "'lego-tokenize>=0.1,<0.3'"
    )
    assert check_layout.check(repo) == []


def test_release_major_from_zero(repo: Path) -> None:
    result = release.release(repo, "protocols", "major", DATE)
    assert result.version == "1.0.0"
    text = (repo / "packages/lego-tokenize/pyproject.toml").read_text()
    assert '"lego-protocols>=0.1,<2"' in text
    assert check_layout.check(repo) == []


def test_dependent_that_admits_new_version_is_untouched(repo: Path) -> None:
    before = snapshot(repo)
    result = release.release(repo, "protocols", "patch", DATE)
    assert result.version == "0.1.1"
    assert result.widened == []
    assert changed_files(before, repo) == [
        "packages/lego-protocols/CHANGELOG.md",
        "packages/lego-protocols/src/lego/protocols/__about__.py",
    ]


def test_only_dependents_with_narrow_ranges_are_widened(repo: Path) -> None:
    pyproject = repo / "packages/lego-tokenize/pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("<0.2", "<2"))
    before = snapshot(repo)
    result = release.release(repo, "protocols", "minor", DATE)
    assert result.widened == ["lego-layers"]
    changed = changed_files(before, repo)
    assert not [path for path in changed if "lego-tokenize" in path]
    assert "packages/lego-layers/pyproject.toml" in changed


def test_first_release_keeps_the_in_tree_version(repo: Path) -> None:
    changelog = repo / "packages/lego-protocols/CHANGELOG.md"
    text = changelog.read_text()
    changelog.write_text(text[: text.index("## [0.1.0]")])  # never released
    about = repo / "packages/lego-protocols/src/lego/protocols/__about__.py"
    before = about.read_text()
    result = release.release(repo, "lego-protocols", "first", DATE)
    assert (result.old_version, result.version, result.tag) == (
        "0.1.0",
        "0.1.0",
        "lego-protocols-v0.1.0",
    )
    assert result.widened == []
    assert about.read_text() == before
    released = changelog.read_text()
    assert f"## [0.1.0] - {DATE}" in released
    assert released.index("## [Unreleased]") < released.index("## [0.1.0]")


def test_first_release_refuses_a_released_version(repo: Path) -> None:
    before = snapshot(repo)
    with pytest.raises(ReleaseError, match=r"already in CHANGELOG\.md"):
        release.release(repo, "protocols", "first", DATE)
    assert snapshot(repo) == before


# --- errors -------------------------------------------------------------------------------


def test_empty_unreleased_is_an_error(repo: Path) -> None:
    changelog = repo / "packages/lego-protocols/CHANGELOG.md"
    changelog.write_text(
        changelog.read_text().replace("### Added\n- Something new in lego-protocols.\n\n", "")
    )
    before = snapshot(repo)
    with pytest.raises(ReleaseError, match="nothing to release"):
        release.release(repo, "protocols", "minor", DATE)
    assert snapshot(repo) == before  # nothing written


def test_unknown_brick_is_an_error(repo: Path) -> None:
    with pytest.raises(bricks.BrickError, match="unknown brick 'nope'"):
        release.release(repo, "nope", "minor", DATE)


@pytest.mark.parametrize("date", ["2025-2-3", "03.02.2025", "2025-02-30", "today"])
def test_bad_date_is_an_error(repo: Path, date: str) -> None:
    with pytest.raises(ReleaseError, match="is not YYYY-MM-DD"):
        release.release(repo, "protocols", "minor", date)


# --- command line -------------------------------------------------------------------------


def test_main_prints_changed_files_then_tag(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert release.main(["protocols", "patch", "--root", str(repo), "--date", DATE]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "packages/lego-protocols/src/lego/protocols/__about__.py",
        "packages/lego-protocols/CHANGELOG.md",
        "lego-protocols-v0.1.1",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope", "minor"], "unknown brick 'nope'"),
        (["protocols", "minor", "--date", "soon"], "is not YYYY-MM-DD"),
    ],
)
def test_main_errors_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert release.main([*argv, "--root", str(repo)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("release: error: ")
    assert message in captured.err
    assert len(captured.err.splitlines()) == 1


def test_script_reports_errors_without_traceback(repo: Path) -> None:
    changelog = repo / "packages/lego-tokenize/CHANGELOG.md"
    changelog.write_text("# Changelog\n\n## [Unreleased]\n")
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "release.py"), "tokenize", "minor", "--root", str(repo)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "nothing to release" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
