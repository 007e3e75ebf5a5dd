"""Fixed-length training windows over a memory-mapped token file.

[`TokenDataset`][lego.data.dataset.TokenDataset] maps a prepared split (``train.bin`` /
``val.bin`` + ``meta.json``, see [`lego.data.meta`][lego.data.meta]) or a bare ``.bin`` file
read-only with ``np.memmap``; nothing is read until a window is asked for. Window ``i`` is
``context_length + 1`` consecutive tokens; ``input_ids`` are the first ``context_length`` and
``labels`` the last ``context_length`` (already shifted, as
[`LMBatch`][lego.protocols.LMBatch] wants).

Two modes:

- ``"sequential"``: window ``i`` starts at ``i * stride``. With the default
  ``stride = context_length`` the windows tile the file without overlap (the last token of a
  window's labels is the first input of the next), so one pass sees every token once.
- ``"random"``: window ``i`` starts at a pseudo-random offset in
  ``[0, n_tokens - context_length - 1]``, a keyed hash of ``(seed, epoch, i)`` (nanoGPT's
  ``get_batch`` sampling, made deterministic and resumable). The dataset keeps the same
  length as in sequential mode, so an "epoch" holds the same number of tokens.

The mapping's pages count in the process's resident memory once touched (they are file
pages the kernel may drop at will);
[`release_pages()`][lego.data.dataset.TokenDataset.release_pages] unmaps them from the
process, which the loader does every few dozen megabytes, so the resident size stays flat
however large the file.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from lego.data.meta import META_FILENAME, TokenMeta, open_split, read_meta
from lego.data.permutation import derive_key, random_offsets
from lego.protocols import ConfigError, DataError, FormatError, did_you_mean

__all__ = ["TokenDataset", "WindowMode"]

WindowMode = Literal["sequential", "random"]
"""How windows are placed: tiled with a stride, or at seeded random offsets."""

_MODES: tuple[str, ...] = ("sequential", "random")
_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class TokenDataset(Dataset[dict[str, torch.Tensor]]):
    """Windows of ``context_length + 1`` tokens over a memory-mapped token file.

    A map-style ``torch.utils.data.Dataset`` too, so it also works with PyTorch's
    ``DataLoader`` (which [`TokenLoader`][lego.data.loader.TokenLoader] outpaces).

    Args:
        path: A prepared-dataset directory, its ``meta.json``, or a bare ``.bin`` file (then
            ``dtype`` is required).
        split: The split to read from a prepared dataset (``"train"``, ``"val"``); ignored
            for a bare ``.bin`` file.
        context_length: Tokens per training example (``T``).
        stride: Distance between window starts in sequential mode; defaults to
            ``context_length`` (non-overlapping windows). Smaller values overlap windows,
            larger ones skip tokens.
        mode: ``"sequential"`` or ``"random"`` (see the module docstring).
        seed: The seed of the random offsets (random mode only).
        dtype: The token dtype of a bare ``.bin`` file (``"uint16"`` or ``"uint32"``);
            checked against ``meta.json`` when both are given.

    Attributes:
        path: The token file.
        meta: The dataset's metadata, or None for a bare ``.bin`` file.
        tokens: The read-only memory-mapped token ids, shape ``(n_tokens,)``.
        context_length: ``T``.
        stride: The sequential stride.
        mode: The window mode.
        seed: The random-mode seed.
        epoch: The epoch used by ``__getitem__`` in random mode (see
            [`set_epoch()`][lego.data.dataset.TokenDataset.set_epoch]).

    Raises:
        ConfigError: On a non-positive ``context_length`` or ``stride``, an unknown mode or
            dtype, or a missing ``dtype`` for a bare file.
        DataError: When the file or split is missing, or the data is shorter than one
            window (the message gives both sizes).
        FormatError: When the file size does not fit the dtype or ``meta.json``.

    Example:
        >>> import tempfile
        >>> from lego.data.prepare import prepare
        >>> from lego.tokenize import RegexBPETokenizer
        >>> tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
        >>> folder = tempfile.mkdtemp()
        >>> _ = prepare(["some text. " * 100] * 4, tok, folder, val_fraction=0.25, workers=1)
        >>> ds = TokenDataset(folder, split="train", context_length=256)
        >>> item = ds[0]
        >>> item["input_ids"].shape, item["labels"].shape
        (torch.Size([256]), torch.Size([256]))
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        split: str = "train",
        context_length: int,
        stride: int | None = None,
        mode: WindowMode = "sequential",
        seed: int = 0,
        dtype: str | None = None,
    ) -> None:
        if isinstance(context_length, bool) or context_length < 1:
            raise ConfigError(
                f"context_length must be a positive integer, got {context_length!r}",
                key="context_length",
            )
        stride = context_length if stride is None else stride
        if isinstance(stride, bool) or stride < 1:
            raise ConfigError(
                f"stride must be a positive integer, got {stride!r}",
                key="stride",
                hint="leave it unset for non-overlapping windows",
            )
        if mode not in _MODES:
            raise ConfigError(
                f"unknown window mode {mode!r}", key="mode", hint=did_you_mean(mode, _MODES)
            )
        if dtype is not None and dtype not in _DTYPES:
            raise ConfigError(
                f"unknown token dtype {dtype!r}", key="dtype", hint=did_you_mean(dtype, _DTYPES)
            )
        self.context_length = context_length
        self.stride = stride
        self.mode: WindowMode = mode
        self.seed = seed
        self.epoch = 0
        self.split = split
        self._source = Path(path)
        self._dtype_name = dtype
        self.path, self.meta, self.tokens = self._open()
        self._check_length()

    # ---------------------------------------------------------------------------- opening

    def _open(self) -> tuple[Path, TokenMeta | None, np.ndarray[Any, np.dtype[Any]]]:
        source = self._source
        if source.is_dir() or source.name == META_FILENAME:
            meta = read_meta(source)
            if self._dtype_name is not None and self._dtype_name != meta.dtype:
                raise ConfigError(
                    f"dtype {self._dtype_name!r} was given but meta.json says {meta.dtype!r}",
                    path=source,
                    key="dtype",
                    hint="leave dtype unset for a prepared dataset",
                )
            folder = source if source.is_dir() else source.parent
            tokens = open_split(folder, self.split, meta=meta)
            return folder / meta.splits[self.split].file, meta, tokens
        if not source.exists():
            raise DataError(
                "no token file or prepared dataset here",
                path=source,
                hint="run `lego-data prepare` first, or check the path",
            )
        if self._dtype_name is None:
            raise ConfigError(
                "a bare token file needs its dtype",
                path=source,
                key="dtype",
                hint="pass dtype='uint16' or 'uint32', or point at the directory with meta.json",
            )
        np_dtype = _DTYPES[self._dtype_name]
        size = source.stat().st_size
        if size % np_dtype.itemsize:
            raise FormatError(
                f"the file holds {size} bytes, not a whole number of {self._dtype_name} tokens",
                path=source,
                hint="check the dtype, or prepare the data again",
            )
        if size == 0:
            return source, None, np.zeros(0, dtype=np_dtype)
        return source, None, np.memmap(source, dtype=np_dtype, mode="r")

    def _check_length(self) -> None:
        need = self.context_length + 1
        have = int(self.tokens.shape[0])
        if have < need:
            where = f"the {self.split} split" if self.meta is not None else "the token file"
            raise DataError(
                f"context_length {self.context_length} needs at least {need} tokens "
                f"(context + 1 for the shifted labels), but {where} holds {have}",
                path=self.path,
                key="context_length",
                hint=f"use context_length <= {max(have - 1, 0)} or prepare more data",
            )

    # ------------------------------------------------------------------------- properties

    @property
    def n_tokens(self) -> int:
        """Token ids in the file."""
        return int(self.tokens.shape[0])

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of the token file (``<u2`` or ``<u4``)."""
        return self.tokens.dtype

    def __len__(self) -> int:
        """Windows in one epoch: ``(n_tokens - context_length - 1) // stride + 1``."""
        return (self.n_tokens - self.context_length - 1) // self.stride + 1

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random offsets ``__getitem__`` returns (random mode).

        Args:
            epoch: The epoch number (0-based).
        """
        self.epoch = epoch

    # ---------------------------------------------------------------------------- windows

    def window_starts(
        self, indices: npt.ArrayLike, *, epoch: int | None = None
    ) -> npt.NDArray[np.int64]:
        """Return the first token offset of each window.

        Args:
            indices: Window indices in ``range(len(self))``, any shape.
            epoch: The epoch (random mode); defaults to ``self.epoch``.

        Returns:
            Token offsets, same shape, dtype int64; each window is
            ``tokens[start : start + context_length + 1]``.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if self.mode == "sequential":
            return idx * self.stride
        key = derive_key(self.seed, self.epoch if epoch is None else epoch)
        return random_offsets(idx, key=key, high=self.n_tokens - self.context_length)

    def gather(
        self,
        starts: npt.NDArray[np.int64],
        *,
        out: npt.NDArray[Any] | None = None,
        index_buffer: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[Any]:
        """Copy the windows that begin at ``starts`` out of the mapping.

        One fancy-indexing ``np.take`` over the memory map; the index and output buffers can
        be preallocated and reused (the loader does).

        Args:
            starts: Window starts, shape ``(B,)``, from
                [`window_starts()`][lego.data.dataset.TokenDataset.window_starts].
            out: Where to write, shape ``(B, T + 1)``, the file's dtype; allocated when None.
            index_buffer: Scratch space for the indices, shape ``(B, T + 1)``, int64.

        Returns:
            The windows, shape ``(B, T + 1)``, in the file's dtype (``out`` when given).
        """
        width = self.context_length + 1
        rows = int(starts.shape[0])
        if index_buffer is None:
            index_buffer = np.empty((rows, width), dtype=np.int64)
        if out is None:
            out = np.empty((rows, width), dtype=self.tokens.dtype)
        np.add(starts[:, None], np.arange(width, dtype=np.int64), out=index_buffer)
        np.take(self.tokens, index_buffer, out=out)
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Return window ``index`` as ``input_ids`` and shifted ``labels``.

        Args:
            index: In ``range(-len(self), len(self))``.

        Returns:
            ``{"input_ids": (T,), "labels": (T,)}``, both int64 tensors.

        Raises:
            IndexError: When ``index`` is out of range.
        """
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"window {index} is outside range({n})")
        start = int(self.window_starts([index % n])[0])
        window = np.asarray(self.tokens[start : start + self.context_length + 1], dtype=np.int64)
        ids = torch.from_numpy(window)
        return {"input_ids": ids[:-1], "labels": ids[1:]}

    # ----------------------------------------------------------------------------- memory

    def release_pages(self) -> bool:
        """Unmap the pages read so far from this process (they stay in the page cache).

        Resident memory (RSS) counts every touched page of a memory map until the kernel
        needs it back; this drops them at once with ``madvise(MADV_DONTNEED)``, so a pass
        over a file larger than RAM keeps a flat RSS. Later reads fault the pages back in
        from the page cache. Where ``madvise`` is unavailable this does nothing.

        Returns:
            True when the pages were released.
        """
        mapping = getattr(self.tokens, "_mmap", None)
        advice = getattr(mmap, "MADV_DONTNEED", None)
        if not isinstance(mapping, mmap.mmap) or advice is None:
            return False
        try:
            mapping.madvise(advice)
        except (OSError, ValueError):
            return False
        return True

    # --------------------------------------------------------------------------- pickling

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the mapped data: a worker process re-maps the file instead.
        state = self.__dict__.copy()
        del state["tokens"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        _, _, self.tokens = self._open()

    def __repr__(self) -> str:
        return (
            f"TokenDataset({str(self.path)!r}, context_length={self.context_length}, "
            f"stride={self.stride}, mode={self.mode!r}, windows={len(self)}, "
            f"tokens={self.n_tokens})"
        )
