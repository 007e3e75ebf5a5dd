"""A preallocated ("static") key/value cache for incremental decoding.

[`StaticLayerKVCache`][lego.layers.StaticLayerKVCache] holds the keys and values of one
attention layer in two buffers of shape ``(B, n_kv_heads, max_seq_len, head_dim)``, allocated
once. Each [`update()`][lego.layers.kv_cache.StaticLayerKVCache.update] writes the new positions in
place (a slice copy, never a ``torch.cat`` that would reallocate the whole cache every step)
and returns views of the filled part.

[`StaticKVCache`][lego.layers.StaticKVCache] holds one layer cache per transformer block and
does the bookkeeping of all of them at once: ``reset()``, ``crop(length)`` (speculative
decoding), ``reorder(indices)`` (beam search), ``copy_rows(source, rows=..., source_rows=...,
start=...)`` (``n`` completions sharing one prefill; a request prefilled alone joining a
running batch) and ``trim_front(count)`` (dropping leading columns that every row has as
padding).

How the lengths advance. Every layer cache counts its own positions: one ``update`` with
``T`` new keys advances that layer, and only that layer, by ``T``. During one model forward
the blocks run in order, so layer 0 is ahead of layer 1 until layer 1 has run; after the
forward every layer has advanced by the same ``T``. The model-level
[`seq_len`][lego.layers.kv_cache.StaticKVCache.seq_len] is the *common* length, the number
of positions written in every layer (the minimum over layers): it is the cached length
before the forward (what a model reads to build ``position_ids`` and check
``attention_mask``), and it is the new length after the forward. If a forward stops
half-way (an exception in block 3), the layers disagree; ``cache.crop(cache.seq_len)``
brings them back to the last complete step.

Both classes are ``torch.nn.Module`` subclasses and the buffers are registered (not
persistent: they never appear in a ``state_dict``), so ``cache.to(device)`` moves every layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lego.protocols import CompatibilityError, ConfigError, DataError, KVCache, check_int

__all__ = ["StaticLayerKVCache", "StaticKVCache"]


def _check_positive(name: str, value: object, owner: str) -> None:
    """Raise a ConfigError unless ``value`` is an ``int`` of at least 1."""
    check_int(name, value, minimum=1, owner=owner)


def _check_indices(indices: Tensor, batch_size: int, device: torch.device) -> None:
    """Validate a ``reorder`` index tensor: ``(batch_size,)``, integer, in range, same device.

    Raises:
        DataError: On a wrong shape, dtype, device or an index out of ``[0, batch_size)``.
    """
    if not isinstance(indices, Tensor):
        raise DataError(
            f"reorder() takes a tensor of row indices, got {type(indices).__name__}",
            tensor="indices",
            hint="pass torch.tensor([...], dtype=torch.long)",
        )
    if indices.shape != (batch_size,):
        raise DataError(
            f"reorder() needs one index per row, shape ({batch_size},), got {tuple(indices.shape)}",
            tensor="indices",
            hint="give the source row of every row of the new batch (repeats are allowed)",
        )
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise DataError(
            f"reorder() needs integer indices, got dtype {indices.dtype}",
            tensor="indices",
            hint="convert them with .long()",
        )
    if indices.device != device:
        raise CompatibilityError(
            f"the indices are on {indices.device} but the cache is on {device}",
            tensor="indices",
            hint=f"move them with .to({str(device)!r})",
        )
    # One small reduction (and a device sync on GPUs): beam search syncs every step anyway.
    if batch_size and bool(((indices < 0) | (indices >= batch_size)).any()):
        raise DataError(
            f"reorder() indices must lie in [0, {batch_size}), got {indices.tolist()}",
            tensor="indices",
            hint="indices name rows of the current batch",
        )


def _check_rows(name: str, rows: object, batch_size: int, device: torch.device) -> Tensor:
    """Validate the ``rows`` / ``source_rows`` of ``copy_rows``; return them as long on ``device``.

    Raises:
        ConfigError: Not a 1-D integer tensor, or an index out of ``[0, batch_size)``.
    """
    if not isinstance(rows, Tensor):
        raise ConfigError(
            f"copy_rows() takes a tensor of row indices as {name}, got {type(rows).__name__}",
            key=name,
            hint="pass torch.tensor([...], dtype=torch.long)",
        )
    if rows.ndim != 1:
        raise ConfigError(
            f"copy_rows() needs {name} of shape (R,), got {tuple(rows.shape)}",
            key=name,
            hint="give one row index per copied row",
        )
    if rows.dtype.is_floating_point or rows.dtype.is_complex or rows.dtype == torch.bool:
        raise ConfigError(
            f"copy_rows() needs integer {name}, got dtype {rows.dtype}",
            key=name,
            hint="convert them with .long()",
        )
    index = rows.to(device=device, dtype=torch.long)
    if index.numel() and bool(((index < 0) | (index >= batch_size)).any()):
        raise ConfigError(
            f"copy_rows() {name} must lie in [0, {batch_size}), got {rows.tolist()}",
            key=name,
            hint=f"{name} name rows of a cache of {batch_size} rows",
        )
    return index


def _check_copy(
    rows: object,
    source_rows: object,
    start: object,
    *,
    batch_size: int,
    source_batch_size: int,
    source_len: int,
    source_start: object,
    length: object,
    max_seq_len: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, int, int]:
    """Validate every argument of ``copy_rows`` but the source.

    Returns:
        The destination and source rows as long tensors, the first source position and
        the number of positions to copy.

    Raises:
        ConfigError: Bad ``rows`` / ``source_rows`` (see ``_check_rows``), different lengths,
            repeated destination rows, or ``start``, ``source_start`` or ``length`` out of
            range.
    """
    index = _check_rows("rows", rows, batch_size, device)
    source_index = _check_rows("source_rows", source_rows, source_batch_size, device)
    if index.shape != source_index.shape:
        raise ConfigError(
            f"copy_rows() got {index.shape[0]} rows but {source_index.shape[0]} source_rows",
            key="source_rows",
            hint="give one source row for every destination row",
        )
    ordered = index.sort().values
    if bool((ordered[1:] == ordered[:-1]).any()):
        raise ConfigError(
            f"copy_rows() rows must be distinct, got {index.tolist()}",
            key="rows",
            hint="write each destination row once (source_rows may repeat)",
        )
    first = check_int(
        "source_start", source_start, minimum=0, maximum=source_len, owner="copy_rows()"
    )
    count = source_len - first
    if length is not None:
        count = check_int("length", length, minimum=0, maximum=count, owner="copy_rows()")
    check_int("start", start, minimum=0, owner="copy_rows()")
    assert isinstance(start, int)  # for mypy: check_int raised otherwise
    if start + count > max_seq_len:
        raise ConfigError(
            f"copy_rows() cannot write {count} positions from position {start}: the cache "
            f"has room for {max_seq_len}",
            key="start",
            hint=f"use start <= {max_seq_len - count}, or allocate a larger max_seq_len",
        )
    return index, source_index, first, count


def _check_source_layer(
    target: StaticLayerKVCache, source: object, where: str
) -> StaticLayerKVCache:
    """Check that ``source`` is a static layer cache whose heads, size, dtype, device fit.

    Raises:
        CompatibilityError: naming ``source`` (and ``where``, the layer) on any mismatch.
    """
    if not isinstance(source, StaticLayerKVCache):
        raise CompatibilityError(
            f"copy_rows() copies from a {type(target).__name__}, got {type(source).__name__}",
            tensor="source",
            hint="allocate the source cache with the same model's new_kv_cache()",
        )
    for what, mine, theirs in (
        ("n_kv_heads", target.n_kv_heads, source.n_kv_heads),
        ("head_dim", target.head_dim, source.head_dim),
        ("dtype", target.k_cache.dtype, source.k_cache.dtype),
        ("device", target.k_cache.device, source.k_cache.device),
    ):
        if mine != theirs:
            raise CompatibilityError(
                f"copy_rows(): the source cache{where} has {what} {theirs}, this cache {mine}",
                tensor="source",
                hint="copy between caches allocated by the same model with the same dtype "
                "and device",
            )
    return source


def _check_count(count: object, seq_len: int) -> int:
    """Validate ``trim_front``'s ``count``: an int in ``[0, seq_len]``.

    Raises:
        ConfigError: naming ``count``.
    """
    check_int("count", count, minimum=0, owner="trim_front()")
    assert isinstance(count, int)  # for mypy: check_int raised otherwise
    if count > seq_len:
        raise ConfigError(
            f"trim_front() cannot drop {count} positions: the KV cache holds {seq_len}",
            key="count",
            hint=f"pass a count in [0, {seq_len}]",
        )
    return count


class StaticLayerKVCache(nn.Module):
    """The keys and values of one attention layer, preallocated to ``max_seq_len``.

    Satisfies [`lego.protocols.LayerKVCache`][lego.protocols.LayerKVCache]. The buffers
    ``k_cache`` and ``v_cache`` have shape ``(batch_size, n_kv_heads, max_seq_len, head_dim)``;
    positions ``0 .. seq_len - 1`` hold data, the rest is unused room (never read).

    Args:
        batch_size: Rows (sequences) decoded together.
        max_seq_len: Positions the cache has room for (prompt plus new tokens).
        n_kv_heads: Key/value heads of the layer (``n_heads`` for multi-head attention,
            fewer for grouped-query, 1 for multi-query).
        head_dim: Size of one head.
        dtype: Dtype of the buffers; None means torch's default dtype. Allocate the cache in
            the dtype attention computes in (the model's dtype): written keys and values
            are cast to it.
        device: Device of the buffers; None means the default device.

    Raises:
        ConfigError: A size is not a positive int.

    Example:
        >>> cache = StaticLayerKVCache(batch_size=2, max_seq_len=16, n_kv_heads=4, head_dim=8)
        >>> k = v = torch.zeros(2, 4, 5, 8)
        >>> keys, values = cache.update(k, v)
        >>> keys.shape, cache.seq_len
        (torch.Size([2, 4, 5, 8]), 5)
    """

    k_cache: Tensor
    v_cache: Tensor

    def __init__(
        self,
        *,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("max_seq_len", max_seq_len),
            ("n_kv_heads", n_kv_heads),
            ("head_dim", head_dim),
        ):
            _check_positive(name, value, type(self).__name__)
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer(
            "k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False
        )
        self._seq_len = 0

    # -- sizes -------------------------------------------------------------------------

    @property
    def seq_len(self) -> int:
        """Number of positions written so far."""
        return self._seq_len

    @property
    def max_seq_len(self) -> int:
        """Number of positions the cache has room for."""
        return int(self.k_cache.shape[2])

    @property
    def batch_size(self) -> int:
        """Number of rows the cache holds."""
        return int(self.k_cache.shape[0])

    @property
    def n_kv_heads(self) -> int:
        """Number of key/value heads."""
        return int(self.k_cache.shape[1])

    @property
    def head_dim(self) -> int:
        """Size of one head."""
        return int(self.k_cache.shape[3])

    def extra_repr(self) -> str:
        """Sizes and fill level, for ``print(cache)``."""
        return (
            f"batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, "
            f"head_dim={self.head_dim}, seq_len={self.seq_len}/{self.max_seq_len}, "
            f"dtype={self.k_cache.dtype}"
        )

    # -- writing -----------------------------------------------------------------------

    def _check_new(self, name: str, x: Tensor, new_len: int | None) -> None:
        expected = (self.batch_size, self.n_kv_heads, new_len, self.head_dim)
        shape = tuple(x.shape)
        if x.ndim != 4 or any(
            e is not None and s != e for s, e in zip(shape, expected, strict=True)
        ):
            want = f"({self.batch_size}, {self.n_kv_heads}, T_new, {self.head_dim})"
            raise CompatibilityError(
                f"new {'keys' if name == 'k' else 'values'} have shape {shape}, the cache "
                f"takes {want}",
                tensor=name,
                hint="allocate the cache with the batch size, n_kv_heads and head_dim of "
                "the attention layer that uses it",
            )
        if x.device != self.k_cache.device:
            raise CompatibilityError(
                f"new {'keys' if name == 'k' else 'values'} are on {x.device} but the cache "
                f"is on {self.k_cache.device}",
                tensor=name,
                hint="move the cache with cache.to(device) before decoding",
            )

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys and values after the filled part; return everything so far.

        The new positions are copied into the preallocated buffers in place (cast to the
        cache's dtype), and this layer's ``seq_len`` advances by ``T_new``.

        Args:
            k: New keys, shape ``(B, n_kv_heads, T_new, head_dim)``.
            v: New values, shape ``(B, n_kv_heads, T_new, head_dim)``.

        Returns:
            ``(keys, values)`` for all positions so far, each
            ``(B, n_kv_heads, seq_len + T_new, head_dim)``: views of the buffers, valid until
            the next write, ``crop``, ``reorder`` or ``reset``.

        Raises:
            CompatibilityError: ``k`` or ``v`` does not fit the cache (batch size, heads,
                head size, device) or they differ in length.
            DataError: The new positions do not fit in ``max_seq_len``.
        """
        self._check_new("k", k, None)
        new_len = int(k.shape[2])
        self._check_new("v", v, new_len)
        start, end = self._seq_len, self._seq_len + new_len
        if end > self.max_seq_len:
            raise DataError(
                f"the KV cache is full: {start} positions cached + {new_len} new > "
                f"max_seq_len {self.max_seq_len}",
                tensor="k",
                hint="allocate a cache with a larger max_seq_len, or crop() / reset() it "
                "before writing more",
            )
        self.k_cache[:, :, start:end].copy_(k)  # (B, n_kv_heads, T_new, head_dim)
        self.v_cache[:, :, start:end].copy_(v)  # (B, n_kv_heads, T_new, head_dim)
        self._seq_len = end
        return self.k_cache[:, :, :end], self.v_cache[:, :, :end]  # (B, n_kv_heads, S, hd)

    # -- bookkeeping -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every position (``seq_len`` becomes 0); the memory is kept."""
        self._seq_len = 0

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions.

        Args:
            length: The new ``seq_len``, ``0 <= length <= seq_len``.

        Raises:
            ConfigError: ``length`` is out of range.
        """
        if isinstance(length, bool) or not isinstance(length, int):
            raise ConfigError(
                f"crop() takes an int length, got {type(length).__name__}", key="length"
            )
        if not 0 <= length <= self._seq_len:
            raise ConfigError(
                f"cannot crop the KV cache to {length} positions: it holds {self._seq_len}",
                key="length",
                hint=f"pass a length in [0, {self._seq_len}]",
            )
        self._seq_len = length

    def reorder(self, indices: Tensor) -> None:
        """Reorder (and possibly repeat) rows in place: row ``i`` becomes old row ``indices[i]``.

        Only the filled positions are moved.

        Args:
            indices: Row indices, shape ``(batch_size,)``, an integer dtype, each in
                ``[0, batch_size)``; repeats are allowed (beam search).

        Raises:
            DataError: ``indices`` has the wrong shape or dtype or an index out of range.
            CompatibilityError: ``indices`` is on another device than the cache.
        """
        _check_indices(indices, self.batch_size, self.k_cache.device)
        self._reorder(indices)

    def _reorder(self, indices: Tensor) -> None:
        """``reorder`` without the checks (the model-level cache checks once for all)."""
        end = self._seq_len
        if end == 0:
            return
        index = indices.long()
        # index_select gathers into a new tensor first, so repeated rows read the old data.
        self.k_cache[:, :, :end] = self.k_cache[:, :, :end].index_select(0, index)
        self.v_cache[:, :, :end] = self.v_cache[:, :, :end].index_select(0, index)

    def copy_rows(
        self,
        source: StaticLayerKVCache,
        *,
        rows: Tensor,
        source_rows: Tensor,
        start: int = 0,
        source_start: int = 0,
        length: int | None = None,
    ) -> None:
        """Copy rows of ``source`` into rows of this layer cache at ``[start, start + L)``.

        ``L`` is ``length`` (default ``source.seq_len - source_start``). Row ``rows[i]``
        receives positions ``[source_start, source_start + L)`` of source row
        ``source_rows[i]``; afterwards ``seq_len == max(seq_len, start + L)``. Positions of
        a row that were not written keep their old values.

        Args:
            source: A layer cache with the same ``n_kv_heads``, ``head_dim``, dtype and device
                (any number of rows and positions; it may be this cache).
            rows: Destination rows ``(R,)``, integer, distinct, in ``[0, batch_size)``.
            source_rows: Source rows ``(R,)``, integer, in ``[0, source.batch_size)``.
            start: First destination position.
            source_start: First source position.
            length: Positions to copy (None: to the end of ``source``).

        Raises:
            CompatibilityError: ``source`` does not fit.
            ConfigError: Bad ``rows``, ``source_rows``, ``start``, ``source_start`` or
                ``length``.

        Example:
            >>> prompt = StaticLayerKVCache(batch_size=1, max_seq_len=8, n_kv_heads=1, head_dim=2)
            >>> _ = prompt.update(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
            >>> rows = StaticLayerKVCache(batch_size=4, max_seq_len=8, n_kv_heads=1, head_dim=2)
            >>> rows.copy_rows(prompt, rows=torch.arange(4), source_rows=torch.zeros(4).long())
            >>> rows.seq_len, rows.k_cache[:, 0, :3].sum().item()
            (3, 24.0)
        """
        source = _check_source_layer(self, source, "")
        index, source_index, first, count = _check_copy(
            rows,
            source_rows,
            start,
            batch_size=self.batch_size,
            source_batch_size=source.batch_size,
            source_len=source.seq_len,
            source_start=source_start,
            length=length,
            max_seq_len=self.max_seq_len,
            device=self.k_cache.device,
        )
        self._copy_rows(source, index, source_index, start, count, first)
        self._seq_len = max(self._seq_len, start + count)

    def _copy_rows(
        self,
        source: StaticLayerKVCache,
        index: Tensor,
        source_index: Tensor,
        start: int,
        length: int,
        source_start: int = 0,
    ) -> None:
        """``copy_rows`` without the checks or the length update (the model cache's part)."""
        if length == 0 or index.numel() == 0:
            return
        end = start + length
        span = slice(source_start, source_start + length)
        # index_select gathers into a new tensor first, so copying within one cache is safe.
        keys = source.k_cache[:, :, span].index_select(0, source_index)  # (R, H, L, hd)
        values = source.v_cache[:, :, span].index_select(0, source_index)  # (R, H, L, hd)
        self.k_cache[:, :, start:end].index_copy_(0, index, keys)
        self.v_cache[:, :, start:end].index_copy_(0, index, values)

    def trim_front(self, count: int) -> None:
        """Drop the first ``count`` positions of every row, moving the rest to the front.

        Args:
            count: Positions to drop, ``0 <= count <= seq_len``; ``seq_len`` decreases by it.

        Raises:
            ConfigError: ``count`` is not an int in ``[0, seq_len]``.
        """
        self._trim_front(_check_count(count, self._seq_len), self._seq_len)

    def _trim_front(self, count: int, length: int) -> None:
        """Move positions ``[count, length)`` to ``[0, length - count)``; set ``seq_len``."""
        kept = length - count
        if count and kept:
            # The ranges overlap when kept > count: copy out first.
            self.k_cache[:, :, :kept] = self.k_cache[:, :, count:length].clone()
            self.v_cache[:, :, :kept] = self.v_cache[:, :, count:length].clone()
        self._seq_len = kept


class StaticKVCache(nn.Module):
    """The static caches of all layers of a model, moved and trimmed as one.

    Satisfies [`lego.protocols.KVCache`][lego.protocols.KVCache]. ``cache[i]`` is the
    [`StaticLayerKVCache`][lego.layers.StaticLayerKVCache] of block ``i``; pass it to that
    block's attention. See the module docstring for how the lengths advance during a
    forward.

    Args:
        n_layers: Number of transformer blocks (one layer cache each).
        batch_size: Rows (sequences) decoded together.
        max_seq_len: Positions each layer has room for.
        n_kv_heads: Key/value heads per layer.
        head_dim: Size of one head.
        dtype: Dtype of the buffers; None means torch's default dtype.
        device: Device of the buffers; None means the default device.

    Raises:
        ConfigError: A size is not a positive int.

    Example:
        >>> cache = StaticKVCache(
        ...     n_layers=2, batch_size=1, max_seq_len=32, n_kv_heads=2, head_dim=4
        ... )
        >>> len(cache), cache.seq_len, cache.max_seq_len
        (2, 0, 32)
    """

    def __init__(
        self,
        *,
        n_layers: int,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        _check_positive("n_layers", n_layers, type(self).__name__)
        self._caches = [
            StaticLayerKVCache(
                batch_size=batch_size,
                max_seq_len=max_seq_len,
                n_kv_heads=n_kv_heads,
                head_dim=head_dim,
                dtype=dtype,
                device=device,
            )
            for _ in range(n_layers)
        ]
        # Registered for .to() / buffers(); the plain list keeps the precise type.
        self.layers = nn.ModuleList(self._caches)

    @property
    def seq_len(self) -> int:
        """Positions written in every layer (the minimum over layers).

        Before and after a model forward all layers agree; half-way through a forward the
        blocks already run are ahead, and this is still the length before the forward.
        """
        return min(layer.seq_len for layer in self._caches)

    @property
    def max_seq_len(self) -> int:
        """Number of positions the cache has room for."""
        return self._caches[0].max_seq_len

    @property
    def batch_size(self) -> int:
        """Number of rows (sequences) the cache holds."""
        return self._caches[0].batch_size

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the buffers."""
        return self._caches[0].k_cache.dtype

    @property
    def device(self) -> torch.device:
        """Device of the buffers."""
        return self._caches[0].k_cache.device

    def __len__(self) -> int:
        return len(self._caches)

    def __getitem__(self, layer: int) -> StaticLayerKVCache:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(
                f"a KV cache is indexed by layer number, got {type(layer).__name__}",
                key="layer",
            )
        if not 0 <= layer < len(self._caches):
            raise ConfigError(
                f"no layer {layer} in a KV cache of {len(self._caches)} layers",
                key="layer",
                hint=f"use 0 <= layer < {len(self._caches)}",
            )
        return self._caches[layer]

    def reset(self) -> None:
        """Forget every position in every layer (``seq_len`` becomes 0); memory is kept."""
        for layer in self._caches:
            layer.reset()

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions in every layer.

        ``crop(seq_len)`` also realigns layers left uneven by an interrupted forward.

        Args:
            length: The new ``seq_len``, ``0 <= length <= seq_len``.

        Raises:
            ConfigError: ``length`` is out of range.
        """
        if isinstance(length, bool) or not isinstance(length, int):
            raise ConfigError(
                f"crop() takes an int length, got {type(length).__name__}", key="length"
            )
        common = self.seq_len
        if not 0 <= length <= common:
            raise ConfigError(
                f"cannot crop the KV cache to {length} positions: it holds {common}",
                key="length",
                hint=f"pass a length in [0, {common}]",
            )
        for layer in self._caches:
            layer.crop(length)

    def reorder(self, indices: Tensor) -> None:
        """Reorder (and possibly repeat) rows in every layer, as beam search does.

        Args:
            indices: Row indices, shape ``(batch_size,)``, an integer dtype, each in
                ``[0, batch_size)``: row ``i`` becomes old row ``indices[i]``.

        Raises:
            DataError: ``indices`` has the wrong shape or dtype or an index out of range.
            CompatibilityError: ``indices`` is on another device than the cache.
        """
        _check_indices(indices, self.batch_size, self.device)
        for layer in self._caches:
            layer._reorder(indices)

    def copy_rows(
        self,
        source: KVCache,
        *,
        rows: Tensor,
        source_rows: Tensor,
        start: int = 0,
        source_start: int = 0,
        length: int | None = None,
    ) -> None:
        """Copy cached rows of ``source`` into rows of this cache, in every layer.

        For each ``i``, positions ``[source_start, source_start + L)`` of row
        ``source_rows[i]`` of ``source`` (every layer; ``L`` is ``length``, by default
        ``source.seq_len - source_start``) are written into row ``rows[i]`` at positions
        ``[start, start + L)``; afterwards every layer's ``seq_len`` is
        ``max(seq_len, start + L)``. Positions of a row that were not written keep their old
        values: mask them with ``attention_mask``. Uses: ``n`` completions sharing one
        prefill (``source`` of ``B`` rows copied to ``B * n`` rows), a request prefilled
        alone joining a running batch right-aligned (``start = seq_len - L``), and each
        prompt of a packed prefill (several prompts in one row, run with ``document_ids``)
        moving to a row of its own (``source_start`` and ``length`` pick its positions).

        Args:
            source: A [`StaticKVCache`][lego.layers.StaticKVCache] with the same number of
                layers, ``n_kv_heads``, ``head_dim``, dtype and device (any number of rows and
                positions; it may be this cache).
            rows: Destination rows ``(R,)``, integer, distinct, in ``[0, batch_size)``.
            source_rows: Source rows ``(R,)``, integer, in ``[0, source.batch_size)``;
                repeats are allowed.
            start: First destination position, ``start + L <= max_seq_len``.
            source_start: First source position, in ``[0, source.seq_len]``.
            length: Positions to copy, ``source_start + length <= source.seq_len``; None
                copies to the end of ``source``.

        Raises:
            CompatibilityError: ``source`` does not fit (kind, layers, heads, head size,
                dtype, device).
            ConfigError: Bad ``rows``, ``source_rows``, ``start``, ``source_start`` or
                ``length``.

        Example:
            >>> prompts = StaticKVCache(
            ...     n_layers=2, batch_size=2, max_seq_len=8, n_kv_heads=1, head_dim=2
            ... )
            >>> for i in range(2):  # what a prefill of 3 tokens writes
            ...     _ = prompts[i].update(torch.randn(2, 1, 3, 2), torch.randn(2, 1, 3, 2))
            >>> rows = StaticKVCache(
            ...     n_layers=2, batch_size=6, max_seq_len=8, n_kv_heads=1, head_dim=2
            ... )
            >>> pairs = torch.arange(2).repeat_interleave(3)  # prompt-major: 0, 0, 0, 1, 1, 1
            >>> rows.copy_rows(prompts, rows=torch.arange(6), source_rows=pairs)
            >>> rows.seq_len, torch.equal(rows[1].k_cache[4, :, :3], prompts[1].k_cache[1, :, :3])
            (3, True)
        """
        if not isinstance(source, StaticKVCache):
            raise CompatibilityError(
                f"copy_rows() copies from a StaticKVCache, got {type(source).__name__}",
                tensor="source",
                hint="allocate the source cache with the same model's new_kv_cache()",
            )
        if len(source) != len(self):
            raise CompatibilityError(
                f"copy_rows(): the source cache has {len(source)} layers, this cache {len(self)}",
                tensor="source",
                hint="copy between caches allocated by the same model",
            )
        for i, (mine, theirs) in enumerate(zip(self._caches, source._caches, strict=True)):
            _check_source_layer(mine, theirs, f" (layer {i})")
        index, source_index, first, count = _check_copy(
            rows,
            source_rows,
            start,
            batch_size=self.batch_size,
            source_batch_size=source.batch_size,
            source_len=source.seq_len,
            source_start=source_start,
            length=length,
            max_seq_len=self.max_seq_len,
            device=self.device,
        )
        new_len = max(self.seq_len, start + count)
        for mine, theirs in zip(self._caches, source._caches, strict=True):
            mine._copy_rows(theirs, index, source_index, start, count, first)
            mine._seq_len = new_len

    def trim_front(self, count: int) -> None:
        """Drop the first ``count`` positions of every row in every layer.

        The remaining positions move to the front and ``seq_len`` decreases by ``count``
        (layers left uneven by an interrupted forward are realigned to the common length).

        Args:
            count: Positions to drop, ``0 <= count <= seq_len``.

        Raises:
            ConfigError: ``count`` is not an int in ``[0, seq_len]``.

        Example:
            >>> cache = StaticKVCache(
            ...     n_layers=1, batch_size=1, max_seq_len=8, n_kv_heads=1, head_dim=1
            ... )
            >>> keys = torch.arange(5.0).view(1, 1, 5, 1)
            >>> _ = cache[0].update(keys, keys)
            >>> cache.trim_front(2)
            >>> cache.seq_len, cache[0].k_cache[0, 0, :3, 0].tolist()
            (3, [2.0, 3.0, 4.0])
        """
        length = self.seq_len
        count = _check_count(count, length)
        for layer in self._caches:
            layer._trim_front(count, length)

    def extra_repr(self) -> str:
        """Sizes and fill level, for ``print(cache)``."""
        return f"n_layers={len(self)}, seq_len={self.seq_len}/{self.max_seq_len}"
