"""Building the decode kernels: skinny.c through lego.protocols' load_native, in its words.

The mechanism itself (the verified cache, the compiler, concurrent builders, damaged and
unsafe caches) is tested with a tiny C source in lego-protocols' tests/test_native.py; here
is what is lego-generate's: its kernels, the CPU they need, and the lines on stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import lego.protocols
from lego.generate.native import build, kernel_cache_dir, native_status, prepare_skinny
from lego.protocols import CompatibilityError
from lego.protocols import native as protocols_native


@pytest.fixture
def fresh_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty kernel cache and no memory of an earlier load; the session's restored after."""
    cache = tmp_path / "kernels"
    monkeypatch.setenv("LEGO_KERNELS_HOME", str(cache))
    monkeypatch.setattr(protocols_native, "_loaded", {})
    build._load.cache_clear()
    yield cache
    monkeypatch.undo()
    build._load.cache_clear()


@pytest.fixture
def avx512_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    """An x86-64 Linux CPU with the flags the kernels need, as far as the build knows."""
    monkeypatch.setattr(protocols_native.platform, "system", lambda: "Linux")
    monkeypatch.setattr(protocols_native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(protocols_native, "cpu_flags", lambda: frozenset(build._SPEC.cpu_flags))


def test_the_kernels_are_built_once_into_the_cache_and_announced(
    fresh_load: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    status = native_status()
    if not status.available:
        pytest.skip(f"no native kernels here: {status.reason}")
    first = capfd.readouterr().err
    assert first.startswith("lego-generate: compiling the native CPU decode kernels with ")
    assert f"into {fresh_load} (once per machine and compiler, a few seconds; " in first
    assert first.endswith("native_kernels=False skips them)\n")
    assert status.library is not None
    assert status.library.parent == fresh_load
    assert status.library.name.startswith("skinny-")
    assert status.bf16_dot == ("avx512_bf16" in lego.protocols.cpu_flags())
    built = status.library.stat().st_mtime_ns
    names = sorted(p.name for p in fresh_load.iterdir())
    assert names == [status.library.name, status.library.name + ".sha256"]  # no temp files
    assert native_status() is status  # once per process
    protocols_native._loaded.clear()
    build._load.cache_clear()
    again = native_status()
    assert again == status
    assert again.library is not None
    assert again.library.stat().st_mtime_ns == built  # reused, not rebuilt
    assert capfd.readouterr().err == ""  # nothing to say when nothing is built


def test_the_cache_folder_is_lego_protocols() -> None:
    assert kernel_cache_dir is lego.protocols.kernel_cache_dir  # one cache for every brick


@pytest.mark.usefixtures("avx512_linux")
def test_no_compiler_means_unavailable_with_a_reason(
    fresh_load: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-compilers-here"))
    status = native_status()
    assert not status.available
    assert not status.bf16_dot
    assert status.reason == "no C compiler found (set $CC or install gcc)"
    with pytest.raises(CompatibilityError, match="unavailable: no C compiler"):
        prepare_skinny(torch.randn(2, 2))


@pytest.mark.usefixtures("avx512_linux")
def test_a_failing_compiler_means_unavailable_with_its_message(
    fresh_load: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'no such luck' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    status = native_status()
    assert not status.available
    assert "could not build" in status.reason
    assert "no such luck" in status.reason
    assert not [p for p in fresh_load.iterdir() if p.suffix == ".so"]  # nothing half-written
    said = capfd.readouterr().err.splitlines()
    assert len(said) == 2, said  # the build announced, then its failure: once per process
    assert said[0].startswith("lego-generate: compiling the native CPU decode kernels")
    assert said[1].startswith(
        "lego-generate: could not build the native CPU decode kernels "
        f"({broken} failed: no such luck); decoding uses PyTorch's kernels"
    )
    assert native_status() is status
    assert capfd.readouterr().err == ""


def test_a_cpu_without_avx512_means_unavailable(
    fresh_load: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(protocols_native.platform, "system", lambda: "Linux")
    monkeypatch.setattr(protocols_native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(protocols_native, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma"}))
    status = native_status()
    assert not status.available
    assert status.reason == "this CPU lacks avx512f, avx512bw, avx512vl"
    assert capfd.readouterr().err == ""  # nothing is built, nothing is said
