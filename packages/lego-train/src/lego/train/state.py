"""The run's progress as the [`TrainerState`][lego.protocols.TrainerState] callbacks see."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RunState"]


@dataclass
class RunState:
    """Steps, tokens and the latest metrics of a run.

    It satisfies [`TrainerState`][lego.protocols.TrainerState].

    Attributes:
        step: Optimizer steps taken.
        max_steps: Optimizer steps planned.
        tokens_seen: Training tokens (labels that are not ignored) consumed over all ranks.
        metrics: The latest logged values (``loss``, ``lr``, ``val_loss``, ...).
        should_stop: Set by a callback (or a signal) to end after the current step.
        skipped_steps: Steps whose update was skipped for a non-finite loss.
        stop_signal: The signal (``signal.SIGINT``, ``signal.SIGTERM``) that stopped the
            run early after saving a checkpoint, or None.
    """

    step: int = 0
    max_steps: int = 0
    tokens_seen: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    should_stop: bool = False
    skipped_steps: int = 0
    stop_signal: int | None = None
