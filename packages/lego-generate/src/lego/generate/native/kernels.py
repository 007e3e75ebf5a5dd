"""Calling the kernels from Python: which kernel takes a weight, and one checked call.

[`prepare_skinny()`][lego.generate.native.prepare_skinny] checks a weight (and bias) once and
returns ``x -> x @ weight.T + bias``; the operator of
[`lego.generate.native.ops`][lego.generate.native.ops] checks them on every call. Either way
the weight is read where it lies, never copied:

- stored ``(N, K)``, as ``nn.Linear`` stores it: ``skinny_rows`` (or, for bf16 on a CPU with
  AVX512-BF16, ``skinny_rows_bf16dot``);
- stored as the transpose of a contiguous ``(K, N)`` tensor, the view GPT-2's ``Conv1D``
  checkpoints load into: ``skinny_cols``.

Results equal ``F.linear`` up to the order of fp32 additions (bf16 outputs are rounded to
nearest even, like torch's).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from lego.generate.native.build import Kernel, loaded_kernels
from lego.protocols import CompatibilityError, DataError

__all__ = ["MAX_ROWS", "prepare_skinny"]

MAX_ROWS = 8
"""Rows of ``x`` up to which the decode engine routes a call to the kernels (a decode step
of batch <= 8); more rows work, but PyTorch's matrix products are the better choice there."""

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}


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


def kernel_for(weight: Tensor, bias: Tensor | None) -> tuple[Kernel, int]:
    """The kernel that takes this weight, and its dtype code (builds the kernels if need be).

    Args:
        weight: ``(N, K)``: fp32 or bf16 on the CPU, contiguous or a transposed contiguous
            ``(K, N)`` tensor.
        bias: ``(N,)`` of the weight's dtype, or None.

    Returns:
        The loaded kernel and the dtype code it takes.

    Raises:
        CompatibilityError: The kernels are unavailable here, or the weight or bias does
            not fit them.
    """
    status, kernels = loaded_kernels()
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


def run_kernel(kernel: Kernel, code: int, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` on ``kernel``, for a weight and bias ``kernel_for`` accepted.

    Args:
        kernel: What [`kernel_for()`][lego.generate.native.kernels.kernel_for] returned.
        code: Its dtype code.
        x: ``(..., K)`` in the weight's dtype, on the CPU.
        weight: ``(N, K)``, as given to ``kernel_for``.
        bias: ``(N,)`` or None, as given to ``kernel_for``.

    Returns:
        ``(..., N)`` in the weight's dtype.

    Raises:
        DataError: ``x`` does not fit the weight.
        MemoryError: The kernel could not allocate its scratch memory.
    """
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
    kernel, code = kernel_for(weight, bias)
    return functools.partial(run_kernel, kernel, code, weight=weight, bias=bias)
