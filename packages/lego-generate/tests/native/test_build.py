"""Building the native kernels: once into the cache, announced on stderr, clear refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lego.generate.native import build, kernel_cache_dir, native_status, prepare_skinny
from lego.protocols import CompatibilityError


@pytest.fixture
def fresh_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty kernel cache and no memory of an earlier load; the session's restored after."""
    cache = tmp_path / "kernels"
    monkeypatch.setenv("LEGO_KERNELS_HOME", str(cache))
    build._load.cache_clear()
    yield cache
    monkeypatch.undo()
    build._load.cache_clear()


def test_the_library_is_built_once_into_the_cache_and_announced(
    fresh_load: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    status = native_status()
    if not status.available:
        pytest.skip(f"no native kernels here: {status.reason}")
    first = capfd.readouterr().err
    assert "lego-generate: compiling the native CPU decode kernels" in first
    assert str(fresh_load) in first
    assert status.library is not None
    assert status.library.parent == fresh_load
    built = status.library.stat().st_mtime_ns
    names = sorted(p.name for p in fresh_load.iterdir())
    assert names == [status.library.name, status.library.name + ".sha256"]  # no temp files
    build._load.cache_clear()
    again = native_status()
    assert again.library == status.library
    assert again.library.stat().st_mtime_ns == built  # reused, not rebuilt
    assert capfd.readouterr().err == ""  # nothing to say when nothing is built


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEGO_KERNELS_HOME", str(tmp_path / "here"))
    assert kernel_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("LEGO_KERNELS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache_dir() == tmp_path / "xdg" / "lego" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kernel_cache_dir() == Path.home() / ".cache" / "lego" / "kernels"


def test_no_compiler_means_unavailable_with_a_reason(
    fresh_load: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "_cpu_flags", lambda: set(build._CPU_FLAGS))
    monkeypatch.setattr(build, "_compiler", lambda: None)
    status = native_status()
    assert not status.available
    assert "compiler" in status.reason
    with pytest.raises(CompatibilityError, match="unavailable: no C compiler"):
        prepare_skinny(torch.randn(2, 2))


def test_a_failing_compiler_means_unavailable_with_its_message(
    fresh_load: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'no such luck' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(build, "_cpu_flags", lambda: set(build._CPU_FLAGS))
    monkeypatch.setenv("CC", str(broken))
    status = native_status()
    assert not status.available
    assert "could not build" in status.reason
    assert "no such luck" in status.reason
    assert not [p for p in fresh_load.iterdir() if p.suffix == ".so"]  # nothing half-written
    said = capfd.readouterr().err.splitlines()
    assert len(said) == 2, said  # the build announced, then its failure: once per process
    assert said[0].startswith("lego-generate: compiling the native CPU decode kernels")
    assert said[1].startswith("lego-generate: could not build the native CPU decode kernels")
    assert "no such luck" in said[1]
    assert "PyTorch's kernels" in said[1]
    assert native_status() is status
    assert capfd.readouterr().err == ""


def test_a_cpu_without_avx512_means_unavailable(
    fresh_load: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(build, "_cpu_flags", lambda: {"sse2", "avx2", "fma"})
    status = native_status()
    assert not status.available
    assert "avx512f" in status.reason
    assert capfd.readouterr().err == ""  # nothing is built, nothing is said
