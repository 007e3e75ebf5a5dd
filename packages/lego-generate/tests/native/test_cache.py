"""The kernel cache: verified before loading, bad entries rebuilt, unsafe folders refused.

A fake build (bytes written by Python) stands in for the compiler, so these run anywhere.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lego.generate.native import cache
from lego.protocols import ConfigError

LIBRARY = b"\x7fELF a pretend shared library " * 64


class Builds:
    """A build callback that counts its calls, and an announce callback that keeps its words."""

    def __init__(self, data: bytes = LIBRARY, delay: float = 0.0) -> None:
        self.data = data
        self.delay = delay
        self.calls = 0
        self.said: list[str] = []
        self._lock = threading.Lock()

    def build(self, output: Path) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        output.write_bytes(self.data)

    def announce(self, problem: str) -> None:
        self.said.append(problem)

    def get(self, library: Path) -> Path:
        return cache.verified_library(library, build=self.build, announce=self.announce)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "kernels"


@pytest.fixture
def library(folder: Path) -> Path:
    return folder / "skinny-0123456789abcdef.so"


@pytest.fixture
def built(library: Path) -> Path:
    """A library built once into the cache."""
    Builds().get(library)
    return library


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _record(library: Path) -> Path:
    return library.with_name(library.name + cache.RECORD_SUFFIX)


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_a_build_writes_the_library_and_its_record_with_the_umask(
    library: Path, umask: int
) -> None:
    builds = Builds()
    assert builds.get(library) == library
    assert builds.said == [cache.MISSING]
    assert library.read_bytes() == LIBRARY
    digest = hashlib.sha256(LIBRARY).hexdigest()
    assert _record(library).read_text() == f"{digest}  {library.name}\n"  # sha256sum -c reads it
    assert stat.S_IMODE(library.stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE(_record(library).stat().st_mode) == 0o644 & ~umask
    assert _listing(library.parent) == [library.name, _record(library).name]  # no temporaries


def test_a_verified_library_is_used_as_it_is(built: Path) -> None:
    before = built.stat().st_mtime_ns
    builds = Builds()
    assert builds.get(built) == built
    assert builds.calls == 0
    assert builds.said == []
    assert built.stat().st_mtime_ns == before


def _truncate(library: Path) -> None:
    library.write_bytes(LIBRARY[:100])


def _empty(library: Path) -> None:
    library.write_bytes(b"")


def _plant(library: Path) -> None:
    library.write_bytes(b"\x7fELF someone else's code " * 64)


def _no_record(library: Path) -> None:
    _record(library).unlink()


def _damaged_record(library: Path) -> None:
    _record(library).write_bytes(b"\xff\xfe not a record\n")


def _record_of_another_file(library: Path) -> None:
    digest = hashlib.sha256(LIBRARY).hexdigest()
    _record(library).write_text(f"{digest}  skinny-ffffffffffffffff.so\n")


def _group_writable(library: Path) -> None:
    library.chmod(0o775)


def _world_writable_record(library: Path) -> None:
    _record(library).chmod(0o666)


def _a_link(library: Path) -> None:
    target = library.with_name("elsewhere.so")
    target.write_bytes(LIBRARY)
    library.unlink()
    library.symlink_to(target)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_truncate, "does not match its recorded SHA-256"),
        (_empty, "is empty"),
        (_plant, "does not match its recorded SHA-256"),
        (_no_record, "has no SHA-256 record"),
        (_damaged_record, "has a damaged record"),
        (_record_of_another_file, "has a damaged record"),
        (_group_writable, "is writable by group or others (mode 0o775)"),
        (_world_writable_record, "has a record that is writable by group or others"),
        (_a_link, "is not a regular file"),
    ],
)
def test_a_bad_library_is_never_returned_but_rebuilt(
    built: Path, damage: object, said: str
) -> None:
    assert callable(damage)
    damage(built)
    builds = Builds()
    assert builds.get(built) == built
    assert builds.calls == 1
    assert len(builds.said) == 1
    assert said in builds.said[0]
    assert not built.is_symlink()
    assert built.read_bytes() == LIBRARY
    assert cache.library_problem(built) is None


def test_a_folder_others_can_write_is_refused_and_left_alone(built: Path) -> None:
    folder = built.parent
    folder.chmod(0o777)
    _plant(built)
    before = {name: (folder / name).read_bytes() for name in _listing(folder)}
    builds = Builds()
    with pytest.raises(ConfigError, match=r"writable by group or others \(mode 0o777\)") as info:
        builds.get(built)
    assert "chmod go-w" in str(info.value)
    assert builds.calls == 0
    assert {name: (folder / name).read_bytes() for name in _listing(folder)} == before


def test_a_cache_that_is_a_file_is_refused(folder: Path, library: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    with pytest.raises(ConfigError, match="not a folder"):
        Builds().get(library)


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a file to another user needs root (chown)",
)


@needs_root
def test_a_folder_of_another_user_is_refused(built: Path) -> None:
    os.chown(built.parent, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        Builds().get(built)


@needs_root
def test_a_library_of_another_user_is_rebuilt(built: Path) -> None:
    os.chown(built, 65534, 65534)
    builds = Builds()
    builds.get(built)
    assert "belongs to another user" in builds.said[0]
    assert built.stat().st_uid == os.geteuid()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def _host() -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())


def test_temporaries_of_dead_builders_are_removed_before_a_build(library: Path) -> None:
    folder = library.parent
    folder.mkdir(parents=True)
    dead = folder / f".{library.name}.tmp-{_host()}-{_dead_pid()}-0badc0de"
    alive = folder / f".{library.name}.tmp-{_host()}-{os.getpid()}-0badc0de"
    legacy_old = folder / ".skinny-abcd1234.so"
    legacy_new = folder / ".skinny-efgh5678.so"
    for leftover in (dead, alive, legacy_old, legacy_new):
        leftover.write_bytes(b"half a library")
    an_hour_ago = time.time() - 7200
    os.utime(legacy_old, (an_hour_ago, an_hour_ago))
    Builds().get(library)
    assert not dead.exists()
    assert not legacy_old.exists()
    assert alive.exists()  # a live builder's work is left alone
    assert legacy_new.exists()  # could still be an older version's build in progress


def test_temporaries_of_dead_builders_are_removed_from_a_verified_cache(built: Path) -> None:
    dead = built.parent / f".{built.name}.tmp-{_host()}-{_dead_pid()}-0badc0de"
    dead.write_bytes(b"half a library")
    builds = Builds()
    assert builds.get(built) == built
    assert builds.calls == 0  # nothing rebuilt
    assert not dead.exists()


def test_a_failed_build_leaves_nothing_behind(library: Path) -> None:
    def failing(output: Path) -> None:
        output.write_bytes(b"half")
        raise OSError("cc failed: no such luck")

    with pytest.raises(OSError, match="no such luck"):
        cache.verified_library(library, build=failing, announce=lambda problem: None)
    assert _listing(library.parent) == []


def test_an_empty_build_is_an_error(library: Path) -> None:
    with pytest.raises(OSError, match="empty library"):
        Builds(data=b"").get(library)
    assert _listing(library.parent) == []


def test_concurrent_builders_build_once(library: Path) -> None:
    builds = Builds(delay=0.3)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(builds.get(library))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [library, library]
    assert builds.calls == 1  # the second waited for the first, then used its build
    assert _listing(library.parent) == [library.name, _record(library).name]  # lock released
