from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lego.data.dataset import TokenDataset
from lego.data.loader import TokenLoader
from lego.protocols import BatchSource, CompatibilityError, ConfigError, DataError, FormatError


@pytest.fixture
def dataset(tmp_path: Path) -> TokenDataset:
    path = tmp_path / "tokens.bin"
    (np.arange(1601) % 60_000).astype("uint16").tofile(path)
    return TokenDataset(path, context_length=16, dtype="uint16")  # 100 windows


def start(loader: TokenLoader) -> tuple[Iterator[Any], threading.Thread]:
    """Start an iteration, take its first batch, and return the iterator and its thread."""
    it = iter(loader)
    next(it)
    thread = loader._run.thread if loader._run else None
    assert thread is not None
    return it, thread


def rows(batches: list[Any]) -> list[list[int]]:
    return [row for b in batches for row in b["input_ids"].tolist()]


def test_is_a_batch_source(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=4)
    assert isinstance(loader, BatchSource)
    assert len(loader) == 25


def test_sequential_epoch_sees_every_token_once(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=7, shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 15
    assert batches[-1]["input_ids"].shape == (2, 16)  # 100 = 14 * 7 + 2
    inputs = torch.cat([b["input_ids"].reshape(-1) for b in batches])
    assert inputs.tolist() == list(range(1600))  # every input token once, in file order
    labels = torch.cat([b["labels"].reshape(-1) for b in batches])
    assert labels.tolist() == list(range(1, 1601))
    assert all(b["input_ids"].dtype == torch.int64 for b in batches)
    assert loader.epoch == 1
    assert loader.position == 0


def test_shuffled_epoch_is_a_permutation_and_deterministic(dataset: TokenDataset) -> None:
    a = rows(list(TokenLoader(dataset, batch_size=10, seed=3)))
    b = rows(list(TokenLoader(dataset, batch_size=10, seed=3)))
    c = rows(list(TokenLoader(dataset, batch_size=10, seed=4)))
    assert a == b
    assert a != c
    starts = sorted(r[0] for r in a)
    assert starts == [16 * i for i in range(100)]  # each window once


def test_epochs_reshuffle_and_repeat(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=50, seed=0)
    first, second = rows(list(loader)), rows(list(loader))
    assert first != second
    assert sorted(first) == sorted(second)
    looping = TokenLoader(dataset, batch_size=50, seed=0, repeat=True)
    it = iter(looping)
    got = [next(it) for _ in range(5)]  # crosses into a third epoch
    looping.close()
    assert rows(got[:4]) == first + second
    assert looping.epoch == 2
    assert looping.position == 1


@pytest.mark.parametrize("mode", ["sequential", "random"])
def test_resume_mid_epoch_gives_the_same_remaining_batches(
    dataset: TokenDataset, mode: str, tmp_path: Path
) -> None:
    ds = TokenDataset(dataset.path, context_length=16, mode=mode, seed=9, dtype="uint16")  # type: ignore[arg-type]
    full = TokenLoader(ds, batch_size=8, seed=1, prefetch=2)
    list(full)  # epoch 0; the resume is tested in epoch 1
    expected = list(full)
    loader = TokenLoader(ds, batch_size=8, seed=1, prefetch=2)
    list(loader)
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = loader.state_dict()
    torch.save(state, tmp_path / "state.pt")
    loader.close()
    resumed = TokenLoader(ds, batch_size=8, seed=123, prefetch=3)  # the state's seed wins
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    rest = list(resumed)
    assert len(rest) == len(expected) - 5
    for got, want in zip(rest, expected[5:], strict=True):
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert torch.equal(got["labels"], want["labels"])
    assert resumed.state_dict()["seed"] == 1


def test_state_after_last_batch_starts_next_epoch(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=25, seed=0)
    list(loader)
    assert loader.state_dict()["epoch"] == 1
    assert loader.state_dict()["position"] == 0


def test_ranks_partition_with_equal_counts(dataset: TokenDataset) -> None:
    world = 3
    per_rank = [
        rows(list(TokenLoader(dataset, batch_size=4, seed=2, rank=r, world_size=world)))
        for r in range(world)
    ]
    counts = {len(r) for r in per_rank}
    assert counts == {32}  # 100 // (3 * 4) = 8 batches of 4 on every rank
    starts = [row[0] for r in per_rank for row in r]
    assert len(starts) == len(set(starts))  # disjoint
    no_drop = [
        rows(list(TokenLoader(dataset, batch_size=4, rank=r, world_size=4, drop_last=False)))
        for r in range(4)
    ]
    assert {len(r) for r in no_drop} == {25}
    union = sorted(row[0] for r in no_drop for row in r)
    assert union == [16 * i for i in range(100)]  # union = all, disjoint (100 % 4 == 0)


class _Faulty(TokenDataset):
    """Fails on the third batch it gathers (counted per instance, so reruns agree)."""

    calls = 0

    def gather(self, starts: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 3:
            raise DataError("disk on fire", path=self.path)
        return super().gather(starts, **kwargs)


def test_worker_errors_reach_the_consumer(dataset: TokenDataset) -> None:
    faulty = _Faulty(dataset.path, context_length=16, dtype="uint16")
    loader = TokenLoader(faulty, batch_size=4, shuffle=False)
    it = iter(loader)
    next(it)
    next(it)
    with pytest.raises(DataError, match="disk on fire"):
        next(it)
    assert not loader.running
    assert loader.position == 2  # the failed batch was not counted


def test_close_stops_the_thread(dataset: TokenDataset) -> None:
    # 100 one-window batches and a 2-slot buffer: the thread cannot finish on its own, it
    # stays blocked in ``put`` until ``close()`` wakes it, so nothing here depends on timing.
    loader = TokenLoader(dataset, batch_size=1, prefetch=2)
    it, thread = start(loader)
    assert loader.running
    loader.close()  # joins the thread
    assert not thread.is_alive()
    assert not loader.running
    with pytest.raises(StopIteration):
        next(it)
    assert loader.position == 1
    with TokenLoader(dataset, batch_size=1) as managed:
        managed_it = iter(managed)  # held: dropping the iterator would stop the thread
        next(managed_it)
        assert managed.running
    assert not managed.running
    with pytest.raises(StopIteration):
        next(managed_it)


def test_new_iteration_replaces_the_old_one(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=10, shuffle=False)
    first = iter(loader)
    next(first)
    second = iter(loader)
    assert next(second)["input_ids"][0, 0].item() == 160  # continues at position 1
    with pytest.raises(StopIteration):
        next(first)
    loader.close()


def test_abandoned_loader_is_collected(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=1, prefetch=1)
    it, thread = start(loader)
    del it, loader
    gc.collect()  # the iterator's finalizer closes the buffer, which wakes the thread
    thread.join(timeout=120)  # a bound against a hang, not a synchronisation
    assert not thread.is_alive()


def test_load_state_dict_checks_the_layout(dataset: TokenDataset) -> None:
    state = TokenLoader(dataset, batch_size=4).state_dict()
    with pytest.raises(CompatibilityError, match="batch_size=4"):
        TokenLoader(dataset, batch_size=5).load_state_dict(state)
    with pytest.raises(CompatibilityError, match="world_size"):
        TokenLoader(dataset, batch_size=4, world_size=2).load_state_dict(state)
    other = TokenDataset(dataset.path, context_length=16, stride=8, dtype="uint16")
    with pytest.raises(CompatibilityError):
        TokenLoader(other, batch_size=4).load_state_dict(state)
    broken = dict(state)
    del broken["epoch"]
    with pytest.raises(FormatError, match="'epoch'"):
        TokenLoader(dataset, batch_size=4).load_state_dict(broken)
    with pytest.raises(FormatError, match="outside"):
        TokenLoader(dataset, batch_size=4).load_state_dict({**state, "position": 99})


def test_bad_settings(dataset: TokenDataset) -> None:
    with pytest.raises(ConfigError, match="prefetch"):
        TokenLoader(dataset, batch_size=4, prefetch=0)
    with pytest.raises(ConfigError, match="rank"):
        TokenLoader(dataset, batch_size=4, rank=1)
    with pytest.raises(DataError, match="cannot fill"):
        TokenLoader(dataset, batch_size=101)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="pin_memory"):
            TokenLoader(dataset, batch_size=4, pin_memory=True)


def test_device_and_page_release(dataset: TokenDataset) -> None:
    loader = TokenLoader(dataset, batch_size=4, device="cpu", release_pages_every=1)
    batch = next(iter(loader))
    loader.close()
    assert batch["input_ids"].device.type == "cpu"
    assert batch["input_ids"].shape == (4, 16)
