"""Native CPU kernels for decode steps: skinny matrix products, compiled on first use.

A decode step multiplies a few rows (one per sequence) by every weight matrix of the model,
so at small batch it is bound by how fast the weights stream in from memory. PyTorch's CPU
``F.linear`` does not reach that speed at these shapes: in bf16 it reads weights at about
half the memory bandwidth, and in fp32 with a handful of rows (batch 8) MKL's GEMM reads
them at a third of it. The kernels in ``skinny.c`` (beside this file) do one thing: compute
``y = x @ W.T + b`` for an ``x`` of a few rows, reading each weight byte once, in address
order, for all rows at once. They take the weight as ``nn.Linear`` stores it, ``(N, K)``,
or as the transposed view GPT-2's ``Conv1D`` checkpoints load into, so no weight is copied.

The C source is compiled once per machine with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``) with OpenMP, into a cache folder (``$LEGO_KERNELS_HOME``, else
``$XDG_CACHE_HOME/lego/kernels``, else ``~/.cache/lego/kernels``), named by a hash of the
source, the compiler and the flags, written atomically, and loaded with ``ctypes``. They run
on x86-64 Linux CPUs with AVX-512 (``avx512f``, ``avx512bw``, ``avx512vl``, ``fma``), in fp32
and bf16; on CPUs that also have AVX512-BF16 (``avx512_bf16``), bf16 weights stored
``(N, K)`` go through its dot-product instruction, which streams them faster. Where any of
that is missing, [`native_status()`][lego.generate.native.native_status] says why and
generation uses PyTorch's kernels; nothing else changes.

Importing this module defines the PyTorch operator ``torch.ops.lego.skinny_linear``
([`skinny_linear()`][lego.generate.native.skinny_linear]), so that ``torch.compile`` keeps a
kernel call as one node of its graph and fuses everything around it.

Results equal ``F.linear`` up to the order of fp32 additions (bf16 outputs are rounded to
nearest even, like torch's).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lego.protocols import CompatibilityError, DataError

__all__ = ["MAX_ROWS", "NativeStatus", "native_status", "prepare_skinny", "skinny_linear"]

MAX_ROWS = 8
"""Rows of ``x`` up to which the kernels beat PyTorch's (a decode step of batch <= 8)."""

_SOURCE = Path(__file__).with_name("skinny.c")
_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp")
_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "fma")
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}
_BF16_DOT_FLAG = "avx512_bf16"
_KERNELS = ("skinny_rows", "skinny_cols", "skinny_rows_bf16dot")
_ARGTYPES = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int] * 2

_Kernel = Callable[..., int]


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


def _build(compiler: str) -> Path:
    """Compile ``skinny.c`` into the cache (once per source, compiler and flags).

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


@functools.cache
def _load() -> tuple[NativeStatus, dict[str, _Kernel]]:
    """Check the CPU, build and load the library, once per process."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return NativeStatus(False, "the kernels need an x86-64 CPU under Linux"), {}
    flags = _cpu_flags()
    missing = [flag for flag in _CPU_FLAGS if flag not in flags]
    if missing:
        return NativeStatus(False, f"this CPU lacks {', '.join(missing)}"), {}
    compiler = _compiler()
    if compiler is None:
        return NativeStatus(False, "no C compiler found (set $CC or install gcc)"), {}
    try:
        path = _build(compiler)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        return NativeStatus(False, f"could not build the kernels: {error}"), {}
    kernels: dict[str, _Kernel] = {}
    for name in _KERNELS:
        function = getattr(library, name)
        function.argtypes = _ARGTYPES
        function.restype = ctypes.c_int
        kernels[name] = function
    return NativeStatus(True, library=path, bf16_dot=_BF16_DOT_FLAG in flags), kernels


def native_status() -> NativeStatus:
    """Whether the native kernels run on this machine (they are built on the first call).

    Returns:
        A [`NativeStatus`][lego.generate.native.NativeStatus]; ``reason`` says what is
        missing when they do not.
    """
    return _load()[0]


def _check_weight(weight: Tensor, bias: Tensor | None) -> bool:
    """Validate a weight (and bias) for the kernels; return whether it is stored transposed.

    Raises:
        CompatibilityError: Not a CPU fp32/bf16 matrix stored as (N, K) or as the
            transpose of a contiguous (K, N), or a bias that does not fit.
    """
    if weight.device.type != "cpu" or weight.dtype not in _DTYPE_CODES or weight.ndim != 2:
        raise CompatibilityError(
            f"the native kernels take a 2-D fp32 or bf16 CPU weight, got {weight.ndim}-D "
            f"{weight.dtype} on {weight.device}",
            tensor="weight",
            hint="use torch.nn.functional.linear for other weights",
        )
    if weight.is_contiguous():
        transposed = False
    elif weight.t().is_contiguous():
        transposed = True
    else:
        raise CompatibilityError(
            f"the weight's strides {weight.stride()} are neither (N, K) nor its transpose",
            tensor="weight",
            hint="pass weight.contiguous()",
        )
    if bias is not None and (
        bias.shape != (weight.shape[0],)
        or bias.dtype != weight.dtype
        or bias.device != weight.device
        or not bias.is_contiguous()
    ):
        raise CompatibilityError(
            f"the bias must be a contiguous ({weight.shape[0]},) {weight.dtype} CPU tensor, got "
            f"{tuple(bias.shape)} {bias.dtype} on {bias.device}",
            tensor="bias",
        )
    return transposed


def _kernel_for(weight: Tensor, bias: Tensor | None) -> tuple[_Kernel, int]:
    """The kernel that takes this weight, and its dtype code.

    Raises:
        CompatibilityError: The kernels are unavailable here, or the weight or bias does
            not fit them.
    """
    status, kernels = _load()
    if not status.available:
        raise CompatibilityError(
            f"the native kernels are unavailable: {status.reason}",
            hint="use torch.nn.functional.linear",
        )
    if _check_weight(weight, bias):
        name = "skinny_cols"
    elif weight.dtype == torch.bfloat16 and status.bf16_dot:
        name = "skinny_rows_bf16dot"
    else:
        name = "skinny_rows"
    return kernels[name], _DTYPE_CODES[weight.dtype]


def _run(kernel: _Kernel, code: int, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` on ``kernel``, for a weight ``_kernel_for`` accepted."""
    n, k = weight.shape
    if x.dtype != weight.dtype or not x.is_cpu or x.ndim == 0 or x.shape[-1] != k:
        raise DataError(
            f"the input must be (..., {k}) {weight.dtype} on the CPU, got {tuple(x.shape)} "
            f"{x.dtype} on {x.device}",
            tensor="x",
        )
    x = x.contiguous()
    out = x.new_empty((*x.shape[:-1], n))  # (..., N)
    rows = math.prod(x.shape[:-1])
    if rows and n:
        failed = kernel(
            x.data_ptr(),
            weight.data_ptr(),
            None if bias is None else bias.data_ptr(),
            out.data_ptr(),
            rows,
            n,
            k,
            code,
            torch.get_num_threads(),
        )
        if failed:
            raise MemoryError("the native kernels could not allocate their scratch memory")
    return out


def prepare_skinny(weight: Tensor, bias: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Check a weight once and return ``x -> x @ weight.T + bias`` on the native kernels.

    The returned function checks only ``x``; it keeps references to ``weight`` and ``bias``
    and reads their current values on every call (it has no autograd).

    Args:
        weight: ``(N, K)``, fp32 or bf16, on the CPU, contiguous or the transpose of a
            contiguous ``(K, N)`` tensor.
        bias: ``(N,)`` of the same dtype, or None.

    Returns:
        A function taking ``x`` of shape ``(..., K)`` (same dtype, on the CPU) and returning
        ``(..., N)``.

    Raises:
        CompatibilityError: The kernels are unavailable here (the message says why), or the
            weight or bias does not fit them.
    """
    kernel, code = _kernel_for(weight, bias)
    return functools.partial(_run, kernel, code, weight=weight, bias=bias)


torch.library.define(
    "lego::skinny_linear", "(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor"
)


def _skinny_linear_cpu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The operator on CPU tensors: check the weight, run its kernel."""
    kernel, code = _kernel_for(weight, bias)
    return _run(kernel, code, x, weight, bias)


def _skinny_linear_shape(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The operator's output for tracing (shape and dtype only): ``(..., N)``."""
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


torch.library.impl("lego::skinny_linear", "cpu", _skinny_linear_cpu)
torch.library.register_fake("lego::skinny_linear", _skinny_linear_shape)


def skinny_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` on the native kernels (``F.linear``'s arguments).

    The PyTorch operator ``torch.ops.lego.skinny_linear`` (defined on import), which
    ``torch.compile`` keeps as one node of its graph: the compiled decode step calls the
    kernels through it. Each call checks the weight;
    [`prepare_skinny()`][lego.generate.native.prepare_skinny] checks it once. Meant for few
    rows (up to [`MAX_ROWS`][lego.generate.native.MAX_ROWS]); more rows work but grow slower
    than PyTorch's GEMM. It has no autograd.

    Args:
        x: ``(..., K)``, fp32 or bf16, on the CPU.
        weight: ``(N, K)`` of the same dtype, contiguous or a transposed contiguous tensor.
        bias: ``(N,)`` or None.

    Returns:
        ``(..., N)`` in the input's dtype.

    Raises:
        CompatibilityError: The kernels are unavailable here, or the weight does not fit.
        DataError: ``x`` does not fit the weight.
    """
    out: Tensor = torch.ops.lego.skinny_linear.default(x, weight, bias)
    return out
