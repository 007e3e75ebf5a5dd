"""Generated tasks: right answers, disjoint splits, reproducible draws, clear errors."""

from __future__ import annotations

import pytest

from lego.data.tasks import TASK_NAMES, task_problems, task_rows, task_split
from lego.protocols import ConfigError


def _solve(row: dict[str, str]) -> str:
    prompt = row["prompt"]
    if row["task"] in ("addition", "arithmetic"):
        expression = prompt.rstrip("=")
        for op in "+-*":
            if op in expression:
                a, b = (int(x) for x in expression.split(op))
                return str({"+": a + b, "-": a - b, "*": a * b}[op])
    digits = prompt.split()[1:-1]
    return " ".join(sorted(digits) if row["task"] == "sort" else digits[::-1])


@pytest.mark.parametrize("task", TASK_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_answer_is_right(task: str, split: str) -> None:
    rows = task_rows(task, count=40, split=split, seed=3)  # type: ignore[arg-type]
    assert len(rows) == 40
    for row in rows:
        assert row["task"] == task
        assert row["answer"] == _solve(row)
        assert row["completion"].strip() == row["answer"]


@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_splits_never_share_a_problem(task: str) -> None:
    train = {r["prompt"] for r in task_rows(task, count=300, seed=0)}
    test = {r["prompt"] for r in task_rows(task, count=60, split="test", seed=0)}
    assert len(train) > 100
    assert len(test) == 60
    assert not train & test
    for prompt in test:
        assert task_split(task, prompt, test_fraction=0.2) == "test"


@pytest.mark.parametrize("task", TASK_NAMES)
def test_the_same_seed_gives_the_same_rows_and_another_seed_others(task: str) -> None:
    assert task_rows(task, count=20, seed=5) == task_rows(task, count=20, seed=5)
    assert task_rows(task, count=20, seed=5) != task_rows(task, count=20, seed=6)


def test_rows_are_distinct_while_the_problems_last_then_go_round() -> None:
    pool = [
        p
        for p in task_problems("addition", max_value=4) or []
        if task_split("addition", p["prompt"], test_fraction=0.2) == "train"
    ]
    rows = task_rows("addition", count=len(pool) + 3, max_value=4)
    first = [r["prompt"] for r in rows[: len(pool)]]
    assert sorted(first) == sorted(p["prompt"] for p in pool)
    assert len(rows) == len(pool) + 3


def test_the_problem_set_is_complete() -> None:
    problems = task_problems("arithmetic", max_value=3) or []
    # +: 16, *: 16, -: the 10 pairs with a >= b
    assert len(problems) == 42
    assert all(int(p["answer"]) >= 0 for p in problems)
    assert len(task_problems("sort", min_length=1, max_length=2) or []) == 110
    assert task_problems("sort") is None  # 111,000 lists: drawn, not listed


def test_sizes_shape_the_problems() -> None:
    rows = task_rows("reverse", count=50, min_length=2, max_length=2, seed=1)
    assert all(len(r["answer"].split()) == 2 for r in rows)
    rows = task_rows("addition", count=50, max_value=5, seed=1)
    assert all(int(r["answer"]) <= 10 for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"task": "division", "count": 1}, "task"),
        ({"task": "addition", "count": 0}, "count"),
        ({"task": "addition", "count": 1, "split": "val"}, "split"),
        ({"task": "addition", "count": 1, "test_fraction": 0.0}, "test_fraction"),
        ({"task": "addition", "count": 1, "test_fraction": 1.5}, "test_fraction"),
        ({"task": "addition", "count": 1, "max_value": 0}, "max_value"),
        ({"task": "sort", "count": 1, "min_length": 3, "max_length": 2}, "max_length"),
        # held-out problems are counted once: never more rows than problems
        ({"task": "addition", "count": 500, "split": "test", "max_value": 9}, "count"),
        ({"task": "sort", "count": 10**6, "split": "test"}, "count"),
    ],
)
def test_bad_requests_name_the_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        task_rows(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key
