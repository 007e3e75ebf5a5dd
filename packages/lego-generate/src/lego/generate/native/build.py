"""Building and loading the kernels: CPU check, C compiler, verified cache, ``ctypes``.

[`native_status()`][lego.generate.native.native_status] runs the steps below once per
process and says which one failed:

1. the CPU: x86-64 under Linux with ``avx512f``, ``avx512bw``, ``avx512vl`` and ``fma``
   (read from ``/proc/cpuinfo``; ``avx512_bf16`` is used where present);
2. a C compiler: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the ``PATH``;
3. the cache: ``skinny.c`` compiled with OpenMP into
   [`kernel_cache_dir()`][lego.generate.native.kernel_cache_dir] as ``skinny-<hash>.so``,
   the hash taken over the source, the compiler's ``--version`` and the flags, so a changed
   source or compiler builds anew and an unchanged one never rebuilds. The library is
   loaded only after [`lego.generate.native.cache`][lego.generate.native.cache] verified it
   (the folder and file are this user's and writable by nobody else, the SHA-256 recorded
   beside it matches); a missing or bad one is built first. A line on stderr says when the
   kernels are built, rebuilt (and why), refused or fail to build;
4. loading: ``ctypes.CDLL`` on the verified file, and the three kernels' signatures.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lego.generate.native.cache import MISSING, verified_library
from lego.protocols import LegoError

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


def _library(compiler: str) -> Path:
    """Where the build of this source with this compiler and these flags is cached."""
    source = _SOURCE.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    key = hashlib.sha256(source + version.encode() + " ".join(_FLAGS).encode()).hexdigest()
    return kernel_cache_dir() / f"skinny-{key[:16]}.so"


def _compile(compiler: str, output: Path) -> None:
    """Compile ``skinny.c`` into ``output``.

    Raises:
        OSError: The compiler failed.
    """
    result = subprocess.run(
        [compiler, *_FLAGS, str(_SOURCE), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise OSError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")


def _build(compiler: str) -> Path:
    """The verified library of the cache, compiled (or recompiled) first when need be.

    Returns:
        The shared library.

    Raises:
        OSError: The compiler failed.
        ConfigError: The cache folder is not safe to load code from.
    """
    library = _library(compiler)

    def announce(problem: str) -> None:
        if problem == MISSING:
            _say(
                f"compiling the native CPU decode kernels with {compiler} into "
                f"{library.parent} (once per machine and compiler, a few seconds; "
                "native_kernels=False skips them)"
            )
        else:
            _say(
                f"rebuilding the native CPU decode kernels: the cached {library} {problem}; "
                "it is not loaded"
            )

    return verified_library(
        library, build=lambda output: _compile(compiler, output), announce=announce
    )


def _unavailable(reason: str) -> tuple[NativeStatus, dict[str, Kernel]]:
    return NativeStatus(False, reason), {}


def _failed(step: str, error: BaseException) -> tuple[NativeStatus, dict[str, Kernel]]:
    """Say that the build or the load failed.

    The error's first line goes to stderr, all of it into the status's reason.
    """
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    _say(
        f"could not {step} the native CPU decode kernels ({first_line}); decoding uses "
        "PyTorch's kernels (lego.generate.native.native_status() has the whole message)"
    )
    return _unavailable(f"could not {step} the kernels: {error}")


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
    except LegoError as error:  # a cache folder others can write: never load from it
        _say(
            f"not loading the native CPU decode kernels: {error.message} ({error.path}); "
            f"decoding uses PyTorch's kernels; to use them: {error.hint}"
        )
        return _unavailable(f"{error.message} ({error.path}); {error.hint}")
    except (OSError, subprocess.SubprocessError) as error:
        return _failed("build", error)
    try:
        library = ctypes.CDLL(str(path))
    except OSError as error:
        return _failed("load", error)
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
