"""ThreadChooser: tries both thread counts per tier, runs the faster, follows a change."""

from __future__ import annotations

import pytest

from lego.protocols import ConfigError
from lego.serve.threads import ThreadChooser


def run(chooser: ThreadChooser, tier: int, steps: int, cost: dict[int, float]) -> list[int]:
    """Pick and record ``steps`` steps whose time is ``cost[threads]``; the counts picked."""
    picked = []
    for _ in range(steps):
        threads = chooser.pick(tier)
        chooser.record(tier, threads, cost[threads])
        picked.append(threads)
    return picked


def test_one_thread_leaves_nothing_to_choose() -> None:
    chooser = ThreadChooser(1)
    assert chooser.options == (1,)
    assert run(chooser, 4, 10, {1: 1.0}) == [1] * 10


def test_each_count_is_tried_then_the_faster_runs_with_rare_exploration() -> None:
    chooser = ThreadChooser(4, trials=2, explore_every=8)
    picked = run(chooser, 16, 40, {4: 0.5, 1: 2.0})
    assert sorted(picked[:4]) == [1, 1, 4, 4]  # the trials
    later = picked[4:]
    assert later.count(4) > later.count(1) >= 1  # mostly the faster, the other re-tried
    assert later.count(1) <= len(later) // 8 + 1


def test_a_change_of_load_is_followed() -> None:
    chooser = ThreadChooser(2, trials=1, explore_every=4, decay=0.5)
    quiet = run(chooser, 8, 20, {2: 0.3, 1: 0.6})  # quiet: two threads win
    assert quiet[-8:].count(2) >= 6
    picked = run(chooser, 8, 60, {2: 2.0, 1: 0.5})  # oversubscribed: one thread wins
    assert picked[-10:].count(1) >= 8


def test_tiers_are_measured_apart() -> None:
    chooser = ThreadChooser(2, trials=1, explore_every=100)
    run(chooser, 1, 5, {2: 0.5, 1: 0.1})
    run(chooser, 16, 5, {2: 0.5, 1: 1.0})
    assert run(chooser, 1, 3, {2: 0.5, 1: 0.1}) == [1, 1, 1]
    assert run(chooser, 16, 3, {2: 0.5, 1: 1.0}) == [2, 2, 2]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"threads": 0}, "threads"),
        ({"threads": 2, "trials": 0}, "trials"),
        ({"threads": 2, "explore_every": 1}, "explore_every"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ThreadChooser(**kwargs)
