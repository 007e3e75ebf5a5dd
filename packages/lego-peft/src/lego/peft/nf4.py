"""NF4: 4-bit NormalFloat quantization, bit for bit as bitsandbytes does it, in pure PyTorch.

A weight is cut into blocks of ``block_size`` consecutive values (row-major, the last block
possibly shorter); each block is divided by its absolute maximum (``absmax``, float32) and
each value becomes the index of the nearest of the 16 NF4 values
([`NF4_CODE`][lego.peft.nf4.NF4_CODE], the QLoRA paper's normal quantiles). Two indices
share a byte, the first in the high nibble. With double quantization the absmax values
themselves are stored in 8 bits: their mean (``offset``) is subtracted and the rest is
quantized in blocks of 256 with bitsandbytes' signed dynamic map
(`lego.peft.nf4.dynamic_map()`), which costs 4.127 bits per weight instead of
4.5 (block 64).

The packed codes, the absmax values and the dequantized weights equal bitsandbytes'
``quantize_4bit(..., quant_type="nf4")`` / ``dequantize_4bit`` on the CPU exactly, and
[`NF4Tensor.state_dict()`][lego.peft.nf4.NF4Tensor.state_dict] writes bitsandbytes'
``Params4bit`` layout key for key (``weight``, ``weight.absmax``, ``weight.quant_map``,
``weight.nested_absmax``, ``weight.nested_quant_map``,
``weight.quant_state.bitsandbytes__nf4``), so a checkpoint quantized by either loads in the
other::

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> weight = torch.randn(64, 128)
    >>> q = quantize_nf4(weight)
    >>> q.packed.shape, q.absmax.dtype, q.n_blocks
    (torch.Size([4096, 1]), torch.uint8, 128)
    >>> restored = q.dequantize()
    >>> restored.shape, restored.dtype
    (torch.Size([64, 128]), torch.float32)
    >>> round(float((restored - weight).norm() / weight.norm()), 3)  # relative error
    0.092
    >>> sorted(q.state_dict("weight"))[:3]
    ['weight', 'weight.absmax', 'weight.nested_absmax']
    >>> torch.equal(NF4Tensor.from_state_dict(q.state_dict("weight")).dequantize(), restored)
    True

The work runs block range by block range (a few hundred kilobytes at a time), so quantizing
or dequantizing needs little memory besides the result, and the NF4 layer
([`NF4Linear`][lego.peft.nf4_linear.NF4Linear]) dequantizes one slice of its weight at a
time. Where lego-peft's C kernel runs (`lego.peft.native`, AVX-512), dequantizing uses it:
one pass over memory instead of three, the same values bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import torch
from torch import Tensor

from lego.peft.native import dequantize_native, scales_native
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    DataError,
    FormatError,
    check_bool,
    check_int,
)

__all__ = [
    "BLOCK_SIZES",
    "NESTED_BLOCK_SIZE",
    "NF4_CODE",
    "NF4Tensor",
    "check_block_size",
    "dynamic_map",
    "nf4_code",
    "quantize_nf4",
]

NF4_CODE: Final[tuple[float, ...]] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
"""The 16 NF4 values (bitsandbytes' ``get_4bit_type("nf4")``), in code order."""

BLOCK_SIZES: Final[tuple[int, ...]] = (32, 64, 128, 256, 512, 1024, 2048, 4096)
"""The block sizes bitsandbytes accepts for 4-bit quantization."""

NESTED_BLOCK_SIZE: Final[int] = 256
"""The block size of the double quantization of the absmax values (bitsandbytes')."""

_FLOAT_DTYPES: Final[dict[str, torch.dtype]] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_QUANT_TYPE_KEY: Final[str] = "quant_state.bitsandbytes__nf4"
_PIECE_VALUES: Final[int] = 1 << 17
"""Values handled per step of the quantization loop: the step's temporaries stay in the cache."""
_DEQUANT_PIECE_VALUES: Final[int] = 1 << 15
"""Values handled per step of the dequantization loop: no more than torch's grain size
(32768), so each of a step's three operations runs on the calling thread. Larger steps
let torch split every operation over its threads, and each split waits for all of them:
on a busy machine that made a 2048 x 8192 weight 5x slower (500 ms against 95 ms, two
cores under load)."""
_LUT_SIZE: Final[int] = 65536
_CELLS: Final[int] = 1 << 16
"""Cells of ``[-1, 1]`` for finding NF4 codes (``_code_cells``)."""

_tables: dict[tuple[str, torch.device], Tensor] = {}


def _device_key(device: torch.device | str | None) -> torch.device:
    return torch.device(device if device is not None else "cpu")


def nf4_code(device: torch.device | str | None = None) -> Tensor:
    """The NF4 codebook as a tensor.

    Args:
        device: Where to put it (the CPU by default).

    Returns:
        ``(16,)`` float32, sorted ascending.
    """
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=_device_key(device))


def dynamic_map(device: torch.device | str | None = None) -> Tensor:
    """Bitsandbytes' signed 8-bit dynamic map, which double quantization uses.

    Values ``±10^(e-6) * m`` for exponents ``e`` in ``0..6``, where the mantissas ``m`` are
    the midpoints of ``2^e + 1`` evenly spaced points in ``[0.1, 1]``, then ``0`` and
    ``1``, sorted: 256 values in ``[-0.993, 1]`` (computed with bitsandbytes' float32
    arithmetic, so equal to its ``create_dynamic_map()`` bit for bit).

    Args:
        device: Where to put it (the CPU by default).

    Returns:
        ``(256,)`` float32, sorted ascending.
    """
    values: list[float] = []
    for exponent in range(7):
        edges = torch.linspace(0.1, 1, 2**exponent + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0
        values += ((10 ** (exponent - 6)) * means).tolist()
        values += (-(10 ** (exponent - 6)) * means).tolist()
    values += [0.0, 1.0]
    values.sort()
    return torch.tensor(values, dtype=torch.float32, device=_device_key(device))


def _cached(name: str, device: torch.device) -> Tensor:
    """A constant table on ``device``, built once."""
    key = (name, device)
    table = _tables.get(key)
    if table is None:
        if name == "pairs":
            # byte -> (code[byte >> 4], code[byte & 15]) as one int64: one gather per byte.
            code = nf4_code()
            pairs = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)
            table = pairs.contiguous().view(torch.int64).reshape(256)
        elif name == "code":
            table = nf4_code()
        elif name == "bounds":
            code = nf4_code()
            table = (code[:-1] + code[1:]) / 2  # (15,) the midpoints bitsandbytes rounds at
        elif name in ("cell_codes", "cell_bounds"):
            codes, cell_bounds = _code_cells()
            table = codes if name == "cell_codes" else cell_bounds
        elif name == "dynamic":
            table = dynamic_map()
        else:  # "dynamic_lut"
            table = _dynamic_lut(dynamic_map())
        table = table.to(device)
        _tables[key] = table
    return table


def _code_cells() -> tuple[Tensor, Tensor]:
    """Tables that find a scaled value's NF4 code with one lookup and one comparison.

    ``[-1, 1]`` is cut into ``_CELLS`` equal cells, each widened by one cell on both sides
    (more than the rounding of ``(x + 1) * _CELLS / 2`` can move a value). Cell ``i``
    records how many codebook midpoints lie below its widened start and the one midpoint
    inside it (midpoints are thousands of cells apart), or infinity: the code of ``x`` in
    cell ``i`` is ``codes[i] + (x > bounds[i])``, exactly the number of midpoints below
    ``x``.

    Returns:
        ``(codes (_CELLS,) uint8, bounds (_CELLS,) float32)``.
    """
    midpoints = _cached("bounds", torch.device("cpu"))  # (15,) float32
    wide = midpoints.double().view(1, -1)
    width = 2.0 / _CELLS
    edges = -1.0 + torch.arange(_CELLS + 1, dtype=torch.float64) * width
    low, high = (edges[:-1] - width).view(-1, 1), (edges[1:] + width).view(-1, 1)
    codes = (wide < low).sum(dim=1).to(torch.uint8)
    inside = (wide >= low) & (wide < high)  # (_CELLS, 15), at most one per row
    bounds = torch.full((_CELLS,), math.inf, dtype=torch.float32)
    rows, columns = inside.nonzero(as_tuple=True)
    bounds[rows] = midpoints[columns]
    return codes, bounds


def _dynamic_lut(code: Tensor) -> Tensor:
    """Bitsandbytes' CPU lookup table for 8-bit blockwise quantization (``build_quantize_lut``).

    ``[-1, 1]`` is cut into 65536 evenly spaced points; entry ``i`` is the number of
    codebook midpoints below point ``i``, all in float32 as bitsandbytes computes it.
    """
    midpoints = 0.5 * (code[:-1] + code[1:])  # (255,)
    points = -1.0 + (2.0 * torch.arange(_LUT_SIZE, dtype=torch.float32)) / float(_LUT_SIZE - 1)
    return torch.searchsorted(midpoints, points, side="left").to(torch.uint8)  # (65536,)


# -- the quantized tensor ---------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NF4Tensor:
    """A tensor quantized to NF4 (bitsandbytes' ``Params4bit`` data and ``QuantState``).

    Build it with [`quantize_nf4()`][lego.peft.nf4.quantize_nf4] or
    [`from_state_dict()`][lego.peft.nf4.NF4Tensor.from_state_dict].

    Attributes:
        packed: ``(ceil(numel / 2), 1)`` uint8: two 4-bit codes per byte, the first value
            in the high nibble (the code of 0.0, 7, pads an odd count).
        absmax: ``(n_blocks,)``: each block's absolute maximum as float32, or, with double
            quantization, its 8-bit code (uint8).
        shape: The original tensor's shape.
        dtype: The original tensor's dtype (float32, float16 or bfloat16): what
            ``dequantize()`` returns by default.
        block_size: Values per block (one of `lego.peft.nf4.BLOCK_SIZES`).
        offset: With double quantization, the mean absmax subtracted before quantizing
            (``()`` float32); else None.
        nested_absmax: With double quantization, the absmax of each block of
            ``nested_block_size`` absmax codes (``(ceil(n_blocks / 256),)`` float32).
        nested_code: With double quantization, the 256-value map of the absmax codes
            (``(256,)`` float32, `lego.peft.nf4.dynamic_map()`).
        nested_block_size: The block size of the double quantization (256).
    """

    packed: Tensor
    absmax: Tensor
    shape: torch.Size
    dtype: torch.dtype
    block_size: int
    offset: Tensor | None = None
    nested_absmax: Tensor | None = None
    nested_code: Tensor | None = None
    nested_block_size: int = NESTED_BLOCK_SIZE

    @property
    def double_quant(self) -> bool:
        """Whether the absmax values are themselves quantized."""
        return self.offset is not None

    @property
    def numel(self) -> int:
        """The number of values."""
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        """The number of blocks (the last one may be shorter)."""
        return -(-self.numel // self.block_size)

    @property
    def device(self) -> torch.device:
        """Where the packed codes live."""
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data (codes, absmax and double-quantization state)."""
        parts = (self.packed, self.absmax, self.offset, self.nested_absmax, self.nested_code)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    def to(self, device: torch.device | str) -> NF4Tensor:
        """The same quantized tensor on ``device`` (no copy when it is there already).

        Args:
            device: The target device.

        Returns:
            An ``NF4Tensor`` whose tensors live on ``device``.
        """

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        packed = self.packed.to(device)
        return NF4Tensor(
            packed=packed,
            absmax=self.absmax.to(device),
            shape=self.shape,
            dtype=self.dtype,
            block_size=self.block_size,
            offset=move(self.offset),
            nested_absmax=move(self.nested_absmax),
            nested_code=move(self.nested_code),
            nested_block_size=self.nested_block_size,
        )

    # -- reading the values back ----------------------------------------------------------

    def scales(self) -> Tensor:
        """Each block's absmax as float32, undoing double quantization (as bitsandbytes).

        Returns:
            ``(n_blocks,)`` float32: ``nested_code[absmax] * nested_absmax[block // 256] +
            offset`` with double quantization, else ``absmax``.
        """
        if self.offset is None:
            return self.absmax
        assert self.nested_absmax is not None
        assert self.nested_code is not None
        codes = self.absmax
        fast = scales_native(
            codes, self.nested_code, self.nested_absmax, self.offset, self.nested_block_size
        )
        if fast is not None:  # the C kernel: one pass, the same roundings
            return fast
        n = codes.numel()
        values = self.nested_code[codes.long()]  # (n_blocks,)
        scale = self.nested_absmax.repeat_interleave(self.nested_block_size)[:n]
        return values * scale + self.offset  # two roundings, as bitsandbytes

    def codes(self) -> Tensor:
        """The 4-bit codes, one per value, in order (for inspection and tests).

        Returns:
            ``(numel,)`` uint8 in ``[0, 15]``.
        """
        flat = self.packed.reshape(-1)
        both = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)
        return both[: self.numel]

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """The tensor back in floating point: ``code[index] * absmax`` per value.

        Each product is computed in float32 and rounded once to ``dtype``, as bitsandbytes'
        ``dequantize_4bit`` does, so the result equals it exactly.

        Args:
            dtype: float32, float16 or bfloat16; the original dtype by default.

        Returns:
            A tensor of ``shape`` and ``dtype``.
        """
        out_dtype = self.dtype if dtype is None else dtype
        _check_float_dtype(out_dtype, "dtype")
        out = torch.empty(self.numel, dtype=out_dtype, device=self.device)
        _dequantize_into(self.packed.reshape(-1), self.scales(), self.block_size, 0, out)
        return out.view(self.shape)

    def dequantize_range(self, start: int, stop: int, out: Tensor, scales: Tensor) -> None:
        """Write values ``start..stop`` of the flattened tensor into ``out``.

        Args:
            start: The first value; a multiple of ``block_size``.
            stop: One past the last value.
            out: ``(stop - start,)`` contiguous, float32, float16 or bfloat16.
            scales: ``self.scales()`` (computed once by a caller that reads many ranges).
        """
        if start % self.block_size or not 0 <= start <= stop <= self.numel:
            raise ConfigError(
                f"NF4Tensor.dequantize_range: [{start}, {stop}) is not a block-aligned range "
                f"of the {self.numel} values",
                hint=f"start at a multiple of block_size ({self.block_size})",
            )
        _dequantize_into(self.packed.reshape(-1), scales, self.block_size, start, out)

    # -- bitsandbytes' state-dict layout ---------------------------------------------------

    def state_dict(self, prefix: str = "weight") -> dict[str, Tensor]:
        """The tensors bitsandbytes' ``Linear4bit`` saves for its weight, under its names.

        Args:
            prefix: The weight's key (``"model.layers.0.mlp.up_proj.weight"``).

        Returns:
            ``{prefix: packed (uint8), prefix + ".absmax", ".quant_map" (16 float32),
            [".nested_absmax", ".nested_quant_map",] ".quant_state.bitsandbytes__nf4"}``:
            the last one is bitsandbytes' JSON of the shape, dtype, block sizes and offset,
            as uint8 bytes.
        """
        info: dict[str, object] = {
            "quant_type": "nf4",
            "blocksize": self.block_size,
            "dtype": _dtype_name(self.dtype),
            "shape": list(self.shape),
        }
        tensors = {
            prefix: self.packed,
            f"{prefix}.absmax": self.absmax,
            f"{prefix}.quant_map": nf4_code(self.device),
        }
        if self.offset is not None:
            assert self.nested_absmax is not None
            assert self.nested_code is not None
            tensors[f"{prefix}.nested_absmax"] = self.nested_absmax
            tensors[f"{prefix}.nested_quant_map"] = self.nested_code.clone()
            info["nested_blocksize"] = self.nested_block_size
            info["nested_dtype"] = "float32"
            info["nested_offset"] = float(self.offset.item())
        blob = json.dumps(info).encode("utf-8")
        tensors[f"{prefix}.{_QUANT_TYPE_KEY}"] = torch.tensor(
            list(blob), dtype=torch.uint8, device=self.device
        )
        return tensors

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, Tensor], prefix: str = "weight") -> NF4Tensor:
        """Read one NF4 weight from bitsandbytes' state-dict layout (ours or bitsandbytes').

        Args:
            tensors: A state dict holding ``prefix`` and its ``prefix + ".absmax"``, ...
                entries (other keys are ignored).
            prefix: The weight's key.

        Returns:
            The quantized tensor, on the device of ``tensors[prefix]``.

        Raises:
            FormatError: A key is missing, a tensor has the wrong dtype or size, or the
                ``quant_state`` JSON is damaged.
            CompatibilityError: The weight is bitsandbytes' FP4 (not NF4), or its
                ``quant_map`` is not the NF4 codebook.
        """
        if f"{prefix}.quant_state.bitsandbytes__fp4" in tensors:
            raise CompatibilityError(
                f"{prefix} is quantized to bitsandbytes' FP4, not NF4",
                tensor=prefix,
                hint="quantize the model with quant_type='nf4' (bnb_4bit_quant_type='nf4')",
            )
        info = _read_info(tensors, prefix)
        packed = _need(tensors, prefix, prefix)
        if packed.dtype != torch.uint8:  # bitsandbytes' quant_storage: the same bytes
            packed = packed.contiguous().reshape(-1).view(torch.uint8)
        packed = packed.reshape(-1, 1)
        shape = torch.Size(info.shape)
        numel = math.prod(shape)
        block_size = info.block_size
        n_blocks = -(-numel // block_size)
        _expect(packed, prefix, torch.uint8, (numel + 1) // 2)
        quant_map = _need(tensors, f"{prefix}.quant_map", prefix)
        if quant_map.shape != (16,) or not torch.equal(
            quant_map.float().cpu(), nf4_code()
        ):  # bitsandbytes' kernels ignore it; a different map is not NF4
            raise CompatibilityError(
                f"{prefix}.quant_map is not the NF4 codebook",
                tensor=f"{prefix}.quant_map",
                hint="only bitsandbytes' standard NF4 is supported",
            )
        absmax = _need(tensors, f"{prefix}.absmax", prefix)
        if info.nested_offset is None or info.nested_block_size is None:
            _expect(absmax, f"{prefix}.absmax", torch.float32, n_blocks)
            return cls(
                packed=packed,
                absmax=absmax,
                shape=shape,
                dtype=info.dtype,
                block_size=block_size,
            )
        _expect(absmax, f"{prefix}.absmax", torch.uint8, n_blocks)
        nested_block_size = info.nested_block_size
        nested_absmax = _need(tensors, f"{prefix}.nested_absmax", prefix)
        _expect(
            nested_absmax,
            f"{prefix}.nested_absmax",
            torch.float32,
            -(-n_blocks // nested_block_size),
        )
        nested_code = _need(tensors, f"{prefix}.nested_quant_map", prefix)
        _expect(nested_code, f"{prefix}.nested_quant_map", torch.float32, 256)
        offset = torch.tensor(info.nested_offset, dtype=torch.float32, device=packed.device)
        return cls(
            packed=packed,
            absmax=absmax,
            shape=shape,
            dtype=info.dtype,
            block_size=block_size,
            offset=offset,
            nested_absmax=nested_absmax.reshape(-1),
            nested_code=nested_code.reshape(-1),
            nested_block_size=nested_block_size,
        )

    def __repr__(self) -> str:
        """Shape, dtype and layout (not the values)."""
        extra = ", double_quant" if self.double_quant else ""
        return (
            f"NF4Tensor(shape={tuple(self.shape)}, dtype={self.dtype}, "
            f"block_size={self.block_size}{extra})"
        )


def check_block_size(block_size: object, *, owner: str) -> int:
    """Return ``block_size`` when bitsandbytes supports it for 4-bit quantization.

    Args:
        block_size: What the caller passed.
        owner: Who checks, for the message.

    Returns:
        ``block_size``.

    Raises:
        ConfigError: It is not one of `lego.peft.nf4.BLOCK_SIZES`.
    """
    value = check_int("block_size", block_size, minimum=1, owner=owner)
    if value not in BLOCK_SIZES:
        raise ConfigError(
            f"{owner}: block_size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {value}",
            key="block_size",
            hint="use 64 (bitsandbytes' and QLoRA's default)",
        )
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_float_dtype(dtype: object, name: str) -> torch.dtype:
    if dtype not in _FLOAT_DTYPES.values():
        raise ConfigError(
            f"NF4: {name} must be float32, float16 or bfloat16, got {dtype}",
            key=name,
            hint="pass torch.float32, torch.float16 or torch.bfloat16",
        )
    assert isinstance(dtype, torch.dtype)
    return dtype


def _need(tensors: Mapping[str, Tensor], key: str, prefix: str) -> Tensor:
    value = tensors.get(key)
    if not isinstance(value, Tensor):
        raise FormatError(
            f"the NF4 weight {prefix} has no {key!r} entry",
            key=key,
            tensor=prefix,
            hint="the state dict is not bitsandbytes' 4-bit layout, or is damaged",
        )
    return value


def _expect(tensor: Tensor, key: str, dtype: torch.dtype, numel: int) -> None:
    if tensor.dtype != dtype or tensor.numel() != numel:
        raise FormatError(
            f"{key} is {tensor.dtype} with {tensor.numel()} values, expected {dtype} with {numel}",
            tensor=key,
            hint="the state dict does not match its quant_state; it is damaged",
        )


@dataclass(frozen=True)
class _Info:
    """The non-tensor state bitsandbytes packs into ``quant_state.bitsandbytes__nf4``."""

    block_size: int
    shape: list[int]
    dtype: torch.dtype
    nested_block_size: int | None = None
    nested_offset: float | None = None


def _read_info(tensors: Mapping[str, Tensor], prefix: str) -> _Info:
    """Bitsandbytes' JSON of the non-tensor state, checked."""
    key = f"{prefix}.{_QUANT_TYPE_KEY}"
    blob = _need(tensors, key, prefix)
    try:
        info = json.loads(bytes(blob.detach().to("cpu", torch.uint8).reshape(-1).tolist()))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(
            f"{key} is not bitsandbytes' JSON quant state: {exc}",
            tensor=key,
            hint="the state dict is damaged",
        ) from exc
    if not isinstance(info, dict):
        raise FormatError(f"{key} is not a JSON object", tensor=key, hint="it is damaged")
    known = {
        "quant_type",
        "blocksize",
        "dtype",
        "shape",
        "nested_blocksize",
        "nested_dtype",
        "nested_offset",
    }
    unknown = sorted(set(info) - known)
    if unknown:
        raise CompatibilityError(
            f"{key} has fields this reader does not know: {', '.join(unknown)}",
            tensor=key,
            hint="it was written by a newer bitsandbytes layout; re-quantize the model",
        )

    def bad(field: str, why: str) -> FormatError:
        return FormatError(f"{key}: {field} {why}", tensor=key, key=field, hint="it is damaged")

    if info.get("quant_type") != "nf4":
        raise CompatibilityError(
            f"{key}: quant_type is {info.get('quant_type')!r}, not 'nf4'",
            tensor=key,
            hint="only NF4 is supported",
        )
    block_size = info.get("blocksize")
    if not isinstance(block_size, int) or block_size not in BLOCK_SIZES:
        raise bad("blocksize", f"is {block_size!r}, not one of {BLOCK_SIZES}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad("shape", f"is {shape!r}, not a list of sizes")
    dtype = _FLOAT_DTYPES.get(str(info.get("dtype")))
    if dtype is None:
        raise bad("dtype", f"is {info.get('dtype')!r}, not one of {sorted(_FLOAT_DTYPES)}")
    nested = [k for k in ("nested_blocksize", "nested_dtype", "nested_offset") if k in info]
    if nested and len(nested) != 3:
        raise bad("nested_*", "fields are incomplete")
    if nested:
        nested_block_size = info["nested_blocksize"]
        if not isinstance(nested_block_size, int) or nested_block_size < 1:
            raise bad("nested_blocksize", f"is {nested_block_size!r}")
        if info["nested_dtype"] != "float32":
            raise bad("nested_dtype", f"is {info['nested_dtype']!r}, not 'float32'")
        offset = info["nested_offset"]
        if (
            isinstance(offset, bool)
            or not isinstance(offset, int | float)
            or not math.isfinite(offset)
        ):
            raise bad("nested_offset", f"is {offset!r}, not a finite number")
        return _Info(block_size, shape, dtype, nested_block_size, float(offset))
    return _Info(block_size, shape, dtype)


# -- quantizing -------------------------------------------------------------------------------


def quantize_nf4(weight: Tensor, block_size: int = 64, double_quant: bool = True) -> NF4Tensor:
    """Quantize a tensor to NF4 exactly as bitsandbytes' ``quantize_4bit`` does on the CPU.

    Each value ``v`` of a block with absolute maximum ``a`` becomes the index of the NF4
    value nearest ``v * (1 / a)`` (ties to the lower one). A last block shorter than
    ``block_size`` is scaled by its own absmax (as bitsandbytes: ``v / a``); an odd number
    of values pads the last low nibble with 7, the code of 0.0 (as bitsandbytes).

    Args:
        weight: A float32, float16 or bfloat16 tensor of any shape (values must be finite).
        block_size: Values per block, one of `lego.peft.nf4.BLOCK_SIZES`.
        double_quant: Quantize the absmax values too (bitsandbytes' ``compress_statistics``).

    Returns:
        The quantized tensor, on ``weight``'s device.

    Raises:
        ConfigError: ``block_size`` is not supported, or ``weight`` is not a floating-point
            tensor with at least one value.
        DataError: ``weight`` has NaN or infinite values.
    """
    check_block_size(block_size, owner="quantize_nf4")
    check_bool("double_quant", double_quant, owner="quantize_nf4")
    if not isinstance(weight, Tensor):
        raise ConfigError(
            f"quantize_nf4: weight must be a tensor, got {type(weight).__name__}",
            key="weight",
            hint="pass a float32, float16 or bfloat16 tensor",
        )
    _check_float_dtype(weight.dtype, "weight.dtype")
    if weight.numel() == 0:
        raise ConfigError(
            "quantize_nf4: weight has no values", key="weight", hint="pass a non-empty tensor"
        )
    flat = weight.detach().reshape(-1)
    n = flat.numel()
    n_blocks = -(-n // block_size)
    device = flat.device
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=device)
    _quantize_into(flat, block_size, packed, absmax)
    if not bool(torch.isfinite(absmax).all()):
        bad = int(torch.nonzero(~torch.isfinite(absmax))[0]) * block_size
        raise DataError(
            f"quantize_nf4: the weight has NaN or infinite values (block starting at {bad})",
            key="weight",
            hint="only finite weights can be quantized; check the checkpoint",
        )
    shape, dtype = weight.shape, weight.dtype
    if not double_quant:
        return NF4Tensor(
            packed=packed.view(-1, 1),
            absmax=absmax,
            shape=shape,
            dtype=dtype,
            block_size=block_size,
        )
    offset = absmax.mean()
    codes, nested_absmax = _quantize_blockwise_8bit(absmax - offset, NESTED_BLOCK_SIZE)
    return NF4Tensor(
        packed=packed.view(-1, 1),
        absmax=codes,
        shape=shape,
        dtype=dtype,
        block_size=block_size,
        offset=offset,
        nested_absmax=nested_absmax,
        nested_code=_cached("dynamic", device).clone(),  # its own: a buffer of a layer
    )


def _quantize_into(flat: Tensor, block_size: int, packed: Tensor, absmax: Tensor) -> None:
    """Quantize ``flat`` into ``packed`` and ``absmax``, one range of blocks at a time.

    bitsandbytes' arithmetic (its CPU ``quantize_4bit``): full blocks are multiplied by
    ``1 / max(absmax, 1e-38)``, a short last block is divided by its absmax (stored
    clamped to ``1e-38``), and the code is the number of NF4 midpoints below the scaled
    value (``torch.bucketize``'s rule, found with one lookup and one comparison:
    ``_code_cells``). An odd count is padded
    with the code of 0.0.
    """
    n = flat.numel()
    full_blocks = n // block_size
    per_piece = max(1, _PIECE_VALUES // block_size)
    size = min(per_piece * block_size, n + 1)
    scratch = _CodeScratch(size, flat.device)
    for first in range(0, full_blocks, per_piece):
        last = min(full_blocks, first + per_piece)
        blocks = flat[first * block_size : last * block_size].view(last - first, block_size)
        blocks = blocks.to(torch.float32)  # exact; no copy for float32
        amax = absmax[first:last]
        torch.amax(blocks.abs(), dim=1, out=amax)
        inverse = 1.0 / amax.clamp(min=1e-38)  # (blocks,)
        count = (last - first) * block_size
        scaled = scratch.scaled[:count]
        torch.mul(blocks, inverse.view(-1, 1), out=scaled.view(last - first, block_size))
        codes = scratch.codes(scaled)
        _pack(codes, packed[first * block_size // 2 : last * block_size // 2])
    rem = n - full_blocks * block_size
    if rem:
        tail = flat[full_blocks * block_size :].float()
        amax = tail.abs().max().clamp(min=1e-38)
        absmax[full_blocks] = amax
        padded = torch.full((rem + rem % 2,), 7, dtype=torch.uint8, device=flat.device)
        padded[:rem] = scratch.codes(tail / amax)
        _pack(padded, packed[full_blocks * block_size // 2 :])


class _CodeScratch:
    """Reused temporaries for finding NF4 codes, ``size`` values at a time."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.scaled = torch.empty(size, dtype=torch.float32, device=device)
        self._cell = torch.empty(size, dtype=torch.float32, device=device)
        self._index = torch.empty(size, dtype=torch.int32, device=device)
        self._codes = torch.empty(size, dtype=torch.uint8, device=device)
        self._above = torch.empty(size, dtype=torch.bool, device=device)
        self._cell_codes = _cached("cell_codes", device)
        self._cell_bounds = _cached("cell_bounds", device)

    def codes(self, scaled: Tensor) -> Tensor:
        """``#{midpoints < x}`` for each ``x`` of ``scaled`` (bucketize's index), uint8.

        One lookup of the value's cell and one comparison (``_code_cells``) instead of
        15 comparisons; a value outside ``[-1, 1]`` (rounding) falls in the end cells.
        """
        n = scaled.numel()
        cell, index, codes, above = (
            self._cell[:n],
            self._index[:n],
            self._codes[:n],
            self._above[:n],
        )
        torch.add(scaled, 1.0, out=cell)
        cell.mul_(_CELLS / 2)
        index.copy_(cell)  # truncation is the floor here (cell >= 0 up to rounding)
        index.clamp_(0, _CELLS - 1)
        torch.index_select(self._cell_codes, 0, index, out=codes)
        torch.index_select(self._cell_bounds, 0, index, out=cell)
        torch.gt(scaled, cell, out=above)
        codes.add_(above)
        return codes


def _pack(codes: Tensor, out: Tensor) -> None:
    """Two codes per byte, the first in the high nibble: ``(2m,) -> (m,)`` uint8."""
    pairs = codes.view(-1, 2)
    torch.bitwise_left_shift(pairs[:, 0], 4, out=out)
    out.bitwise_or_(pairs[:, 1])


def _quantize_blockwise_8bit(values: Tensor, block_size: int) -> tuple[Tensor, Tensor]:
    """Bitsandbytes' CPU 8-bit blockwise quantization with the dynamic map.

    Its kernel (``quantize_cpu``) scales each block by ``1 / absmax`` and finds the code
    through a 65536-entry table of ``[-1, 1]``: index ``((v + 1) * 0.5 * 65535 + 0.5)``
    truncated; an all-zero block gets code 0.

    Args:
        values: ``(n,)`` float32.
        block_size: Values per block.

    Returns:
        ``(codes (n,) uint8, absmax (ceil(n / block_size),) float32)``.
    """
    n = values.numel()
    n_blocks = -(-n // block_size)
    padded = torch.zeros(n_blocks * block_size, dtype=torch.float32, device=values.device)
    padded[:n] = values
    blocks = padded.view(n_blocks, block_size)
    absmax = blocks.abs().amax(dim=1)  # (n_blocks,)
    zero = absmax == 0
    inverse = torch.where(zero, torch.zeros_like(absmax), 1.0 / absmax)
    scaled = (blocks * inverse.view(-1, 1)).clamp_(-1.0, 1.0)
    index = ((scaled + 1.0) * 0.5 * float(_LUT_SIZE - 1) + 0.5).to(torch.int32)
    lut = _cached("dynamic_lut", values.device)
    codes = lut[index.view(-1).long()].view(n_blocks, block_size)
    codes[zero] = 0
    return codes.reshape(-1)[:n].contiguous(), absmax


# -- dequantizing -----------------------------------------------------------------------------


def _dequantize_into(
    packed: Tensor, scales: Tensor, block_size: int, start: int, out: Tensor
) -> None:
    """Write values ``start .. start + out.numel()`` of a packed NF4 tensor into ``out``.

    With lego-peft's C kernel where it runs (`lego.peft.native`: one pass over memory),
    else with PyTorch (``_dequantize_torch``); both give the same values bit for bit.

    Args:
        packed: ``(ceil(numel / 2),)`` uint8.
        scales: ``(n_blocks,)`` float32 absmax.
        block_size: Values per block.
        start: The first value, a multiple of ``block_size``.
        out: ``(m,)`` contiguous float32, float16 or bfloat16.
    """
    code = _cached("code", packed.device)
    if not dequantize_native(packed, scales, code, block_size, start, out):
        _dequantize_torch(packed, scales, block_size, start, out)


def _dequantize_torch(
    packed: Tensor, scales: Tensor, block_size: int, start: int, out: Tensor
) -> None:
    """``_dequantize_into`` in PyTorch (any device; the reference for the C kernel).

    Per range of blocks (``_DEQUANT_PIECE_VALUES``, so the temporaries stay in the cache and
    are reused): the bytes become int32 indices, one gather of a 256-entry table turns
    each byte into its two NF4 values (as one int64), then one multiply applies each
    block's absmax in float32 and writes ``out`` (rounding once to its dtype), so ``out``
    is written once.

    Args:
        packed: ``(ceil(numel / 2),)`` uint8.
        scales: ``(n_blocks,)`` float32 absmax.
        block_size: Values per block.
        start: The first value, a multiple of ``block_size``.
        out: ``(m,)`` contiguous float32, float16 or bfloat16.
    """
    m = out.numel()
    table = _cached("pairs", packed.device)
    per_piece = max(1, _DEQUANT_PIECE_VALUES // block_size) * block_size
    size = min(per_piece, m + m % 2)
    index = torch.empty(size // 2, dtype=torch.int32, device=packed.device)
    scratch = torch.empty(size, dtype=torch.float32, device=packed.device)
    for offset in range(0, m, per_piece):
        count = min(per_piece, m - offset)
        n_bytes = (count + 1) // 2
        first_byte = (start + offset) // 2
        idx = index[:n_bytes]
        idx.copy_(packed[first_byte : first_byte + n_bytes])
        values = scratch[: 2 * n_bytes]
        torch.index_select(table, 0, idx, out=values.view(torch.int64))
        first_block = (start + offset) // block_size
        full = count // block_size
        dest = out[offset : offset + count]
        if full:
            torch.mul(
                values[: full * block_size].view(full, block_size),
                scales[first_block : first_block + full].view(-1, 1),
                out=dest[: full * block_size].view(full, block_size),
            )
        if count > full * block_size:  # the short last block of the tensor
            torch.mul(
                values[full * block_size : count],
                scales[first_block + full],
                out=dest[full * block_size :],
            )
