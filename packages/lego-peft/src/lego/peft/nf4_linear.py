"""[`NF4Linear`][lego.peft.nf4_linear.NF4Linear]: a linear layer whose weight is stored in NF4.

The weight stays 4-bit (plus its absmax state, [`NF4Tensor`][lego.peft.nf4.NF4Tensor]); a
call dequantizes it slice by slice of output rows into one small scratch tensor in the
input's dtype and multiplies each slice as it is made, so no full-precision copy of the
weight is ever kept: not between calls, not for the backward pass (which dequantizes again,
as bitsandbytes' ``MatMul4Bit`` does). A layer whose weight has at most ``chunk_values``
values is dequantized in one piece (and then computes exactly ``F.linear`` on the
dequantized weight).

The weight takes no gradient (it is frozen, as in QLoRA); the input and the bias do, so
LoRA adapters train through the layer. Its state dict is bitsandbytes' ``Linear4bit``
layout (``weight``, ``weight.absmax``, ``weight.quant_map``, ``weight.nested_absmax``,
``weight.nested_quant_map``, ``weight.quant_state.bitsandbytes__nf4``, ``bias``), and a
plain ``nn.Linear`` state dict loads too (quantized on the way in)::

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> dense = nn.Linear(128, 32)
    >>> layer = NF4Linear.from_linear(dense)
    >>> x = torch.randn(4, 128)
    >>> y = layer(x)
    >>> torch.equal(y, nn.functional.linear(x, layer.dequantized_weight(), dense.bias))
    True
    >>> sorted(layer.state_dict())[:3]
    ['bias', 'weight', 'weight.absmax']
    >>> twin = NF4Linear.from_linear(nn.Linear(128, 32))
    >>> _ = twin.load_state_dict(layer.state_dict())
    >>> torch.equal(twin(x), y)
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor, nn

from lego.peft.nf4 import NF4Tensor, check_block_size, quantize_nf4
from lego.protocols import CompatibilityError, ConfigError, check_bool, check_int

__all__ = ["NF4Linear", "DEFAULT_CHUNK_VALUES"]

DEFAULT_CHUNK_VALUES = 1 << 22
"""Weights up to this many values are dequantized in one piece per call (16 MiB in
float32: every layer of a model of width 1024 and MLP width 4096); larger ones in slices
of about this size, so the scratch stays bounded. Fewer, larger products are faster on a
busy CPU (each product is a parallel region whose threads wait for each other): on 2 shared
cores a (512 x 1024) @ (1024 x 4096) forward and backward took 200 ms in one piece against
260 ms in four slices (medians of 21, interleaved)."""

_COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class NF4Linear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` stored in NF4 (bitsandbytes' layout and values).

    Args:
        weight: The quantized weight, shape ``(out_features, in_features)``.
        bias: ``(out_features,)``, or None. It becomes a parameter (frozen until an adapter
            trains it).
        chunk_values: How many weight values one slice of the computation dequantizes at
            most (rounded to whole rows and blocks).
        compute_dtype: The dtype of the product (bitsandbytes' ``compute_dtype``): the input
            is cast to it and the output back to the input's dtype. None computes in the
            input's dtype. (On CPUs without bfloat16 matrix units, float32 is several times
            faster than bfloat16.)

    Attributes:
        in_features: The input width.
        out_features: The output width.
        block_size: Values per NF4 block.
        double_quant: Whether the absmax values are quantized too.
        weight: The packed codes ``(out * in / 2, 1)`` uint8 (a buffer, as bitsandbytes'
            ``Params4bit`` data).
        bias: The bias parameter, or None.

    The absmax state lives in buffers too (float tensors held as their int32 bits, so
    ``model.half()`` or ``model.to(torch.bfloat16)`` moves them but never rounds them).
    """

    weight: Tensor
    weight_absmax: Tensor
    weight_offset: Tensor | None
    weight_nested_absmax: Tensor | None
    weight_nested_code: Tensor | None
    bias: nn.Parameter | None

    def __init__(
        self,
        *,
        weight: NF4Tensor,
        bias: Tensor | None = None,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(weight, NF4Tensor) or len(weight.shape) != 2:  # type: ignore[redundant-expr]
            raise ConfigError(
                "NF4Linear: weight must be a 2-D NF4Tensor (out_features, in_features)",
                key="weight",
                hint="build it with quantize_nf4(linear.weight) or NF4Linear.from_linear()",
            )
        self.out_features, self.in_features = (int(d) for d in weight.shape)
        self.chunk_values = check_int("chunk_values", chunk_values, minimum=1, owner="NF4Linear")
        if compute_dtype is not None and compute_dtype not in _COMPUTE_DTYPES:
            raise ConfigError(
                f"NF4Linear: compute_dtype must be float32, float16, bfloat16 or None, got "
                f"{compute_dtype}",
                key="compute_dtype",
                hint="pass torch.float32 or torch.bfloat16, or None for the input's dtype",
            )
        self.compute_dtype = compute_dtype
        self._set_weight(weight)
        if bias is not None:
            if bias.shape != (self.out_features,):
                raise ConfigError(
                    f"NF4Linear: bias has shape {tuple(bias.shape)}, expected "
                    f"({self.out_features},)",
                    key="bias",
                    hint="pass the bias of the linear layer the weight came from",
                )
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        block_size: int = 64,
        double_quant: bool = True,
        chunk_values: int = DEFAULT_CHUNK_VALUES,
        compute_dtype: torch.dtype | None = None,
    ) -> NF4Linear:
        """Quantize an ``nn.Linear`` (its weight keeps its dtype as the dequantization dtype).

        Args:
            linear: The layer to quantize (not modified).
            block_size: Values per NF4 block (64, as QLoRA).
            double_quant: Quantize the absmax values too (4.127 bits per weight).
            chunk_values: See the class.
            compute_dtype: See the class.

        Returns:
            The quantized layer, on the linear layer's device.
        """
        check_block_size(block_size, owner="NF4Linear.from_linear")
        check_bool("double_quant", double_quant, owner="NF4Linear.from_linear")
        weight = quantize_nf4(linear.weight.detach(), block_size, double_quant)
        bias = getattr(linear, "bias", None)  # nn.Linear(..., bias=False) holds None
        if bias is not None:
            bias = bias.detach()
        return cls(weight=weight, bias=bias, chunk_values=chunk_values, compute_dtype=compute_dtype)

    # -- the quantized state --------------------------------------------------------------

    def _set_weight(self, weight: NF4Tensor) -> None:
        """Hold ``weight``'s tensors as (non-persistent) buffers; the state dict writes them."""

        def bits(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.reshape(-1).view(torch.int32)

        absmax = weight.absmax if weight.double_quant else weight.absmax.view(torch.int32)
        self.register_buffer("weight", weight.packed, persistent=False)
        self.register_buffer("weight_absmax", absmax, persistent=False)
        self.register_buffer("weight_offset", bits(weight.offset), persistent=False)
        self.register_buffer("weight_nested_absmax", bits(weight.nested_absmax), persistent=False)
        self.register_buffer("weight_nested_code", bits(weight.nested_code), persistent=False)
        self._dtype = weight.dtype
        self.block_size = weight.block_size
        self.double_quant = weight.double_quant
        self._nested_block_size = weight.nested_block_size

    @property
    def quantized(self) -> NF4Tensor:
        """The weight as an [`NF4Tensor`][lego.peft.nf4.NF4Tensor] (views of the buffers)."""

        def floats(name: str) -> Tensor | None:
            t = getattr(self, name)
            return None if t is None else t.view(torch.float32)

        offset = floats("weight_offset")
        absmax: Tensor = self.weight_absmax
        return NF4Tensor(
            packed=self.weight,
            absmax=absmax if self.double_quant else absmax.view(torch.float32),
            shape=torch.Size((self.out_features, self.in_features)),
            dtype=self._dtype,
            block_size=self.block_size,
            offset=None if offset is None else offset.reshape(()),
            nested_absmax=floats("weight_nested_absmax"),
            nested_code=floats("weight_nested_code"),
            nested_block_size=self._nested_block_size,
        )

    @property
    def dtype(self) -> torch.dtype:
        """The weight's dtype before quantization (what ``dequantized_weight()`` returns)."""
        return self._dtype

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        """The weight in floating point (for merging an adapter; the forward never builds it).

        Args:
            dtype: float32, float16 or bfloat16; the original weight's dtype by default.

        Returns:
            ``(out_features, in_features)``, without gradient, equal to bitsandbytes'
            ``dequantize_4bit`` of the same state.
        """
        return self.quantized.dequantize(dtype)

    # -- computing ------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Compute ``x @ W.T + bias`` (in ``compute_dtype``, or ``x``'s dtype).

        Args:
            x: ``(..., in_features)``, float32, float16 or bfloat16.

        Returns:
            ``(..., out_features)`` in ``x``'s dtype.
        """
        if x.shape[-1] != self.in_features:
            raise CompatibilityError(
                f"NF4Linear: input has {x.shape[-1]} features, the layer takes {self.in_features}",
                tensor="x",
                hint="check the model's widths",
            )
        if x.dtype not in _COMPUTE_DTYPES:
            raise CompatibilityError(
                f"NF4Linear: cannot compute in {x.dtype}",
                tensor="x",
                hint="pass a float32, float16 or bfloat16 input",
            )
        bias = self.bias
        lead, in_dtype = x.shape[:-1], x.dtype
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        weight = self.quantized
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or (bias is not None and bias.requires_grad)
        )
        if needs_grad:
            out: Tensor = _NF4LinearFunction.apply(  # type: ignore[no-untyped-call]
                x2, bias, weight, self.chunk_values
            )
        else:
            out = _linear(x2, weight, None if bias is None else bias.to(x.dtype), self.chunk_values)
        return out.view(*lead, self.out_features).to(in_dtype)

    def extra_repr(self) -> str:
        """Shape and quantization settings."""
        extra = ", double_quant" if self.double_quant else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, nf4 block_size={self.block_size}{extra}"
        )

    # -- bitsandbytes' state-dict layout ---------------------------------------------------

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        tensors = self.quantized.state_dict(prefix + "weight")
        destination[prefix + "weight"] = tensors.pop(prefix + "weight")  # bitsandbytes' order:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # weight, bias, state
        for key, value in tensors.items():
            destination[key] = value if keep_vars else value.detach()

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "weight"
        mine = [k for k in state_dict if k == key or k.startswith(key + ".")]
        if key not in state_dict:
            missing_keys.append(key)
        else:
            self._load_weight(state_dict, key)
        rest = {k: v for k, v in state_dict.items() if k not in mine}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _load_weight(self, state_dict: Mapping[str, Any], key: str) -> None:
        """Take the weight from bitsandbytes' layout, or quantize a plain floating-point one."""
        value = state_dict[key]
        device = self.weight.device
        if isinstance(value, Tensor) and value.is_floating_point() and value.dim() == 2:
            expected = (self.out_features, self.in_features)
            if tuple(value.shape) != expected:
                raise CompatibilityError(
                    f"{key} has shape {tuple(value.shape)}, the NF4 layer is {expected}",
                    tensor=key,
                    hint="load weights of the same architecture",
                )
            weight = quantize_nf4(value.to(device), self.block_size, self.double_quant)
        else:
            weight = _owned(NF4Tensor.from_state_dict(state_dict, key).to(device))
            if tuple(weight.shape) != (self.out_features, self.in_features):
                raise CompatibilityError(
                    f"{key} is an NF4 weight of shape {tuple(weight.shape)}, the layer is "
                    f"({self.out_features}, {self.in_features})",
                    tensor=key,
                    hint="load weights of the same architecture",
                )
        self._set_weight(weight)


def _owned(weight: NF4Tensor) -> NF4Tensor:
    """``weight`` with tensors of its own (a loaded layer never aliases the state dict)."""

    def copy(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.clone()

    return dataclasses.replace(
        weight,
        packed=weight.packed.clone(),
        absmax=weight.absmax.clone(),
        offset=copy(weight.offset),
        nested_absmax=copy(weight.nested_absmax),
        nested_code=copy(weight.nested_code),
    )


def _linear(x: Tensor, weight: NF4Tensor, bias: Tensor | None, chunk_values: int) -> Tensor:
    """``x @ W.T + bias`` dequantizing ``W`` slice by slice: ``(N, in) -> (N, out)``."""
    out_features, in_features = weight.shape
    rows = _chunk_rows(out_features, in_features, weight.block_size, chunk_values)
    scales = weight.scales()
    if rows >= out_features:  # the whole weight in one piece
        w = torch.empty(out_features * in_features, dtype=x.dtype, device=x.device)
        weight.dequantize_range(0, w.numel(), w, scales)
        return F.linear(x, w.view(out_features, in_features), bias)
    out = torch.empty(x.shape[0], out_features, dtype=x.dtype, device=x.device)  # (N, out)
    scratch = torch.empty(rows * in_features, dtype=x.dtype, device=x.device)
    for first in range(0, out_features, rows):
        last = min(out_features, first + rows)
        w = scratch[: (last - first) * in_features]
        weight.dequantize_range(first * in_features, last * in_features, w, scales)
        w_t = w.view(last - first, in_features).t()  # (in, rows)
        if bias is None:
            torch.mm(x, w_t, out=out[:, first:last])
        else:
            torch.addmm(bias[first:last], x, w_t, out=out[:, first:last])
    return out


def _input_grad(grad: Tensor, weight: NF4Tensor, chunk_values: int) -> Tensor:
    """``grad @ W`` dequantizing ``W`` slice by slice: ``(N, out) -> (N, in)``."""
    out_features, in_features = weight.shape
    rows = _chunk_rows(out_features, in_features, weight.block_size, chunk_values)
    scales = weight.scales()
    scratch = torch.empty(
        min(rows, out_features) * in_features, dtype=grad.dtype, device=grad.device
    )
    result: Tensor | None = None
    for first in range(0, out_features, rows):
        last = min(out_features, first + rows)
        w = scratch[: (last - first) * in_features]
        weight.dequantize_range(first * in_features, last * in_features, w, scales)
        part = grad[:, first:last]  # (N, rows)
        w2 = w.view(last - first, in_features)  # (rows, in)
        if result is None:
            result = part @ w2
        else:
            result.addmm_(part, w2)
    assert result is not None
    return result


def _chunk_rows(out_features: int, in_features: int, block_size: int, chunk_values: int) -> int:
    """Rows per slice: as many as ``chunk_values`` allows, each slice starting on a block."""
    step = block_size // math.gcd(in_features, block_size)  # rows that span whole blocks
    rows = max(1, chunk_values // max(1, in_features))
    return max(step, rows // step * step)


class _NF4LinearFunction(torch.autograd.Function):
    """The NF4 product with a backward that dequantizes again (nothing large is saved)."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, bias: Tensor | None, weight: NF4Tensor, chunk_values: int
    ) -> Tensor:
        ctx.weight = weight
        ctx.chunk_values = chunk_values
        ctx.bias_dtype = None if bias is None else bias.dtype
        return _linear(x, weight, None if bias is None else bias.to(x.dtype), chunk_values)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        needs_x, needs_bias = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = _input_grad(grad, ctx.weight, ctx.chunk_values) if needs_x else None
        grad_bias = None
        if needs_bias and ctx.bias_dtype is not None:
            grad_bias = grad.sum(dim=0).to(ctx.bias_dtype)  # (out,)
        return grad_x, grad_bias, None, None
