"""Key/value cache contracts for incremental (token-by-token) decoding.

A model-level [`KVCache`][lego.protocols.KVCache] holds one
[`LayerKVCache`][lego.protocols.LayerKVCache] per transformer block. All layers fill the same slots,
so the cache has one ``seq_len``: the number of positions written so far (padding included for
left-padded batches). Decoders pass the cache to ``CausalLM.forward``; each attention layer calls
``update`` on its own layer cache.
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
