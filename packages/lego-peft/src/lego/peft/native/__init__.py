"""The native NF4 dequantization kernel: an optional accelerator of lego-peft, in C.

**What.** One C kernel (``nf4.c`` in this folder) that turns packed NF4 codes and their
block scales into float32, bfloat16 or float16 values, reading each code byte once and
writing each value once (AVX-512 permutes as the 16-entry codebook lookup). Its output
equals the PyTorch path of [`NF4Tensor.dequantize()`][lego.peft.NF4Tensor] bit for bit
(the product in float32, rounded once to nearest even), which the tests check.

**Why.** A QLoRA training step dequantizes every NF4 weight twice (forward, and backward
for the input gradient), so dequantization speed is a large part of the step; the PyTorch
path needs three passes over memory, bitsandbytes' CPU kernel one. The measured figures
are in ``benchmarks/results/peft.md``.

**Where it runs.** x86-64 CPUs under Linux with ``avx512f``, ``avx512bw``, ``avx512vl`` and
``f16c``, and a C compiler. It is compiled once per machine and compiler into
the kernel cache that lego-generate's kernels use too (`lego.protocols.load_native`);
elsewhere, or with ``LEGO_PEFT_NATIVE_KERNELS=0`` in the environment, dequantization uses
the PyTorch path: same values, nothing else changes. ``native_status()`` says which.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import torch
from torch import Tensor

from lego.protocols import NativeLibrary, NativeSpec, load_native

__all__ = ["dequantize_native", "native_status", "scales_native"]

_OUT_CODES: Final[dict[torch.dtype, int]] = {
    torch.float32: 0,
    torch.bfloat16: 1,
    torch.float16: 2,
}
_SPEC: Final[NativeSpec] = NativeSpec(
    name="nf4",
    source=Path(__file__).with_name("nf4.c"),
    owner="lego-peft",
    what="the native NF4 dequantization kernel",
    fallback="NF4 weights are dequantized by PyTorch",
    skip_hint="LEGO_PEFT_NATIVE_KERNELS=0 skips it",
    functions={
        "nf4_dequantize": [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int],
        "nf4_scales": [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2,
    },
    cpu_flags=("avx512f", "avx512bw", "avx512vl", "f16c"),
    # one thread (no OpenMP); no fused multiply-adds, so each rounding is bitsandbytes'
    compile_flags=("-O3", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=off"),
)
_OFF: Final[str] = "LEGO_PEFT_NATIVE_KERNELS"


@functools.cache
def native_status() -> NativeLibrary:
    """Whether the native kernel runs here (compiled on the first call, if need be).

    Returns:
        The loaded library; ``available`` is False with a ``reason`` where it cannot run,
        or where ``LEGO_PEFT_NATIVE_KERNELS=0`` turns it off.
    """
    if os.environ.get(_OFF, "").strip() == "0":
        return NativeLibrary(False, reason=f"turned off by {_OFF}=0")
    return load_native(_SPEC)


def dequantize_native(
    packed: Tensor, scales: Tensor, code: Tensor, block_size: int, start: int, out: Tensor
) -> bool:
    """Dequantize values ``start .. start + out.numel()`` with the C kernel, where it runs.

    Args:
        packed: ``(ceil(numel / 2),)`` uint8 codes, two per byte (first value high).
        scales: ``(n_blocks,)`` float32 absmax per block.
        code: ``(16,)`` float32, the NF4 codebook.
        block_size: Values per block, a multiple of 32.
        start: The first value, a multiple of ``block_size``.
        out: ``(m,)`` float32, bfloat16 or float16.

    Returns:
        True when ``out`` was written; False when the kernel does not run here or the
        tensors are not contiguous CPU tensors it takes (the caller uses PyTorch then).
    """
    kind = _OUT_CODES.get(out.dtype)
    tensors = (packed, scales, code, out)
    if (
        kind is None
        or block_size % 32
        or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors)
        or scales.dtype != torch.float32
        or code.dtype != torch.float32
        or packed.dtype != torch.uint8
        or code.numel() != 16
        or start < 0
        or packed.numel() < (start + out.numel() + 1) // 2
        or scales.numel() < -(-(start + out.numel()) // block_size)
    ):
        return False
    status = native_status()
    if not status.available:
        return False
    kernel = status.functions["nf4_dequantize"]
    size = out.itemsize
    pointers = (packed.data_ptr(), scales.data_ptr(), code.data_ptr(), out.data_ptr())

    def part(first: int, count: int) -> int:  # values first .. first + count of out
        p, s, c, o = pointers
        return int(kernel(p, s, c, o + first * size, start + first, count, block_size, kind))

    bounds = _parts(out.numel(), block_size)
    if len(bounds) == 1:
        return part(*bounds[0]) == 0
    # ctypes releases the GIL during the call: the parts run on separate cores (and a fresh
    # output's pages are first touched, and zeroed by the system, on all of them).
    rest = [_pool().submit(part, first, count) for first, count in bounds[1:]]
    failed = part(*bounds[0])
    return failed == 0 and all(future.result() == 0 for future in rest)


_PART_VALUES: Final[int] = 1 << 21
"""Outputs of at least twice this many values are split among ``torch.get_num_threads()``
threads (fewer, larger parts are not worth a thread's start)."""


def _parts(count: int, block_size: int) -> list[tuple[int, int]]:
    """``(first, count)`` pieces of ``count`` values, each starting on a block."""
    n = max(1, min(torch.get_num_threads(), count // _PART_VALUES))
    if n == 1:
        return [(0, count)]
    step = -(-count // n // block_size) * block_size  # values per part, whole blocks
    return [(first, min(step, count - first)) for first in range(0, count, step)]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Threads for the parts of large outputs (created on first use; the caller does one)."""
    return ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="nf4")


def scales_native(
    codes: Tensor, nested_code: Tensor, nested_absmax: Tensor, offset: Tensor, nested_block: int
) -> Tensor | None:
    """Undo double quantization with the C kernel, where it runs.

    Args:
        codes: ``(n_blocks,)`` uint8, each block's absmax code.
        nested_code: ``(256,)`` float32, the dynamic map.
        nested_absmax: ``(ceil(n_blocks / nested_block),)`` float32.
        offset: A one-value float32 tensor, the mean subtracted before quantizing.
        nested_block: Blocks per nested block (256).

    Returns:
        ``(n_blocks,)`` float32 ``nested_code[codes] * nested_absmax[i // nested_block] +
        offset`` (two roundings, as bitsandbytes), or None where the kernel does not run or
        the tensors are not the contiguous CPU tensors it takes.
    """
    n = codes.numel()
    tensors = (codes, nested_code, nested_absmax, offset)
    if (
        codes.dtype != torch.uint8
        or any(t.dtype != torch.float32 for t in tensors[1:])
        or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors)
        or nested_code.numel() != 256
        or offset.numel() != 1
        or nested_block < 1
        or nested_absmax.numel() < -(-n // nested_block)
    ):
        return None
    status = native_status()
    if not status.available:
        return None
    out = torch.empty(n, dtype=torch.float32)
    failed = status.functions["nf4_scales"](
        codes.data_ptr(),
        nested_code.data_ptr(),
        nested_absmax.data_ptr(),
        offset.data_ptr(),
        out.data_ptr(),
        n,
        nested_block,
    )
    return None if failed else out
