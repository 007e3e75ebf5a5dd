"""The decode kernels' build: ``skinny.c`` as a [`NativeSpec`][lego.protocols.NativeSpec].

Compiling, caching and loading are [`lego.protocols.native`][lego.protocols.native]'s, the
one mechanism every brick with a C kernel uses (lego-peft's NF4 kernel too):
[`load_native()`][lego.protocols.load_native] checks the CPU (x86-64 under Linux with
``avx512f``, ``avx512bw``, ``avx512vl`` and ``fma``) and the C compiler (``$CC``, else
``cc``, ``gcc`` or ``clang``), compiles ``skinny.c`` with OpenMP into
[`kernel_cache_dir()`][lego.protocols.kernel_cache_dir] as ``skinny-<hash>.so`` (the hash
taken over the source, the compiler's ``--version`` and the flags), loads it only after
[`lego.protocols.native_cache`][lego.protocols.native_cache] verified it, and says on
stderr (``lego-generate: ...``) when the kernels are built, rebuilt (and why), refused or
fail to build or load.

This module adds what is lego-generate's own: the three kernels' signatures, and
[`NativeStatus`][lego.generate.native.NativeStatus], whose ``bf16_dot`` says whether this
CPU has AVX512-BF16 (``avx512_bf16``), which the bf16 ``(N, K)`` kernel uses.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lego.protocols import NativeSpec, kernel_cache_dir, load_native

__all__ = ["NativeStatus", "kernel_cache_dir", "native_status"]

_BF16_DOT_FLAG = "avx512_bf16"
_KERNELS = ("skinny_rows", "skinny_cols", "skinny_rows_bf16dot")
_ARGTYPES = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2

# skinny.c for load_native(): its kernels, the CPU they need, its flags, and the words of
# its stderr lines (which lego-generate's tests and fault tests check).
_SPEC = NativeSpec(
    name="skinny",
    source=Path(__file__).with_name("skinny.c"),
    owner="lego-generate",
    what="the native CPU decode kernels",
    fallback="decoding uses PyTorch's kernels",
    skip_hint="native_kernels=False skips them",
    functions=dict.fromkeys(_KERNELS, _ARGTYPES),
    cpu_flags=("avx512f", "avx512bw", "avx512vl", "fma"),
    compile_flags=("-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp"),
)
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


@functools.cache
def _load() -> tuple[NativeStatus, Mapping[str, Kernel]]:
    """The status and kernels of this process (the kernel calls look them up every time)."""
    loaded = load_native(_SPEC)
    status = NativeStatus(
        loaded.available,
        loaded.reason,
        loaded.library,
        bf16_dot=loaded.available and _BF16_DOT_FLAG in loaded.cpu_flags,
    )
    return status, loaded.functions


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


def loaded_kernels() -> tuple[NativeStatus, Mapping[str, Kernel]]:
    """The status and, when available, the loaded kernels by name (built on the first call)."""
    return _load()
