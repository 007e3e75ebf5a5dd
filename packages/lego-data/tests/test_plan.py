from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.data.plan import EpochPlan
from lego.protocols import ConfigError, DataError


def epoch_items(plan: EpochPlan, epoch: int = 0) -> list[int]:
    return [i for k in range(plan.num_batches) for i in plan.batch(epoch, k).tolist()]


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 300),
    batch=st.integers(1, 16),
    world=st.integers(1, 5),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
)
def test_ranks_partition_each_epoch(
    n: int, batch: int, world: int, shuffle: bool, drop_last: bool
) -> None:
    if drop_last and n < batch * world:
        with pytest.raises(DataError, match="cannot fill one batch"):
            EpochPlan(num_items=n, batch_size=batch, world_size=world, drop_last=drop_last)
        return
    plans = [
        EpochPlan(
            num_items=n,
            batch_size=batch,
            shuffle=shuffle,
            seed=3,
            drop_last=drop_last,
            rank=r,
            world_size=world,
        )
        for r in range(world)
    ]
    counts = {p.num_batches for p in plans}
    assert len(counts) == 1  # equal batch counts on every rank
    per_rank = [epoch_items(p) for p in plans]
    everything = [i for items in per_rank for i in items]
    if drop_last:
        assert len(everything) == len(set(everything))  # disjoint
        assert len(everything) == (n // (batch * world)) * batch * world
        assert all(len(p.batch(0, k)) == batch for p in plans for k in range(p.num_batches))
    else:
        assert set(everything) == set(range(n))  # union = all
        assert len(everything) - len(set(everything)) == (-n) % world  # only wrap padding
        if n % world == 0:
            assert len(everything) == n  # a true partition


def test_sequential_order_without_shuffle() -> None:
    plan = EpochPlan(num_items=10, batch_size=3, shuffle=False, drop_last=False)
    assert [plan.batch(0, k).tolist() for k in range(plan.num_batches)] == [
        [0, 1, 2],
        [3, 4, 5],
        [6, 7, 8],
        [9],
    ]


def test_epochs_differ_and_seed_is_deterministic() -> None:
    a = EpochPlan(num_items=100, batch_size=10, seed=1)
    b = EpochPlan(num_items=100, batch_size=10, seed=1)
    assert epoch_items(a, 0) == epoch_items(b, 0)
    assert epoch_items(a, 0) != epoch_items(a, 1)
    assert sorted(epoch_items(a, 1)) == list(range(100))
    assert epoch_items(a) != epoch_items(EpochPlan(num_items=100, batch_size=10, seed=2))


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="rank"):
        EpochPlan(num_items=10, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size"):
        EpochPlan(num_items=10, batch_size=0)
    with pytest.raises(ConfigError, match="world_size"):
        EpochPlan(num_items=10, batch_size=1, world_size=0)
    with pytest.raises(DataError, match="empty"):
        EpochPlan(num_items=0, batch_size=1)
    plan = EpochPlan(num_items=10, batch_size=2)
    with pytest.raises(IndexError):
        plan.batch(0, plan.num_batches)
    assert plan.batch(0, 0).dtype == np.int64


@pytest.mark.parametrize("shuffle", [True, False])
def test_iter_batches_matches_batch(shuffle: bool) -> None:
    plan = EpochPlan(
        num_items=1003, batch_size=7, shuffle=shuffle, drop_last=False, rank=1, world_size=3
    )
    expected = [plan.batch(2, k).tolist() for k in range(plan.num_batches)]
    assert [b.tolist() for b in plan.iter_batches(2, block=20)] == expected
    assert [b.tolist() for b in plan.iter_batches(2, 40, block=50)] == expected[40:]
    assert list(plan.iter_batches(2, plan.num_batches)) == []
