from __future__ import annotations

import threading

import pytest

from lego.data.ring import ClosedError, RingBuffer


def test_fifo_and_capacity() -> None:
    ring: RingBuffer[int] = RingBuffer(3)
    assert ring.capacity == 3
    for i in range(3):
        assert ring.put(i)
    assert len(ring) == 3
    assert [ring.get() for _ in range(3)] == [0, 1, 2]
    for i in range(3, 8):  # wraps around the slots
        ring.put(i)
        assert ring.get() == i


class _SignallingCondition(threading.Condition):
    """A condition that sets ``waiting`` when a thread starts to wait on it.

    ``waiting`` is set while the waiter still holds the lock, so whatever the other thread
    does next under the lock (``get``, ``close``) happens after the waiter released it in
    ``wait()``: the tests synchronise on this event, never on timing.
    """

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def _watch_full(ring: RingBuffer[int]) -> _SignallingCondition:
    condition = _SignallingCondition(ring._lock)
    ring._not_full = condition
    return condition


def _join(thread: threading.Thread) -> None:
    thread.join(timeout=120)  # a bound against a hang, not a synchronisation
    assert not thread.is_alive()


def test_producer_blocks_when_full_until_consumed() -> None:
    ring: RingBuffer[int] = RingBuffer(2)
    full = _watch_full(ring)
    produced: list[int] = []

    def produce() -> None:
        for i in range(10):
            ring.put(i)
            produced.append(i)

    thread = threading.Thread(target=produce)
    thread.start()
    full.waiting.wait()  # the producer is blocked on the third item
    assert produced == [0, 1]
    assert len(ring) == 2
    got = [ring.get() for _ in range(10)]
    _join(thread)
    assert got == list(range(10))
    assert produced == list(range(10))


def test_close_wakes_both_sides() -> None:
    ring: RingBuffer[int] = RingBuffer(1)
    full = _watch_full(ring)
    ring.put(1)
    results: list[bool] = []
    blocked = threading.Thread(target=lambda: results.append(ring.put(2)))
    blocked.start()
    full.waiting.wait()  # the producer waits for a free slot
    ring.close()
    _join(blocked)
    assert results == [False]  # the blocked producer is told to stop
    assert ring.get() == 1  # items stored before close are still handed out
    with pytest.raises(ClosedError):
        ring.get()
    assert ring.closed


def test_close_wakes_a_waiting_consumer() -> None:
    ring: RingBuffer[int] = RingBuffer(1)
    empty = _SignallingCondition(ring._lock)
    ring._not_empty = empty
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            ring.get()
        except ClosedError as error:
            errors.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    empty.waiting.wait()  # the consumer waits for an item
    ring.close()
    _join(consumer)
    assert len(errors) == 1


def test_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(0)
