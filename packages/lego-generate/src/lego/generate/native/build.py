"""Building and loading the kernels: CPU check, C compiler, cache folder, ``ctypes``.

[`native_status()`][lego.generate.native.native_status] runs the steps below once per
process and says which one failed:

1. the CPU: x86-64 under Linux with ``avx512f``, ``avx512bw``, ``avx512vl`` and ``fma``
   (read from ``/proc/cpuinfo``; ``avx512_bf16`` is used where present);
2. a C compiler: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the ``PATH``;
3. the build: ``skinny.c`` compiled with OpenMP into
   [`kernel_cache_dir()`][lego.generate.native.kernel_cache_dir] as
   ``skinny-<hash>.so``, the hash taken over the source, the compiler's ``--version`` and
   the flags, so a changed source or compiler builds anew and an unchanged one never
   rebuilds. The library is written under a temporary name and renamed (concurrent
   builders write the same bytes). A line on stderr says when a build starts and when it
   fails;
4. loading: ``ctypes.CDLL`` on the built file, and the three kernels' signatures.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NativeStatus", "kernel_cache_dir", "native_status"]

_SOURCE = Path(__file__).with_name("skinny.c")
_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp")
_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "fma")
_BF16_DOT_FLAG = "avx512_bf16"
_KERNELS = ("skinny_rows", "skinny_cols", "skinny_rows_bf16dot")
_ARGTYPES = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2
_PREFIX = "lego-generate:"

Kernel = Callable[..., int]
"""A loaded C kernel: ``(x, w, b, y, rows, n, k, dtype_code, threads) -> 0 | 1``."""


@dataclass(frozen=True)
class NativeStatus:
    """Whether the native kernels can run here, and why not.

    Attributes:
        available: The kernels are compiled and loaded, and this CPU runs them.
        reason: Why they are unavailable ("" when available).
        library: The compiled shared library, when available.
        bf16_dot: The CPU has AVX512-BF16: bf16 weights stored ``(N, K)`` are multiplied
            with its dot-product instruction (products exact, sums in fp32, values below
            fp32's normal range taken as zero) instead of being widened to fp32 first.
    """

    available: bool
    reason: str = ""
    library: Path | None = None
    bf16_dot: bool = False


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept.

    Returns:
        ``$LEGO_KERNELS_HOME``, else ``$XDG_CACHE_HOME/lego/kernels``, else
        ``~/.cache/lego/kernels``.
    """
    home = os.environ.get("LEGO_KERNELS_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lego" / "kernels"


def _cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _compiler() -> str | None:
    """The C compiler to use: ``$CC`` or the first of cc, gcc, clang on the PATH."""
    explicit = os.environ.get("CC")
    if explicit:
        return shutil.which(explicit) or explicit
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _say(message: str) -> None:
    """One line on stderr (the build is rare and slow enough to be worth announcing)."""
    print(f"{_PREFIX} {message}", file=sys.stderr, flush=True)


def _build(compiler: str) -> Path:
    """Compile ``skinny.c`` into the cache, unless this source, compiler and flags are there.

    Returns:
        The shared library.

    Raises:
        OSError: The compiler failed or the cache folder is not writable.
    """
    source = _SOURCE.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    key = hashlib.sha256(source + version.encode() + " ".join(_FLAGS).encode()).hexdigest()
    target = kernel_cache_dir() / f"skinny-{key[:16]}.so"
    if target.exists():
        return target
    _say(
        f"compiling the native CPU decode kernels with {compiler} into {target.parent} "
        "(once per machine and compiler, a few seconds; native_kernels=False skips them)"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".skinny-", suffix=".so")
    os.close(fd)
    try:
        result = subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", tmp],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise OSError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: concurrent builders write the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _unavailable(reason: str) -> tuple[NativeStatus, dict[str, Kernel]]:
    return NativeStatus(False, reason), {}


@functools.cache
def _load() -> tuple[NativeStatus, dict[str, Kernel]]:
    """Check the CPU, build and load the library, once per process."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return _unavailable("the kernels need an x86-64 CPU under Linux")
    flags = _cpu_flags()
    missing = [flag for flag in _CPU_FLAGS if flag not in flags]
    if missing:
        return _unavailable(f"this CPU lacks {', '.join(missing)}")
    compiler = _compiler()
    if compiler is None:
        return _unavailable("no C compiler found (set $CC or install gcc)")
    try:
        path = _build(compiler)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _say(
            f"could not build the native CPU decode kernels ({first_line}); decoding uses "
            "PyTorch's kernels (lego.generate.native.native_status() has the whole message)"
        )
        return _unavailable(f"could not build the kernels: {error}")
    kernels: dict[str, Kernel] = {}
    for name in _KERNELS:
        function = getattr(library, name)
        function.argtypes = _ARGTYPES
        function.restype = ctypes.c_int
        kernels[name] = function
    return NativeStatus(True, library=path, bf16_dot=_BF16_DOT_FLAG in flags), kernels


def native_status() -> NativeStatus:
    """Whether the native kernels run on this machine (built on the first call, if need be).

    The first call in a process checks the CPU and the compiler and, when this machine has
    no build of the current source yet, compiles it (a line on stderr says so); later calls
    return the same answer at once.

    Returns:
        A [`NativeStatus`][lego.generate.native.NativeStatus]; ``reason`` says what is
        missing when they do not run.
    """
    return _load()[0]


def loaded_kernels() -> tuple[NativeStatus, dict[str, Kernel]]:
    """The status and, when available, the loaded kernels by name (built on the first call)."""
    return _load()
