"""The PyTorch operator ``torch.ops.lego.skinny_linear``, defined when this module is imported.

An operator, rather than a plain Python call, so that ``torch.compile`` keeps each kernel
call as one node of its graph (traced through its fake implementation, which only gives the
output's shape and dtype) and fuses everything around it: the compiled decode step of
``generate(..., compile=True)`` calls the kernels this way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lego.generate.native import kernels

__all__ = ["skinny_linear"]

torch.library.define(
    "lego::skinny_linear", "(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor"
)


def _skinny_linear_cpu(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The operator on CPU tensors: check the weight, run its kernel."""
    kernel, code = kernels.kernel_for(weight, bias)
    return kernels.run_kernel(kernel, code, x, weight, bias)


def _skinny_linear_shape(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The operator's output for tracing (shape and dtype only): ``(..., N)``."""
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


torch.library.impl("lego::skinny_linear", "cpu", _skinny_linear_cpu)
torch.library.register_fake("lego::skinny_linear", _skinny_linear_shape)


def skinny_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` on the native kernels (``F.linear``'s arguments).

    The PyTorch operator ``torch.ops.lego.skinny_linear``, which ``torch.compile`` keeps as
    one node of its graph. Each call checks the weight;
    [`prepare_skinny()`][lego.generate.native.prepare_skinny] checks it once. Meant for few
    rows (up to [`MAX_ROWS`][lego.generate.native.MAX_ROWS]); more rows work but grow slower
    than PyTorch's matrix products. It has no autograd.

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
