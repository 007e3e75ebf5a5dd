"""The batch KV cache of the engine, one row ("slot") per running request.

[`SlotCache`][lego.serve.slots.SlotCache] owns one model KV cache of ``max_batch`` rows and
``max_seq_len`` columns, the ``(max_batch, max_seq_len)`` attention mask that says which
columns of each row hold that row's tokens, and the first real column of every row. Every
decode step appends one column to every row, so all rows end at the same column
(``seq_len``); they begin at different columns.

How a request joins. It is prefilled in a batch-1 cache (alone, or packed with other
waiting prompts one after the other in that row), then its positions are copied with
[`copy_rows`][lego.protocols.KVCache.copy_rows] into a free row, *right-aligned*: its
``L`` prompt positions go to columns ``[seq_len - L, seq_len)``, the columns before them
are masked out (left padding). When the prompt is longer than the batch (``L > seq_len``)
the cache cannot shift the running rows to the right, so the new row is written at
``[0, L)`` and ``seq_len`` grows to ``L``: the running rows get masked columns *in the
middle* (``[old seq_len, L)``). The model never attends to a masked key and every row
carries its own ``position_ids``, so a gap changes nothing for a model with full causal
attention. A model with a sliding window (``config.sliding_window``) measures the window
in columns, so for it the engine admits such a prompt only into an empty batch (see
[`Engine`][lego.serve.engine.Engine]).

How columns are reclaimed. When every running row begins after column 0 (leading padding
in all of them), [`trim_front`][lego.protocols.KVCache.trim_front] drops those columns; the
engine does it when the cache is full or when the padding is at least half of it (a
shorter cache makes every attention step cheaper). When the cache is full and some row
begins at column 0 (only possible with gaps: its span is longer than its tokens), the
engine takes that row out ([`blocked()`][lego.serve.slots.SlotCache.blocked]), trims the
others, prefills the row's tokens again alone and places it back contiguous: its output
does not change, it costs one prefill.

Free rows still run through the model (the cache's batch size is fixed): they read token
0 at position 0 with an all-zero mask row, which the attention layers turn into a query
that attends to its own column only: finite, never read. So that a lone request does not
pay for ``max_batch`` rows, the engine keeps caches of 1, 2, 4, ... ``max_batch`` rows and
moves the running rows to a bigger or smaller one as requests come and go
([`move_to()`][lego.serve.slots.SlotCache.move_to]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lego.protocols import KVCache

__all__ = ["SlotCache"]


class SlotCache:
    """The engine's batch cache: rows as slots, a padding mask, trimming.

    Args:
        cache: An empty model KV cache of ``max_batch`` rows (``model.new_kv_cache(...)``).
        device: Where the mask lives (the cache's device).

    Example:
        >>> from lego.layers import StaticKVCache
        >>> def cache(rows: int) -> StaticKVCache:
        ...     return StaticKVCache(
        ...         n_layers=1, batch_size=rows, max_seq_len=8, n_kv_heads=1, head_dim=2
        ...     )
        >>> slots = SlotCache(cache(2), device=torch.device("cpu"))
        >>> prompt = cache(1)
        >>> _ = prompt[0].update(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
        >>> slots.place(0, prompt)  # 3 positions, in an empty batch: columns 0..2
        >>> slots.advance().tolist()  # the mask of the next step's 4 columns
        [[1, 1, 1, 1], [0, 0, 0, 0]]
    """

    def __init__(self, cache: KVCache, *, device: torch.device) -> None:
        self.cache = cache
        self.device = device
        rows, columns = cache.batch_size, cache.max_seq_len
        self.mask = torch.zeros((rows, columns), dtype=torch.long, device=device)  # (B, S_max)
        self.first = [0] * rows
        self.live = [False] * rows
        self._live_column = torch.zeros(rows, dtype=torch.long, device=device)  # (B,)

    # -- sizes ----------------------------------------------------------------------------

    @property
    def seq_len(self) -> int:
        """Columns in use (the same for every row)."""
        return int(self.cache.seq_len)

    @property
    def max_seq_len(self) -> int:
        """Columns the cache has room for."""
        return int(self.cache.max_seq_len)

    @property
    def batch_size(self) -> int:
        """Rows (slots)."""
        return len(self.live)

    def free_slots(self) -> list[int]:
        """The rows no request holds, lowest first."""
        return [row for row, live in enumerate(self.live) if not live]

    def running(self) -> int:
        """How many rows hold a request."""
        return sum(self.live)

    # -- rows joining and leaving ---------------------------------------------------------

    def place(
        self, slot: int, source: KVCache, *, source_start: int = 0, length: int | None = None
    ) -> None:
        """Copy row 0 of a prefilled batch-1 cache into ``slot``, right-aligned.

        Args:
            slot: A free row.
            source: The prefill's cache; its positions from ``source_start`` are the prompt's.
            source_start: Where the prompt begins in ``source`` (a packed prefill holds
                several prompts one after the other).
            length: The prompt's positions (None: to the end of ``source``).
        """
        if length is None:
            length = int(source.seq_len) - source_start
        old = self.seq_len
        if not any(self.live):
            self.cache.reset()
            self.mask.zero_()
            old = 0
        start = max(old - length, 0)
        rows = torch.tensor([slot], dtype=torch.long, device=self.device)  # (1,)
        source_rows = torch.zeros(1, dtype=torch.long, device=self.device)  # (1,)
        self.cache.copy_rows(
            source,
            rows=rows,
            source_rows=source_rows,
            start=start,
            source_start=source_start,
            length=length,
        )
        if length > old:
            self.mask[:, old:length] = 0  # a gap in the running rows (see the module doc)
        self.mask[slot].zero_()
        self.mask[slot, start : start + length] = 1
        self.first[slot] = start
        self.live[slot] = True
        self._live_column[slot] = 1

    def free(self, slot: int) -> None:
        """Give ``slot`` back; its mask row becomes all zeros."""
        self.live[slot] = False
        self.first[slot] = 0
        self.mask[slot].zero_()
        self._live_column[slot] = 0
        if not any(self.live):
            self.cache.reset()

    def move_to(self, cache: KVCache) -> dict[int, int]:
        """Continue in another cache (more or fewer rows): running rows go to its first rows.

        Every running row is copied whole (all ``seq_len`` columns, padding included) with
        ``copy_rows``, so columns, masks and first columns stay as they were; only the row
        numbers change.

        Args:
            cache: A cache of the same model and ``max_seq_len`` with at least as many rows
                as are running (its contents are replaced).

        Returns:
            The new row of every running row (old row -> new row).
        """
        running = [slot for slot, live in enumerate(self.live) if live]
        rows, length = cache.batch_size, self.seq_len
        mapping = {old: new for new, old in enumerate(running)}
        cache.reset()
        mask = torch.zeros((rows, self.max_seq_len), dtype=torch.long, device=self.device)
        if running and length:
            index = torch.tensor(running, dtype=torch.long, device=self.device)  # (n,)
            target = torch.arange(len(running), dtype=torch.long, device=self.device)  # (n,)
            cache.copy_rows(self.cache, rows=target, source_rows=index, start=0)
            mask[: len(running), :length] = self.mask[index, :length]
        self.cache = cache
        self.mask = mask  # (B', S_max)
        self.first = [self.first[old] for old in running] + [0] * (rows - len(running))
        self.live = [True] * len(running) + [False] * (rows - len(running))
        self._live_column = torch.tensor(
            [int(live) for live in self.live], dtype=torch.long, device=self.device
        )  # (B',)
        return mapping

    def reset(self) -> None:
        """Forget every row (after a failed forward left the cache's layers uneven)."""
        for slot in range(self.batch_size):
            self.live[slot] = False
            self.first[slot] = 0
        self.mask.zero_()
        self._live_column.zero_()
        self.cache.reset()

    # -- room -----------------------------------------------------------------------------

    def leading_padding(self) -> int:
        """Columns before the first real column of every running row (0 when none runs)."""
        firsts = [self.first[slot] for slot, live in enumerate(self.live) if live]
        return min(firsts) if firsts else 0

    def trim(self, *, force: bool = False) -> int:
        """Drop the leading padding every running row has, when worth it.

        Args:
            force: Trim whatever can be trimmed (the cache is full); otherwise only when
                the padding is at least half of ``seq_len``.

        Returns:
            The number of columns dropped.
        """
        count = self.leading_padding()
        length = self.seq_len
        if count == 0 or (not force and 2 * count < length):
            return 0
        self.cache.trim_front(count)
        kept = length - count
        self.mask[:, :kept] = self.mask[:, count:length].clone()
        for slot, live in enumerate(self.live):
            if live:
                self.first[slot] -= count
        return count

    def blocked(self) -> list[int]:
        """The running rows that keep a full cache from being trimmed (they begin at column 0).

        Returns:
            The rows to take out (and recompute) before the next step when
            ``seq_len == max_seq_len``; empty while there is room.
        """
        if self.seq_len < self.max_seq_len:
            return []
        return [slot for slot, live in enumerate(self.live) if live and self.first[slot] == 0]

    def advance(self) -> Tensor:
        """Open the next column: real for running rows, masked for free ones.

        Returns:
            The attention mask of the next decode step, ``(max_batch, seq_len + 1)``.
        """
        column = self.seq_len
        self.mask[:, column] = self._live_column
        return self.mask[:, : column + 1]
