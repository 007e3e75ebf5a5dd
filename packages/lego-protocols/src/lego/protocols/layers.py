"""Contracts of the swappable transformer pieces: norms, feed-forwards, positions, attention.

A transformer block takes any conforming piece, so swapping LayerNorm for RMSNorm or an MLP
for a mixture of experts is passing a different module. ``torch.nn.Module`` subclasses
conform by defining ``forward`` with the signature below (``__call__`` comes from Module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor  # TYPE_CHECKING only: never imported at run time

    from lego.protocols.kv_cache import LayerKVCache

__all__ = ["Norm", "FeedForward", "PositionalEncoding", "Attention"]


@runtime_checkable
class Norm(Protocol):
    """A normalization over the last dimension (LayerNorm, RMSNorm, QK-norm)."""

    def __call__(self, x: Tensor, /) -> Tensor:
        """Normalize ``x``.

        Args:
            x: Input, shape ``(..., dim)``.

        Returns:
            Output of the same shape and dtype.
        """
        ...

    def forward(self, x: Tensor, /) -> Tensor:
        """Same as calling the module (``torch.nn.Module`` routes ``__call__`` here)."""
        ...


@runtime_checkable
class FeedForward(Protocol):
    """A position-wise feed-forward network (MLP, gated MLP, mixture of experts)."""

    def __call__(self, x: Tensor, /) -> Tensor:
        """Transform every position independently.

        Args:
            x: Input, shape ``(B, T, d_model)``.

        Returns:
            Output, shape ``(B, T, d_model)``.
        """
        ...

    def forward(self, x: Tensor, /) -> Tensor:
        """Same as calling the module."""
        ...


@runtime_checkable
class PositionalEncoding(Protocol):
    """Puts position information into a tensor.

    Absolute encodings (learned, sinusoidal) add position vectors to token embeddings of
    shape ``(B, T, d_model)``; rotary encodings rotate queries or keys of shape
    ``(B, n_heads, T, head_dim)``. Both read the positions from ``position_ids``, which
    defaults to ``0..T-1`` for every row. Explicit ids are how cached decoding (offsets) and
    left padding (per-row shifts) work.
    """

    def __call__(self, x: Tensor, /, *, position_ids: Tensor | None = None) -> Tensor:
        """Return ``x`` with positions applied.

        Args:
            x: Embeddings ``(B, T, d_model)`` or per-head queries/keys
                ``(B, n_heads, T, head_dim)``.
            position_ids: Positions, shape ``(B, T)`` or ``(T,)``, dtype long; None means
                ``arange(T)``.

        Returns:
            A tensor of the same shape and dtype as ``x``.
        """
        ...

    def forward(self, x: Tensor, /, *, position_ids: Tensor | None = None) -> Tensor:
        """Same as calling the module."""
        ...


@runtime_checkable
class Attention(Protocol):
    """Causal self-attention (multi-head, grouped-query or multi-query).

    Packed sequences. As with [`CausalLM`][lego.protocols.CausalLM], an implementation may
    accept one more optional keyword, ``document_ids`` ``(B, T)`` (``0, 1, ...`` per document
    of a row, ``-1`` on padding), after which a query attends only to the keys of its own
    document at or before it. It is not part of this contract, and never comes with a
    ``kv_cache``.
    """

    def __call__(
        self,
        x: Tensor,
        /,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> Tensor:
        """Attend causally over the sequence (and over the cached positions, if any).

        Args:
            x: Input, shape ``(B, T, d_model)``.
            position_ids: Positions of the ``T`` new tokens, ``(B, T)``; None means
                ``cache.seq_len + arange(T)``.
            attention_mask: Which positions are real tokens (1) or padding (0), shape
                ``(B, S)`` where ``S`` is the cached length plus ``T``; None means all real.
            kv_cache: This layer's cache; when given, the new keys and values are appended
                to it and attention covers all cached positions.

        Returns:
            Output, shape ``(B, T, d_model)``.
        """
        ...

    def forward(
        self,
        x: Tensor,
        /,
        *,
        position_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> Tensor:
        """Same as calling the module."""
        ...
