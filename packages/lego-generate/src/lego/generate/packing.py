"""Prepacked weights for CPU decoding: every ``nn.Linear`` through oneDNN while generating.

At batch 1 a decode step is a chain of matrix-vector products, bound by how fast the weights
are read. On x86 CPUs, PyTorch's plain ``F.linear`` reads bf16 weights slowly (about 20-27
GB/s on the 2-core machine the benchmarks run on, against 37-40 GB/s in fp32), while
oneDNN reads a weight it has *reordered* into its blocked layout at full speed (about 40-55
GB/s in bf16). [`packed_linears()`][lego.generate.packing.packed_linears] reorders the
weight of every ``nn.Linear`` of a model once and routes the layer through oneDNN's linear
kernel until the block ends, then puts the modules back exactly as they were.

This is what PyTorch's inductor does for CPU inference when it freezes a graph (its
``mkldnn`` weight prepacking), without compiling anything. It uses the operators inductor
uses, ``torch.ops.mkldnn._reorder_linear_weight`` and ``torch.ops.mkldnn._linear_pointwise``;
when the torch build lacks them, or the weights are not bf16 on the CPU, nothing is packed
and decoding runs as usual.

The packed copies are extra memory (the size of the bf16 weights again) for the duration of
the generation, which is why it is opt-in: ``generate(..., pack_weights=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["can_pack", "packed_linears"]

_PACKABLE = (torch.bfloat16,)


def _ops() -> tuple[Any, Any] | None:
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
    """Whether ``layer`` is an ``nn.Linear`` with CPU bf16 weights that oneDNN can prepack.

    Args:
        layer: Any module.

    Returns:
        True when [`packed_linears()`][lego.generate.packing.packed_linears] would pack it.
    """
    if not isinstance(layer, nn.Linear) or _ops() is None:
        return False
    weight = layer.weight
    return weight.device.type == "cpu" and weight.dtype in _PACKABLE and weight.ndim == 2


def _packed_forward(linear: Any, weight: Tensor, bias: Tensor | None) -> Any:
    def forward(x: Tensor) -> Tensor:
        out: Tensor = linear(x, weight, bias, "none", [], "")  # (..., out_features)
        return out

    return forward


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[int]:
    """Route every packable ``nn.Linear`` of ``model`` through prepacked oneDNN weights.

    Inside the block, each such layer computes ``x @ W.T + b`` for ``x`` of shape
    ``(..., in_features)`` from a copy of ``W`` reordered for oneDNN (made once, on entry);
    the results equal ``F.linear``'s up to bf16 rounding. On exit the layers are restored
    (their own ``forward`` again) and the copies freed. Meant for inference: the packed
    path has no gradient.

    Args:
        model: Any module; layers that cannot be packed (see
            [`can_pack()`][lego.generate.packing.can_pack]) are left alone.

    Yields:
        The number of layers packed (0 when nothing could be).
    """
    ops = _ops()
    patched: list[nn.Linear] = []
    try:
        if ops is not None:
            reorder, linear = ops
            with torch.no_grad():
                for layer in model.modules():
                    if not can_pack(layer):
                        continue
                    assert isinstance(layer, nn.Linear)
                    packed = reorder(layer.weight.detach(), None)
                    bias: Tensor | None = getattr(layer, "bias", None)  # None without bias
                    bias = None if bias is None else bias.detach()
                    # An instance attribute shadows nn.Linear.forward until it is deleted.
                    layer.forward = _packed_forward(linear, packed, bias)  # type: ignore[method-assign]
                    patched.append(layer)
        yield len(patched)
    finally:
        for layer in patched:
            del layer.forward
