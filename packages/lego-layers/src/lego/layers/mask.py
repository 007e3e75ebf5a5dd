"""Boolean attention masks: causal with a cache offset, sliding window, left padding.

Convention: ``True`` means "this query may attend to this key", as in
``torch.nn.functional.scaled_dot_product_attention``'s boolean ``attn_mask``.

Queries and keys are indexed by cache *slot*: with ``S`` keys (cached positions plus the new
ones) and ``T`` queries, query ``i`` sits in slot ``S - T + i`` and may see the keys in slots
``0 .. S - T + i`` (causal with an offset). A sliding window of ``w`` keeps only the ``w``
most recent of those, slots ``S - T + i - w + 1 .. S - T + i`` (the query's own slot included,
as in Mistral and transformers). For a left-padded batch the real tokens of a row occupy
consecutive slots, so slot distance equals position distance and the window means the same
as without padding.

A padding mask ``(B, S)`` (1 = real token, 0 = padding) removes the padding keys. A query
that is itself padding in a left-padded row then has no key left (every key up to it is
padding); such a row would give ``softmax`` of nothing, i.e. NaN. Here such a query attends
to its own slot instead: its output is finite (its own value vector) and is meaningless but
harmless, because nothing real ever attends to a padding key. Real queries are never
affected.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lego.protocols import ConfigError, DataError

__all__ = ["causal_mask", "build_attention_mask", "position_ids_from_padding"]


def _check_window(sliding_window: int | None) -> None:
    if sliding_window is None:
        return
    if isinstance(sliding_window, bool) or not isinstance(sliding_window, int):
        raise ConfigError(
            f"sliding_window must be an int or None, got {type(sliding_window).__name__}",
            key="sliding_window",
        )
    if sliding_window < 1:
        raise ConfigError(
            f"sliding_window must be at least 1, got {sliding_window}",
            key="sliding_window",
            hint="a window of w lets each token see itself and the w - 1 tokens before it; "
            "pass None for full causal attention",
        )


def causal_mask(
    q_len: int,
    kv_len: int,
    *,
    sliding_window: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The causal (optionally windowed) mask of ``q_len`` queries over ``kv_len`` keys.

    The queries are the last ``q_len`` slots: query ``i`` is slot ``kv_len - q_len + i``.

    Args:
        q_len: Number of queries ``T`` (the new tokens).
        kv_len: Number of keys ``S`` (cached plus new), at least ``q_len``.
        sliding_window: Keep only keys within this many slots of the query (itself
            included); None means no window.
        device: Where to build the mask.

    Returns:
        Boolean mask, shape ``(T, S)``; True where the query may attend.

    Raises:
        ConfigError: ``sliding_window < 1`` or ``kv_len < q_len``.
    """
    _check_window(sliding_window)
    if q_len < 0 or kv_len < q_len:
        raise ConfigError(
            f"a causal mask needs 0 <= q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}",
            key="kv_len",
            hint="kv_len counts the cached positions plus the new ones",
        )
    offset = kv_len - q_len
    q_pos = torch.arange(offset, kv_len, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(kv_len, device=device).unsqueeze(0)  # (1, S)
    mask = k_pos <= q_pos  # (T, S)
    if sliding_window is not None:
        mask = mask & (k_pos > q_pos - sliding_window)  # (T, S)
    return mask


def build_attention_mask(
    *,
    q_len: int,
    kv_len: int,
    padding_mask: Tensor | None = None,
    sliding_window: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The full boolean mask: causal with offset, optional window, optional padding.

    Args:
        q_len: Number of queries ``T``.
        kv_len: Number of keys ``S`` (cached plus new), at least ``q_len``.
        padding_mask: 1 (or True) for real tokens, 0 for padding, shape ``(B, S)``; None
            means no padding.
        sliding_window: Keep only keys within this many slots of the query; None means no
            window.
        device: Where to build the mask; None means ``padding_mask``'s device (or the
            default device).

    Returns:
        Boolean mask, shape ``(B, 1, T, S)`` with a padding mask, else ``(1, 1, T, S)``
        (it broadcasts over batch and heads). True where the query may attend. A query
        left with no key (a padding query of a left-padded row) attends to its own slot:
        see the module docstring.

    Raises:
        ConfigError: ``sliding_window < 1`` or ``kv_len < q_len``.
        DataError: ``padding_mask`` is not ``(B, kv_len)``.
    """
    if device is None and padding_mask is not None:
        device = padding_mask.device
    mask = causal_mask(q_len, kv_len, sliding_window=sliding_window, device=device)  # (T, S)
    mask = mask[None, None]  # (1, 1, T, S)
    if padding_mask is None:
        return mask
    if padding_mask.ndim != 2 or padding_mask.shape[1] != kv_len:
        raise DataError(
            f"attention_mask must have shape (B, {kv_len}) (cached + new positions), "
            f"got {tuple(padding_mask.shape)}",
            tensor="attention_mask",
            hint="pass 1 for real tokens and 0 for padding, covering the cached positions too",
        )
    keys = padding_mask.to(device=mask.device, dtype=torch.bool)[:, None, None, :]  # (B,1,1,S)
    mask = mask & keys  # (B, 1, T, S)
    # A query with no key left attends to its own slot (finite output, see module docs).
    empty = ~mask.any(dim=-1, keepdim=True)  # (B, 1, T, 1)
    slots = torch.arange(kv_len, device=mask.device)  # (S,)
    own = slots[None, :] == slots[kv_len - q_len :, None]  # (T, S)
    own = own[None, None]  # (1, 1, T, S)
    return mask | (empty & own)  # (B, 1, T, S)


def position_ids_from_padding(padding_mask: Tensor, *, past_length: int = 0) -> Tensor:
    """Positions of the real tokens of a left-padded batch: 0, 1, 2, ... after the padding.

    Padding slots get position 0 (any valid position works: nothing attends to them).

    Args:
        padding_mask: 1 for real tokens and 0 for padding, shape ``(B, S)`` over all slots
            (cached plus new).
        past_length: Slots already in the cache; the positions of the last
            ``S - past_length`` slots are returned.

    Returns:
        Long tensor, shape ``(B, S - past_length)``.

    Raises:
        DataError: ``padding_mask`` is not 2-D or ``past_length`` is out of range.

    Example:
        >>> position_ids_from_padding(torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]))
        tensor([[0, 0, 0, 1, 2],
                [0, 1, 2, 3, 4]])
    """
    if padding_mask.ndim != 2:
        raise DataError(
            f"attention_mask must have shape (B, S), got {tuple(padding_mask.shape)}",
            tensor="attention_mask",
        )
    if not 0 <= past_length <= padding_mask.shape[1]:
        raise DataError(
            f"past_length {past_length} is outside [0, {padding_mask.shape[1]}]",
            tensor="attention_mask",
            hint="the mask covers the cached positions plus the new ones",
        )
    real = padding_mask.to(torch.long)  # (B, S)
    positions = (real.cumsum(dim=-1) - 1).clamp_min(0)  # (B, S)
    positions = positions.masked_fill(real == 0, 0)  # (B, S)
    return positions[:, past_length:]  # (B, S - past_length)
