"""Generated tasks with verifiable answers: data for RL and for offline evaluation.

Reinforcement learning with verifiable rewards (GRPO on arithmetic, say) needs prompts whose
answers a program can check, and an evaluation set the policy never trained on. Downloads
are not always possible, so these tasks are generated from a seed, with nothing but the
standard library:

- ``addition``: ``"12+7="`` -> ``"19"`` (operands ``0 ... max_value``);
- ``arithmetic``: ``+``, ``-`` and ``*`` on ``0 ... max_value`` (subtraction never goes below
  zero: the larger operand comes first);
- ``sort``: ``"sort 3 1 2 ="`` -> ``" 1 2 3"`` (``min_length ... max_length`` digits);
- ``reverse``: ``"reverse 3 1 2 ="`` -> ``" 2 1 3"``.

Each row is a record with ``prompt``, ``completion`` (the reference answer as the model
should write it, for supervised warm-up) and ``answer`` (what a verifier compares with: the
completion without its leading space), plus ``task``. The held-out split is decided by the
*problem*, not by the row: a problem belongs to ``test`` when the hash of its text falls
below ``test_fraction``, so no held-out problem ever appears in training, whatever the
seeds and counts ([`task_split()`][lego.data.tasks.task_split]). Rows are drawn without
replacement while the split's problems last; a ``train`` request for more rows than
problems goes round again in a new order, a ``test`` request for more rows than problems
is an error (held-out scores count each problem once).

Example:
    >>> rows = task_rows("addition", count=2, seed=0, max_value=9)
    >>> row = rows[0]
    >>> sorted(row)
    ['answer', 'completion', 'prompt', 'task']
    >>> a, b = row["prompt"].rstrip("=").split("+")
    >>> int(a) + int(b) == int(row["answer"])
    True
    >>> (listed,) = task_rows("sort", count=1, seed=0)
    >>> listed["completion"].startswith(" ")  # lists: a space first
    True
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from typing import Literal

from lego.protocols import ConfigError, check_choice, check_float, check_int

__all__ = ["TASK_NAMES", "TaskSplit", "task_rows", "task_split", "task_problems"]

TASK_NAMES = ("addition", "arithmetic", "sort", "reverse")
"""The generated tasks."""

TaskSplit = Literal["train", "test"]

_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


def task_split(task: str, prompt: str, *, test_fraction: float) -> TaskSplit:
    """The split a problem belongs to: ``test`` when its hash falls below ``test_fraction``.

    Args:
        task: The task name (part of the hash, so the tasks split independently).
        prompt: The problem's prompt.
        test_fraction: The share of problems held out, in ``[0, 1)``.

    Returns:
        ``"train"`` or ``"test"``.

    Example:
        >>> task_split("addition", "1+2=", test_fraction=0.0)
        'train'
    """
    digest = hashlib.sha256(f"{task}\0{prompt}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


def _row(task: str, prompt: str, answer: str, *, sep: str = "") -> dict[str, str]:
    return {"prompt": prompt, "completion": sep + answer, "answer": answer, "task": task}


def task_problems(
    task: str, *, max_value: int = 20, min_length: int = 3, max_length: int = 5
) -> list[dict[str, str]] | None:
    """Every problem of a task whose problems can be listed, in a fixed order.

    Args:
        task: One of [`TASK_NAMES`][lego.data.tasks.TASK_NAMES].
        max_value: The largest operand of ``addition`` / ``arithmetic``.
        min_length: The shortest list of ``sort`` / ``reverse``.
        max_length: The longest list.

    Returns:
        The rows of all problems (both splits); None for ``sort`` and ``reverse`` when
        their lists number more than 10,000 (they are drawn at random instead).

    Raises:
        ConfigError: An unknown task or a bad size.
    """
    check_choice("task", task, TASK_NAMES)
    check_int("max_value", max_value, minimum=1)
    check_int("min_length", min_length, minimum=1)
    check_int("max_length", max_length, minimum=min_length)
    if task in ("sort", "reverse"):
        if _list_space(min_length, max_length) > _LISTED:
            return None
        return [
            _list_row(task, [int(c) for c in f"{i:0{n}d}"])
            for n in range(min_length, max_length + 1)
            for i in range(10**n)
        ]
    ops = "+" if task == "addition" else "+-*"
    rows = []
    for op in ops:
        for a in range(max_value + 1):
            for b in range(max_value + 1):
                if op == "-" and b > a:
                    continue
                rows.append(_row(task, f"{a}{op}{b}=", str(_OPS[op](a, b))))
    return rows


_LISTED = 10_000
"""Lists of digits are enumerated up to this many problems, drawn at random above it."""


def _list_space(min_length: int, max_length: int) -> int:
    return sum(10**n for n in range(min_length, max_length + 1))


def _list_row(task: str, digits: list[int]) -> dict[str, str]:
    answer = sorted(digits) if task == "sort" else digits[::-1]
    text = " ".join(map(str, digits))
    return _row(task, f"{task} {text} =", " ".join(map(str, answer)), sep=" ")


def _random_lists(
    task: str, rng: random.Random, min_length: int, max_length: int
) -> Iterator[dict[str, str]]:
    while True:
        n = rng.randint(min_length, max_length)
        yield _list_row(task, [rng.randrange(10) for _ in range(n)])


def task_rows(
    task: str,
    *,
    count: int,
    split: TaskSplit = "train",
    seed: int = 0,
    test_fraction: float = 0.2,
    max_value: int = 20,
    min_length: int = 3,
    max_length: int = 5,
) -> list[dict[str, str]]:
    """``count`` rows of a generated task from one split, reproducible from ``seed``.

    Args:
        task: ``addition``, ``arithmetic``, ``sort`` or ``reverse``.
        count: Rows to return (>= 1).
        split: ``train`` or ``test``; the two never share a problem.
        seed: Seeds the order (and, for ``sort`` / ``reverse``, the lists).
        test_fraction: The share of problems held out, in ``(0, 1)``.
        max_value: The largest operand (``addition``, ``arithmetic``).
        min_length: The shortest list (``sort``, ``reverse``).
        max_length: The longest list.

    Returns:
        Records ``{"prompt", "completion", "answer", "task"}``, distinct problems first.

    Raises:
        ConfigError: An unknown task or split, a bad size, or a ``test`` request for more
            rows than the split has problems (the message gives the number).
    """
    check_choice("task", task, TASK_NAMES)
    check_choice("split", split, ("train", "test"))
    check_int("count", count, minimum=1)
    check_float("test_fraction", test_fraction, low=0.0, high=1.0)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must be strictly between 0 and 1, got {test_fraction}",
            key="test_fraction",
            hint="e.g. test_fraction: 0.2",
        )
    rng = random.Random(f"{task}:{split}:{seed}")
    problems = task_problems(
        task, max_value=max_value, min_length=min_length, max_length=max_length
    )
    if problems is None:  # many lists: draw distinct problems of the split at random
        share = test_fraction if split == "test" else 1.0 - test_fraction
        most = int(_list_space(min_length, max_length) * share) // 2
        if count > most:
            raise ConfigError(
                f"{count} distinct {split} rows of {task!r} asked for; lists of "
                f"{min_length}-{max_length} digits give about {most} at most",
                key="count",
                hint="ask for fewer rows, or raise max_length",
            )
        rows: list[dict[str, str]] = []
        seen: set[str] = set()
        for row in _random_lists(task, rng, min_length, max_length):
            prompt = row["prompt"]
            if prompt in seen or task_split(task, prompt, test_fraction=test_fraction) != split:
                continue
            seen.add(prompt)
            rows.append(row)
            if len(rows) == count:
                return rows
    assert problems is not None
    pool = [
        p for p in problems if task_split(task, p["prompt"], test_fraction=test_fraction) == split
    ]
    if not pool or (split == "test" and count > len(pool)):
        raise ConfigError(
            f"the {split} split of {task!r} has {len(pool)} problems (test_fraction="
            f"{test_fraction}); {count} rows were asked for",
            key="count",
            hint="ask for fewer rows, or make the problems larger (max_value, max_length) "
            "or test_fraction larger",
        )
    out: list[dict[str, str]] = []
    while len(out) < count:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: count - len(out)])
    return out
