"""A run sized to a time budget: ``time_budget_s`` turns measured step times into ``max_steps``.

With ``time_budget_s > 0`` the [`Trainer`][lego.train.trainer.Trainer] times its first
steps and then fixes the run's length: ``max_steps`` becomes the steps that fit in the
budget at the measured pace, at most the configured ``max_steps`` (the plan at full size)
and at least the warmup (and the steps already taken). The learning-rate schedule follows
the new length from there on; the warmup's rates do not depend on the length, so a run
whose warmup covers the measured steps trains exactly as if it had been given the sized
``max_steps`` from the start.

What is timed: a step that meets a batch shape the process has not run before is left out
(it allocates and picks kernels for that shape; the process's first step always does), and
the median of the first [`SIZING_STEPS`][lego.train.budget.SIZING_STEPS] steps of shapes
already run is the step time. Fixed-shape pretraining times its steps 2 to 6; a padded
fine-tuning batch changes length often, and would be timed at its slower first-time pace
without this rule. Where shapes keep changing, sizing waits at most
[`SIZING_PATIENCE`][lego.train.budget.SIZING_PATIENCE] steps and then counts every step
but the first. Evaluations and checkpoints are not steps: they come on top of the budget.
A resumed run keeps the length its checkpoint recorded (as it keeps the precision), so a
run never changes length half-way; one interrupted before it was sized sizes itself after
resuming.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SIZING_PATIENCE", "SIZING_STEPS", "BudgetSizing", "size_to_budget"]

SIZING_STEPS = 5
"""Steps timed before the length is fixed (steps of batch shapes the process has run)."""

SIZING_PATIENCE = 50
"""The most steps sizing waits for ``SIZING_STEPS`` of shapes already run; then all count."""


@dataclass(frozen=True)
class BudgetSizing:
    """The length a time budget gave a run, and why.

    Attributes:
        step_seconds: The measured time of one optimizer step (the median of the timed steps).
        fits: The steps that fit in the budget at that pace.
        max_steps: The run's length: ``fits`` within ``[at_least, the configured max_steps]``.
        reason: One line for the console: the budget, the pace, and what it gave.
    """

    step_seconds: float
    fits: int
    max_steps: int
    reason: str


def size_to_budget(
    step_seconds: Sequence[float], *, budget_s: float, max_steps: int, at_least: int
) -> BudgetSizing:
    """Choose a run's length from its measured step times.

    Args:
        step_seconds: The timed steps' durations in seconds (at least one).
        budget_s: The seconds the run's steps may take (> 0).
        max_steps: The configured length: the most the run takes whatever the budget.
        at_least: The fewest steps it takes (the warmup, the steps already taken).

    Returns:
        The [`BudgetSizing`][lego.train.budget.BudgetSizing].

    Raises:
        ValueError: No step times, a non-positive budget, or ``at_least > max_steps``.

    Example:
        >>> size_to_budget([0.2, 0.25, 0.2], budget_s=60, max_steps=1000, at_least=10).max_steps
        300
        >>> size_to_budget([0.2], budget_s=600, max_steps=1000, at_least=10).max_steps
        1000
        >>> size_to_budget([0.2], budget_s=0.5, max_steps=1000, at_least=10).max_steps
        10
    """
    if not step_seconds:
        raise ValueError("no step times to size the run by")
    if not budget_s > 0:
        raise ValueError(f"the time budget must be > 0 seconds, got {budget_s}")
    if at_least > max_steps:
        raise ValueError(f"at_least ({at_least}) is above max_steps ({max_steps})")
    pace = statistics.median(step_seconds)
    fits = math.floor(budget_s / pace) if pace > 0 else max_steps
    chosen = min(max_steps, max(at_least, fits))
    why = f"time budget {budget_s:g} s at {pace * 1000:.1f} ms a step: {fits:,} steps fit"
    if chosen == max_steps and fits >= max_steps:
        why += f"; training the configured {max_steps:,}"
    elif chosen == at_least and fits < at_least:
        why += f"; training {chosen:,}, the fewest it may (warmup and steps taken)"
    else:
        why += f"; training {chosen:,} of the configured {max_steps:,}"
    return BudgetSizing(step_seconds=pace, fits=fits, max_steps=chosen, reason=why)
