"""The decode engine's routing of ``nn.Linear`` calls to faster CPU kernels, while it generates.

This module is the one place in LegoLLM that changes how a model's ``nn.Linear`` layers
compute: [`decode_linears()`][lego.generate.linears.decode_linears] gives each routed layer
an instance ``forward`` (the class ``nn.Linear`` and its ``forward`` are never touched) for
the duration of a ``with`` block, and deletes it on the way out, whatever ends the block (an
exception, ``KeyboardInterrupt``, a closed stream). [`generate()`][lego.generate.generate]
and [`stream()`][lego.generate.stream] enter it through
[`linear_kernels()`][lego.generate.linears.linear_kernels] for exactly the time they
generate. A routed layer chooses per call, by the number of input rows:

- **native** (on by default): up to [`MAX_ROWS`][lego.generate.native.MAX_ROWS] rows (a
  decode step of batch <= 8) go to the C kernels of
  [`lego.generate.native`][lego.generate.native], in fp32 and bf16, reading the weights where
  they are (no copy);
- **packed** (opt-in, bf16 only): other calls (the prefill) go to oneDNN with the weight
  *reordered* once into its blocked layout (``torch.ops.mkldnn._reorder_linear_weight`` and
  ``_linear_pointwise``, the operators PyTorch's inductor uses when it freezes a CPU graph).
  The reordered copies cost the bf16 weights' size again while generating;
- everything else runs ``F.linear`` as usual: other dtypes or devices, calls that need
  gradients, and kernels this machine lacks.

Why an instance ``forward`` and not another mechanism: a forward hook runs after
``F.linear`` has already been computed, and a ``TorchFunctionMode`` that intercepts
``F.linear`` adds its Python dispatch to every one of the several hundred torch calls of a
decode step, not only to the linear ones, giving back a good part of what the kernels gain
(the figure is in the package README). The instance attribute costs one Python call per
routed layer and is what ``torch.compile`` traces through.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.generate.native import MAX_ROWS, native_status, prepare_skinny, skinny_linear
from lego.generate.native.unavailable import warn_unavailable
from lego.protocols import CompatibilityError

__all__ = ["DecodeLinears", "can_pack", "decode_linears", "linear_kernels"]

_PACKABLE = (torch.bfloat16,)
_NATIVE_DTYPES = (torch.float32, torch.bfloat16)

_routed: weakref.WeakKeyDictionary[nn.Linear, tuple[bool, bool]] = weakref.WeakKeyDictionary()
"""The layers routed right now (to whether they run native, packed): a ``decode_linears``
entered while another one holds a layer (a generation inside a running stream, a second
thread) counts it and leaves it to its owner."""
_lock = threading.Lock()


@dataclass(frozen=True)
class DecodeLinears:
    """How many layers [`decode_linears()`][lego.generate.linears.decode_linears] rerouted.

    Attributes:
        native: Layers whose few-row calls run on the native kernels.
        packed: Layers whose other calls run on oneDNN-reordered weights.
        reason: Why no layer runs on the native kernels, when they were asked for and none
            does ("" otherwise).
    """

    native: int = 0
    packed: int = 0
    reason: str = ""


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


def _native_candidate(layer: nn.Linear) -> bool:
    """Whether the layer's weight has a dtype and device the native kernels take."""
    weight = layer.weight
    return weight.device.type == "cpu" and weight.dtype in _NATIVE_DTYPES and weight.ndim == 2


def _no_candidate_reason(linears: list[nn.Linear]) -> str:
    if not linears:
        return "the model has no nn.Linear layers"
    found = sorted({f"{layer.weight.dtype} on {layer.weight.device}" for layer in linears})
    return (
        "the kernels take fp32 or bf16 weights on the CPU, the model's nn.Linear weights are "
        + ", ".join(found)
    )


def _native_linear(layer: nn.Linear) -> Callable[[Tensor], Tensor] | str:
    """The layer on the native kernels, or why they cannot take its weight or bias."""
    try:
        return prepare_skinny(layer.weight.detach(), _detached(_bias(layer)))
    except CompatibilityError as error:
        return str(error).splitlines()[0]


def _routed_forward(
    layer: nn.Linear,
    native: Callable[[Tensor], Tensor] | None,
    packed: Callable[[Tensor], Tensor] | None,
    max_rows: int = MAX_ROWS,
) -> Callable[[Tensor], Tensor]:
    weight, bias = layer.weight, _bias(layer)
    has_native = native is not None  # a plain bool: what torch.compile reads and guards

    def forward(x: Tensor) -> Tensor:  # (..., in_features) -> (..., out_features)
        if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
            return F.linear(x, weight, bias)  # the routed kernels have no autograd
        same = x.dtype == weight.dtype
        if has_native and same and math.prod(x.shape[:-1]) <= max_rows:
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
    model: nn.Module, *, native: bool = True, pack: bool = False, max_rows: int = MAX_ROWS
) -> Iterator[DecodeLinears]:
    """Route the model's CPU ``nn.Linear`` layers through faster kernels inside the block.

    Inside the block, each rerouted layer still computes ``x @ W.T + b`` for ``x`` of shape
    ``(..., in_features)``; results equal ``F.linear``'s up to the order of fp32 additions
    (and bf16 rounding). Meant for inference: a call that needs gradients runs ``F.linear``.
    On exit every rerouted layer is a plain ``nn.Linear`` again (its instance ``forward`` is
    deleted) and the packed copies are freed, however the block ends. A layer that already
    has an instance ``forward`` of its own is left alone; one that another
    ``decode_linears`` block holds is counted and left to that block.

    Args:
        model: Any module; layers the kernels cannot take are left alone.
        native: Send calls of up to ``MAX_ROWS`` rows (fp32 or bf16, CPU) to the native
            kernels, where this machine has them
            ([`native_status()`][lego.generate.native.native_status]; the kernels are built
            on the first call that has a layer for them).
        pack: Send the other calls of bf16 CPU layers to oneDNN-reordered copies of their
            weights (made on entry, freed on exit).
        max_rows: Calls of up to this many rows go to the native kernels. The default suits
            ``generate()``; lego-serve's engine raises it to its batch of up to 16 rows (the
            kernels compute each row the same way whatever the number of rows, so a request
            gets the same numbers alone or among others).

    Yields:
        A [`DecodeLinears`][lego.generate.linears.DecodeLinears] with the number of layers
        rerouted each way (zeros when nothing applies) and, when ``native`` is on but no
        layer runs natively, the reason.
    """
    onednn = _onednn_ops() if pack else None
    owned: list[tuple[nn.Linear, Callable[[Tensor], Tensor]]] = []
    native_count = packed_count = 0
    reason = ""
    try:
        with torch.no_grad(), _lock:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            candidates = [layer for layer in linears if _native_candidate(layer)]
            use_native = False
            if native:
                status = native_status() if candidates else None
                use_native = status is not None and status.available
                if not candidates:
                    reason = _no_candidate_reason(linears)
                elif status is not None and not status.available:
                    reason = status.reason
            for layer in linears:
                if layer in _routed:  # another block routes it: count it, leave it alone
                    held_native, held_packed = _routed[layer]
                    native_count += held_native
                    packed_count += held_packed
                    continue
                if "forward" in layer.__dict__:  # someone else's forward: not ours to shadow
                    continue
                native_fn = None
                if use_native and _native_candidate(layer):
                    prepared = _native_linear(layer)
                    if isinstance(prepared, str):
                        reason = reason or prepared
                    else:
                        native_fn = prepared
                packed_fn = None
                if onednn is not None and can_pack(layer):
                    reorder, linear = onednn
                    packed_fn = _packed_linear(
                        linear, reorder(layer.weight.detach(), None), _detached(_bias(layer))
                    )
                if native_fn is None and packed_fn is None:
                    continue
                forward = _routed_forward(layer, native_fn, packed_fn, max_rows)
                owned.append((layer, forward))  # before the change: the finally undoes it
                # The instance attribute shadows nn.Linear.forward for this layer only,
                # until the finally below deletes it.
                layer.forward = forward  # type: ignore[method-assign,assignment]
                _routed[layer] = (native_fn is not None, packed_fn is not None)
                native_count += native_fn is not None
                packed_count += packed_fn is not None
        yield DecodeLinears(
            native=native_count, packed=packed_count, reason="" if native_count else reason
        )
    finally:
        with _lock:
            for layer, forward in owned:
                if layer.__dict__.get("forward") is forward:
                    del layer.forward
                _routed.pop(layer, None)


def linear_kernels(
    model: object, *, native: bool | None, pack: bool, rows: int, max_rows: int = MAX_ROWS
) -> AbstractContextManager[DecodeLinears]:
    """The decode engine's routing for one generation: ``decode_linears`` as the settings ask.

    [`generate()`][lego.generate.generate] and [`stream()`][lego.generate.stream] enter it
    around the whole generation. With ``native=True`` (asked for explicitly) a
    [`NativeKernelsUnavailableWarning`][lego.generate.native.NativeKernelsUnavailableWarning]
    says why when no layer can run on the native kernels, once per reason; with
    ``native=None`` (the default) they are used where they can run, silently.

    Args:
        model: The model that generates; one that is not an ``nn.Module`` is left alone.
        native: The ``native_kernels`` setting: None (where available), True (asked for:
            warn when unavailable) or False (off).
        pack: The ``pack_weights`` setting.
        rows: The fewest rows a decode step of this generation feeds the model (batch times
            beams, times the tokens fed per step); above ``max_rows`` the native kernels are
            not used.
        max_rows: The most rows a call sends to the native kernels (``decode_linears``).

    Returns:
        A context manager yielding a [`DecodeLinears`][lego.generate.linears.DecodeLinears].
    """
    use_native = native is not False
    if use_native and rows > max_rows:
        if native:
            warn_unavailable(
                f"a decode step of this generation feeds the model {rows} rows, the kernels "
                f"take up to {max_rows} (batch x beams x tokens per step)"
            )
        use_native = False
    if not isinstance(model, nn.Module):
        if use_native and native:
            warn_unavailable(f"the model is a {type(model).__name__}, not a torch.nn.Module")
        return nullcontext(DecodeLinears())
    if not (use_native or pack):
        return nullcontext(DecodeLinears())
    routing = decode_linears(model, native=use_native, pack=pack, max_rows=max_rows)
    return _warning_if_unused(routing, native)


@contextmanager
def _warning_if_unused(
    routing: AbstractContextManager[DecodeLinears], native: bool | None
) -> Iterator[DecodeLinears]:
    with routing as counts:
        if native and counts.reason:
            warn_unavailable(counts.reason)
        yield counts


def _bias(layer: nn.Linear) -> Tensor | None:
    """The layer's bias, or None (``nn.Linear(..., bias=False)``)."""
    bias: Tensor | None = getattr(layer, "bias", None)
    return bias


def _detached(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach()
