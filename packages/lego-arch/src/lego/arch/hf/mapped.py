"""Zero-copy tensors of a safetensors file: views on a private memory map.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor:
``dtype``, ``shape``, ``data_offsets`` into the data section) and the raw data. Mapping the
file copy-on-write (``torch.UntypedStorage.from_file(..., shared=False)``) and viewing each
tensor at its offset loads nothing up front: pages are read from disk when first touched,
stay shared with the page cache while only read, and become private memory only where
written (training). Writes never reach the file.

[`from_hf()`][lego.arch.hf.io.from_hf] uses these views whenever a parameter is the stored
tensor as it is (same dtype, on the CPU, no transform); otherwise it reads a private copy
with plain file reads ([`read()`][lego.arch.hf.mapped.MappedSafetensors.read]), so the
file's pages never count twice. Keep in mind that the views read the file lazily: replace
a model directory atomically (``to_hf`` does) rather than rewriting its files in place while
a model uses them.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, cast

import torch

from lego.protocols import FormatError

__all__ = ["SAFETENSORS_DTYPES", "MappedSafetensors"]

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
"""safetensors' dtype names and the torch dtypes they hold."""

_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


class MappedSafetensors:
    """The tensors of one safetensors file as views on a copy-on-write memory map.

    Args:
        path: The ``.safetensors`` file.

    Raises:
        FormatError: The file is too short, its header is not a safetensors header, or a
            tensor's offsets do not match its dtype and shape or lie outside the file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise self._corrupt("the file is shorter than a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(_MAX_HEADER, size - 8):
                raise self._corrupt(f"the header length {length} does not fit the file")
            raw = handle.read(length)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise self._corrupt("the header is not JSON") from None
        if not isinstance(header, dict):
            raise self._corrupt("the header is not a JSON object")
        self._base = 8 + length
        self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int]] = {}
        for name, entry in header.items():
            if name != "__metadata__":
                self._entries[name] = self._entry(name, entry, size - self._base)
        self._storage = cast(
            torch.UntypedStorage,
            torch.UntypedStorage.from_file(str(self.path), shared=False, nbytes=size),
        )

    def _corrupt(self, message: str, tensor: str | None = None) -> FormatError:
        return FormatError(
            f"not a valid safetensors file: {message}",
            path=self.path,
            tensor=tensor,
            hint="the file is truncated or corrupt; download or write it again",
        )

    def _entry(
        self, name: str, entry: Any, data_size: int
    ) -> tuple[torch.dtype, tuple[int, ...], int]:
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise self._corrupt("a tensor entry is malformed", name) from None
        numel = 1
        for dim in shape:
            numel *= dim
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if not 0 <= begin <= end <= data_size or end - begin != numel * itemsize:
            raise self._corrupt("a tensor's offsets do not match its shape", name)
        return dtype, shape, begin

    def read(self, name: str) -> torch.Tensor:
        """A private copy of the tensor, read with plain file reads (no mapping).

        For tensors about to be transformed, cast or moved: the bytes go straight from the
        page cache into one new buffer, and none of the file's pages become part of this
        process's resident memory.

        Args:
            name: A tensor name of the file.

        Returns:
            A new CPU tensor that owns its memory.
        """
        dtype, shape, begin = self._entries[name]
        numel = 1
        for dim in shape:
            numel *= dim
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(numel * torch.empty(0, dtype=dtype).element_size())
        with open(self.path, "rb") as handle:
            handle.seek(self._base + begin)
            if handle.readinto(buffer) != len(buffer):
                raise self._corrupt("the file ends inside a tensor", name)
        return torch.frombuffer(buffer, dtype=dtype).view(shape)

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of a tensor.

        Args:
            name: A tensor name of the file.

        Returns:
            Its torch dtype.
        """
        return self._entries[name][0]

    def keys(self) -> list[str]:
        """The tensor names, in header order."""
        return list(self._entries)

    def view(self, name: str) -> torch.Tensor | None:
        """The tensor as a view on the map, or None when its offset is not aligned for it.

        Args:
            name: A tensor name of the file.

        Returns:
            A CPU tensor sharing the mapped pages (writes stay private to this process), or
            None when the data is not aligned to the dtype's size (read a copy instead).
        """
        dtype, shape, begin = self._entries[name]
        itemsize = torch.empty(0, dtype=dtype).element_size()
        offset = self._base + begin
        if offset % itemsize:
            return None
        strides: list[int] = []
        step = 1
        for dim in reversed(shape):  # row-major (contiguous) strides
            strides.insert(0, step)
            step *= max(dim, 1)
        tensor = torch.empty(0, dtype=dtype)
        return tensor.set_(self._storage, offset // itemsize, shape, strides)
