"""Faster ``nn.Linear`` layers while generating on the CPU, restored afterwards.

At small batch a decode step is a chain of matrix-vector products, bound by how fast the
weights are read. [`decode_linears()`][lego.generate.linears.decode_linears] routes every CPU
``nn.Linear`` of a model through a faster kernel for the duration of a generation, choosing
per call by the number of input rows:

- **native** (on by default): up to [`MAX_ROWS`][lego.generate.native.MAX_ROWS] rows (a
  decode step of batch <= 8) go to the skinny-product kernels of
  [`lego.generate.native`][lego.generate.native], in fp32 and bf16, reading the weights where
  they are (no copy);
- **packed** (opt-in, bf16 only): other calls (the prefill) go to oneDNN with the weight
  *reordered* once into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight`` and
  ``_linear_pointwise``, the operators PyTorch's inductor uses when it freezes a CPU graph).
  The reordered copies cost the bf16 weights' size again while generating;
- everything else runs ``F.linear`` as usual: other dtypes or devices, calls that need
  gradients, and kernels this machine lacks.

On exit every layer is its own ``nn.Linear`` again and the copies are freed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.generate.native import MAX_ROWS, native_status, prepare_skinny, skinny_linear
from lego.protocols import CompatibilityError

__all__ = ["DecodeLinears", "can_pack", "decode_linears"]

_PACKABLE = (torch.bfloat16,)


@dataclass(frozen=True)
class DecodeLinears:
    """How many layers [`decode_linears()`][lego.generate.linears.decode_linears] rerouted.

    Attributes:
        native: Layers whose few-row calls run on the native kernels.
        packed: Layers whose other calls run on oneDNN-reordered weights.
    """

    native: int = 0
    packed: int = 0


def _onednn_ops() -> tuple[Any, Any] | None:
    """The reorder and linear operators of oneDNN, or None when this torch build lacks them."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if mkldnn is None or not torch._C._has_mkldnn:
        return None
    try:
        reorder = mkldnn._reorder_linear_weight
        linear = mkldnn._linear_pointwise
        supported = bool(mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None
    return (reorder, linear) if supported else None


def can_pack(layer: nn.Module) -> bool:
    """Whether ``layer`` is an ``nn.Linear`` with CPU bf16 weights that oneDNN can reorder.

    Args:
        layer: Any module.

    Returns:
        True when ``decode_linears(..., pack=True)`` would pack it.
    """
    if not isinstance(layer, nn.Linear) or _onednn_ops() is None:
        return False
    weight = layer.weight
    return weight.device.type == "cpu" and weight.dtype in _PACKABLE and weight.ndim == 2


def _native_linear(layer: nn.Linear) -> Callable[[Tensor], Tensor] | None:
    """The layer on the native kernels, or None when they cannot take its weight or bias."""
    try:
        return prepare_skinny(layer.weight.detach(), _detached(_bias(layer)))
    except CompatibilityError:
        return None


def _routed_forward(
    layer: nn.Linear,
    native: Callable[[Tensor], Tensor] | None,
    packed: Callable[[Tensor], Tensor] | None,
) -> Callable[[Tensor], Tensor]:
    weight, bias = layer.weight, _bias(layer)
    has_native = native is not None  # a plain bool: what torch.compile reads and guards

    def forward(x: Tensor) -> Tensor:  # (..., in_features) -> (..., out_features)
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return F.linear(x, weight, bias)  # the routed kernels have no autograd
        same = x.dtype == weight.dtype
        if has_native and same and math.prod(x.shape[:-1]) <= MAX_ROWS:
            if torch.compiler.is_compiling():  # the operator: one node of the traced graph
                return skinny_linear(x, weight, bias)
            assert native is not None
            return native(x)
        if packed is not None and same:
            return packed(x)
        return F.linear(x, weight, bias)

    return forward


def _packed_linear(linear: Any, weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], Tensor]:
    def forward(x: Tensor) -> Tensor:
        out: Tensor = linear(x, weight, bias, "none", [], "")  # (..., out_features)
        return out

    return forward


@contextmanager
def decode_linears(
    model: nn.Module, *, native: bool = True, pack: bool = False
) -> Iterator[DecodeLinears]:
    """Route the model's CPU ``nn.Linear`` layers through faster kernels inside the block.

    Inside the block, each rerouted layer still computes ``x @ W.T + b`` for ``x`` of shape
    ``(..., in_features)``; results equal ``F.linear``'s up to the order of fp32 additions
    (and bf16 rounding). Meant for inference: a call that needs gradients runs ``F.linear``.

    Args:
        model: Any module; layers the kernels cannot take are left alone.
        native: Send calls of up to ``MAX_ROWS`` rows (fp32 or bf16, CPU) to the native
            kernels, where this machine has them
            ([`native_status()`][lego.generate.native.native_status]).
        pack: Send the other calls of bf16 CPU layers to oneDNN-reordered copies of their
            weights (made on entry, freed on exit).

    Yields:
        A [`DecodeLinears`][lego.generate.linears.DecodeLinears] with the number of layers
        rerouted each way (zeros when nothing applies).
    """
    use_native = native and native_status().available
    onednn = _onednn_ops() if pack else None
    patched: list[nn.Linear] = []
    counts = DecodeLinears()
    try:
        with torch.no_grad():
            for layer in model.modules():
                if not isinstance(layer, nn.Linear):
                    continue
                native_fn = _native_linear(layer) if use_native else None
                packed_fn = None
                if onednn is not None and can_pack(layer):
                    reorder, linear = onednn
                    packed_fn = _packed_linear(
                        linear, reorder(layer.weight.detach(), None), _detached(_bias(layer))
                    )
                if native_fn is None and packed_fn is None:
                    continue
                # An instance attribute shadows nn.Linear.forward until it is deleted.
                layer.forward = _routed_forward(layer, native_fn, packed_fn)  # type: ignore[method-assign,assignment]
                patched.append(layer)
                counts = DecodeLinears(
                    native=counts.native + (native_fn is not None),
                    packed=counts.packed + (packed_fn is not None),
                )
        yield counts
    finally:
        for layer in patched:
            del layer.forward


def _bias(layer: nn.Linear) -> Tensor | None:
    """The layer's bias, or None (``nn.Linear(..., bias=False)``)."""
    bias: Tensor | None = getattr(layer, "bias", None)
    return bias


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()
