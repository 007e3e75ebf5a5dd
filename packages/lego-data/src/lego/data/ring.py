"""A bounded, closable circular buffer that hands items from one thread to another.

The loaders' background thread puts ready batches into a
[`RingBuffer`][lego.data.ring.RingBuffer]; the training loop takes them out. When the buffer
is full the producer waits (so at most ``capacity`` batches are ever held in memory); when it
is empty the consumer waits. [`close()`][lego.data.ring.RingBuffer.close] wakes both sides
at once, which is how a loader stops its thread without waiting for the current epoch to end
(``queue.Queue`` gained an equivalent ``shutdown`` only in Python 3.13).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

__all__ = ["RingBuffer", "ClosedError"]

T = TypeVar("T")


class ClosedError(Exception):
    """Raised by [`RingBuffer.get()`][lego.data.ring.RingBuffer.get]: closed and empty."""


class RingBuffer(Generic[T]):
    """A fixed-capacity FIFO of slots, filled and drained by different threads.

    Args:
        capacity: The number of slots (at least 1).

    Raises:
        ValueError: When ``capacity < 1``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._slots: list[T | None] = [None] * capacity
        self._head = 0  # next slot to read
        self._size = 0
        self._closed = False
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)

    @property
    def capacity(self) -> int:
        """The number of slots."""
        return len(self._slots)

    @property
    def closed(self) -> bool:
        """Whether [`close()`][lego.data.ring.RingBuffer.close] was called."""
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return self._size

    def put(self, item: T) -> bool:
        """Append ``item``, waiting while the buffer is full.

        Args:
            item: The item.

        Returns:
            True when stored; False when the buffer was closed (the item is dropped and the
            producer should stop).
        """
        with self._not_full:
            while self._size == len(self._slots) and not self._closed:
                self._not_full.wait()
            if self._closed:
                return False
            self._slots[(self._head + self._size) % len(self._slots)] = item
            self._size += 1
            self._not_empty.notify()
            return True

    def get(self) -> T:
        """Remove and return the oldest item, waiting while the buffer is empty.

        Items put before [`close()`][lego.data.ring.RingBuffer.close] are still handed out.

        Returns:
            The item.

        Raises:
            ClosedError: When the buffer is closed and empty.
        """
        with self._not_empty:
            while self._size == 0 and not self._closed:
                self._not_empty.wait()
            if self._size == 0:
                raise ClosedError
            item = self._slots[self._head]
            self._slots[self._head] = None  # drop the reference: the slot may be large
            self._head = (self._head + 1) % len(self._slots)
            self._size -= 1
            self._not_full.notify()
            return item  # type: ignore[return-value]

    def close(self) -> None:
        """Refuse further items and wake every waiting thread."""
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def clear(self) -> None:
        """Drop every stored item (after closing, to free memory at once)."""
        with self._lock:
            self._slots = [None] * len(self._slots)
            self._size = 0
            self._not_full.notify_all()
