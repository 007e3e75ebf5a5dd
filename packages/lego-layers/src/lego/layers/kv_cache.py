"""A preallocated ("static") key/value cache for incremental decoding.

[`StaticLayerKVCache`][lego.layers.StaticLayerKVCache] holds the keys and values of one
attention layer in two buffers of shape ``(B, n_kv_heads, max_seq_len, head_dim)``, allocated
once. Each [`update()`][lego.layers.kv_cache.StaticLayerKVCache.update] writes the new positions in
place (a slice copy, never a ``torch.cat`` that would reallocate the whole cache every step)
and returns views of the filled part.

[`StaticKVCache`][lego.layers.StaticKVCache] holds one layer cache per transformer block and
does the bookkeeping of all of them at once: ``reset()``, ``crop(length)`` (speculative
decoding), ``reorder(indices)`` (beam search).

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

from lego.protocols import CompatibilityError, ConfigError, DataError, check_int

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

    def extra_repr(self) -> str:
        """Sizes and fill level, for ``print(cache)``."""
        return f"n_layers={len(self)}, seq_len={self.seq_len}/{self.max_seq_len}"
