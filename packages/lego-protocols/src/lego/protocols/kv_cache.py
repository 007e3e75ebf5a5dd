"""Key/value cache contracts for incremental (token-by-token) decoding.

A model-level [`KVCache`][lego.protocols.KVCache] holds one
[`LayerKVCache`][lego.protocols.LayerKVCache] per transformer block. All layers fill the same slots,
so the cache has one ``seq_len``: the number of positions written so far (padding included for
left-padded batches). Decoders pass the cache to ``CausalLM.forward``; each attention layer calls
``update`` on its own layer cache.

Two row operations serve batched serving and rollouts: ``copy_rows`` copies the cached
positions of some rows of another cache into rows of this one (``n`` completions sharing one
prefill; a request prefilled alone joining a running batch), and ``trim_front`` drops leading
positions of every row (reclaiming columns that every live row has as padding).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor  # TYPE_CHECKING only: never imported at run time

__all__ = ["LayerKVCache", "KVCache"]


@runtime_checkable
class LayerKVCache(Protocol):
    """The keys and values of one attention layer, preallocated to ``max_seq_len``."""

    @property
    def seq_len(self) -> int:
        """Number of positions written so far."""
        ...

    @property
    def max_seq_len(self) -> int:
        """Number of positions the cache has room for."""
        ...

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write new keys and values after the filled part and return everything so far.

        Args:
            k: New keys, shape ``(B, n_kv_heads, T_new, head_dim)``.
            v: New values, shape ``(B, n_kv_heads, T_new, head_dim)``.

        Returns:
            ``(keys, values)`` for all positions so far, each of shape
            ``(B, n_kv_heads, seq_len + T_new, head_dim)`` (views, not copies).
        """
        ...


@runtime_checkable
class KVCache(Protocol):
    """The caches of all layers of a model, moved as one.

    Indexing returns a layer's cache; the bookkeeping methods act on every layer at once.
    """

    @property
    def seq_len(self) -> int:
        """Number of positions written so far (the same in every layer)."""
        ...

    @property
    def max_seq_len(self) -> int:
        """Number of positions the cache has room for."""
        ...

    @property
    def batch_size(self) -> int:
        """Number of rows (sequences) the cache holds."""
        ...

    def __len__(self) -> int:
        """Number of layers."""
        ...

    def __getitem__(self, layer: int) -> LayerKVCache:
        """Return the cache of one layer (``0 <= layer < len(self)``)."""
        ...

    def reset(self) -> None:
        """Forget every position (``seq_len`` becomes 0); the memory is kept."""
        ...

    def crop(self, length: int) -> None:
        """Keep only the first ``length`` positions (e.g. after rejected speculative tokens).

        Args:
            length: The new ``seq_len``, ``0 <= length <= seq_len``.
        """
        ...

    def reorder(self, indices: Tensor) -> None:
        """Reorder (and possibly repeat) rows, as beam search does after each step.

        Args:
            indices: Row indices, shape ``(batch_size,)``, dtype long.
        """
        ...

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
        """Copy cached rows of ``source`` into rows of this cache, every layer at once.

        For each ``i``, positions ``[source_start, source_start + L)`` of row
        ``source_rows[i]`` of ``source`` are written into row ``rows[i]`` of this cache at
        positions ``[start, start + L)``, where ``L`` is ``length`` (default: every position
        of ``source`` from ``source_start``, ``source.seq_len - source_start``). Afterwards
        ``seq_len == max(old seq_len, start + L)``. Positions of a row that were not written
        keep their old values: the caller masks them with ``attention_mask``. Uses: ``n``
        completions sharing one prefill, a request prefilled alone joining a running batch,
        and each document of a packed prefill (one row holding several prompts, run with
        ``document_ids``) moving to a row of its own.

        Args:
            source: A cache of the same kind, layer count, heads, head size, dtype and device
                (it may hold another number of rows and positions; it may be this cache).
            rows: Destination rows, shape ``(R,)``, integer dtype, distinct, each in
                ``[0, batch_size)``.
            source_rows: Source rows, shape ``(R,)``, integer dtype, each in
                ``[0, source.batch_size)``; repeats are allowed (one prompt, ``n`` rows).
            start: First destination position, ``0 <= start`` and
                ``start + L <= max_seq_len``.
            source_start: First source position, ``0 <= source_start <= source.seq_len``.
            length: Positions to copy, ``source_start + length <= source.seq_len``; None
                copies to the end of ``source``.

        Raises:
            CompatibilityError: ``source`` does not fit (kind, layers, heads, head size,
                dtype, device).
            ConfigError: ``rows`` / ``source_rows`` are not 1-D integer tensors of equal
                length in range, or ``start``, ``source_start`` or ``length`` is out of
                range.
        """
        ...

    def trim_front(self, count: int) -> None:
        """Drop the first ``count`` positions of every row and layer, moving the rest forward.

        Args:
            count: Positions to drop, ``0 <= count <= seq_len``; ``seq_len`` decreases by it.

        Raises:
            ConfigError: ``count`` is not an int in ``[0, seq_len]``.
        """
        ...
