"""The hand-off between a loader's thread and the training loop (``queue.Queue`` + a flag)."""

from __future__ import annotations

import threading

from lego.data.background import _STOPPED, _Run


def test_items_pass_in_order() -> None:
    run = _Run(3)
    assert run.put(1)
    assert run.put(2)
    assert (run.get(), run.get()) == (1, 2)


def test_stop_wakes_a_producer_waiting_on_a_full_queue() -> None:
    run = _Run(1)
    assert run.put("ready")
    results: list[bool] = []
    producer = threading.Thread(target=lambda: results.append(run.put("blocked")))
    run.thread = producer
    producer.start()  # waits in put: the queue is full (or sees the flag, if stop came first)
    run.stop()  # joins the producer, which sees the flag within _POLL_S
    assert not producer.is_alive()
    assert results == [False]
    assert run.get() is _STOPPED
    assert run.put("late") is False


def test_signal_wakes_a_consumer_waiting_on_an_empty_queue() -> None:
    for stop in (_Run.signal, _Run.stop):
        run = _Run(2)
        results: list[object] = []
        consumer = threading.Thread(target=lambda r=run, out=results: out.append(r.get()))
        consumer.start()  # waits in get: the queue is empty (or sees the flag)
        stop(run)
        consumer.join(timeout=120)  # a bound against a hang, not a synchronisation
        assert not consumer.is_alive()
        assert results == [_STOPPED]


def test_stop_drops_prepared_items() -> None:
    run = _Run(4)
    for item in range(4):
        assert run.put(item)
    run.stop()
    assert run.queue.qsize() == 1  # only the sentinel is left
    assert run.get() is _STOPPED
