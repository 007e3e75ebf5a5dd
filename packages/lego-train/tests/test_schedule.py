from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.train import (
    LRSchedule,
    Trainer,
)

MakeTrainer = Callable[..., Trainer]


def test_cosine_schedule_warms_up_then_decays_to_min() -> None:
    s = LRSchedule(name="cosine", warmup_steps=4, max_steps=20, min_ratio=0.1)
    assert [s(i) for i in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert s(4) == pytest.approx(1.0)
    assert s(20) == pytest.approx(0.1)
    assert s(12) == pytest.approx(0.55)


def test_wsd_is_stable_then_decays() -> None:
    s = LRSchedule(name="wsd", warmup_steps=0, max_steps=10, min_ratio=0.0, decay_fraction=0.2)
    assert [s(i) for i in range(8)] == [1.0] * 8
    assert s(9) == pytest.approx(0.5)
    assert LRSchedule(name="constant", warmup_steps=0, max_steps=10, min_ratio=0.0)(9) == 1.0
    assert LRSchedule(name="linear", warmup_steps=0, max_steps=10, min_ratio=0.0)(5) == 0.5


@given(st.integers(0, 50), st.integers(51, 200), st.floats(0.0, 1.0))
def test_schedules_stay_between_min_and_one(warmup: int, total: int, floor: float) -> None:
    for name in ("cosine", "linear", "wsd", "constant"):
        s = LRSchedule(name=name, warmup_steps=warmup, max_steps=total, min_ratio=floor)  # type: ignore[arg-type]
        values = [s(i) for i in range(total)]  # the lr of each of the total steps
        assert all(0 <= v <= 1.0 + 1e-12 for v in values)
        assert all(v >= floor - 1e-12 for v in values[warmup:])
