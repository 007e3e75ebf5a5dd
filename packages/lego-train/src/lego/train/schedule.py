"""Learning-rate schedules counted in optimizer steps: warmup + cosine, linear, constant, WSD.

A schedule is a [`LRSchedule`][lego.train.schedule.LRSchedule]: a picklable callable
``step -> multiplier of the peak lr``. [`build_scheduler()`][lego.train.schedule.build_scheduler]
wraps it in ``torch.optim.lr_scheduler.LambdaLR``, whose ``state_dict`` holds only numbers (it
loads with ``torch.load(weights_only=True)``).

At step ``s`` (0-based: the lr used by the ``s+1``-th optimizer step), with ``W`` warmup
steps, ``N`` total steps and ``m = min_lr / lr``:

- warmup (all schedules): ``(s + 1) / (W + 1)`` while ``s < W``;
- ``cosine``: ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (s - W) / (N - W)``;
- ``linear``: ``1 - (1 - m) * p``;
- ``constant``: 1;
- ``wsd``: 1 until the last ``decay_fraction * N`` steps, then linear to ``m``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lego.train.config import OptimConfig, ScheduleConfig, ScheduleName

__all__ = ["LRSchedule", "build_scheduler"]


@dataclass
class LRSchedule:
    """The learning-rate multiplier at each optimizer step.

    Attributes:
        name: The schedule's name (see [`ScheduleName`][lego.train.config.ScheduleName]).
        warmup_steps: Linear warmup steps.
        max_steps: Total optimizer steps.
        min_ratio: ``min_lr / lr``, the floor of the decaying schedules.
        decay_fraction: The decaying share of the steps for ``wsd``.
    """

    name: ScheduleName
    warmup_steps: int
    max_steps: int
    min_ratio: float
    decay_fraction: float = 0.2

    def __call__(self, step: int) -> float:
        """Return the multiplier of the peak learning rate at ``step`` (0-based)."""
        warmup = self.warmup_steps
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.name == "constant":
            return 1.0
        floor = self.min_ratio
        if self.name == "wsd":
            decay_steps = max(1, round(self.decay_fraction * self.max_steps))
            decay_start = max(warmup, self.max_steps - decay_steps)
            if step < decay_start:
                return 1.0
            span = max(1, self.max_steps - decay_start)
            progress = min(1.0, (step - decay_start) / span)
            return 1.0 - (1.0 - floor) * progress
        span = max(1, self.max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        if self.name == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    optim: OptimConfig,
    schedule: ScheduleConfig,
    max_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Make the ``LambdaLR`` that drives ``optimizer``'s learning rate.

    Args:
        optimizer: The optimizer (its groups' ``lr`` are the peak rates).
        optim: The optimizer config (``lr``, ``min_lr``).
        schedule: The schedule config.
        max_steps: Total optimizer steps.

    Returns:
        A scheduler to ``step()`` once after each optimizer step.
    """
    fn = LRSchedule(
        name=schedule.name,
        warmup_steps=schedule.warmup_steps,
        max_steps=max_steps,
        min_ratio=optim.min_lr / optim.lr,
        decay_fraction=schedule.decay_fraction,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
