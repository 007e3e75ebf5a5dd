"""Training contracts: batch sources, checkpointable state, trainer state and callbacks.

lego-train runs any model on any [`BatchSource`][lego.protocols.BatchSource]; lego-data's loaders,
SFT and preference datasets implement it. Exact resume works because every stateful piece (model,
optimizer, scheduler, batch source, callback) is [`Checkpointable`][lego.protocols.Checkpointable].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor  # TYPE_CHECKING only: never imported at run time

__all__ = [
    "IGNORE_INDEX",
    "LMBatch",
    "BatchSource",
    "Checkpointable",
    "TrainerState",
    "TrainerCallback",
]

IGNORE_INDEX = -100
"""Label value that the loss skips (prompt tokens in SFT, padding). Same as PyTorch's
``cross_entropy`` default and transformers' convention."""

BatchT_co = TypeVar("BatchT_co", covariant=True)


class LMBatch(TypedDict, total=False):
    """A language-modelling batch. ``input_ids`` and ``labels`` are always present.

    Attributes:
        input_ids: Token ids, shape ``(B, T)``, dtype long.
        labels: Targets aligned with ``input_ids`` *already shifted* (``labels[:, t]`` is the
            token after ``input_ids[:, t]``), shape ``(B, T)``;
            [`IGNORE_INDEX`][lego.protocols.IGNORE_INDEX] is skipped.
        attention_mask: 1 for real tokens, 0 for padding, shape ``(B, T)``.
        position_ids: Positions, shape ``(B, T)`` (packed sequences restart at 0).
    """

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor
    position_ids: Tensor


@runtime_checkable
class Checkpointable(Protocol):
    """An object whose state can be saved and restored exactly.

    ``torch.nn.Module``, ``torch.optim.Optimizer`` and learning-rate schedulers conform.
    States hold tensors, numbers, strings and containers of them only, so they load with
    ``torch.load(weights_only=True)``.
    """

    def state_dict(self) -> dict[str, Any]:
        """Return the state (a fresh dictionary the caller may keep)."""
        ...

    def load_state_dict(self, state_dict: dict[str, Any], /) -> Any:
        """Restore a state from ``state_dict()``; the return value is ignored."""
        ...


@runtime_checkable
class BatchSource(Checkpointable, Protocol[BatchT_co]):
    """An iterable of batches whose position can be saved and restored mid-epoch.

    After ``load_state_dict(s)``, iteration continues with exactly the batch that would have
    followed when ``s`` was taken.
    """

    def __iter__(self) -> Iterator[BatchT_co]:
        """Yield batches (e.g. [`LMBatch`][lego.protocols.LMBatch]) from the current position."""
        ...


@runtime_checkable
class TrainerState(Protocol):
    """What a trainer tells its callbacks about the run so far."""

    @property
    def step(self) -> int:
        """Optimizer steps taken."""
        ...

    @property
    def max_steps(self) -> int:
        """Optimizer steps planned."""
        ...

    @property
    def tokens_seen(self) -> int:
        """Training tokens consumed (over all ranks)."""
        ...

    @property
    def metrics(self) -> Mapping[str, float]:
        """The latest logged values (e.g. ``loss``, ``lr``, ``val_loss``)."""
        ...

    should_stop: bool
    """Set to True in a callback to end training after the current step."""


class TrainerCallback(Protocol):
    """Hooks a trainer calls during a run. Every hook is optional.

    Subclass this protocol explicitly to inherit no-op hooks and override the ones you need::

        class StopAtLoss(TrainerCallback):
            def on_step_end(self, state: TrainerState) -> None:
                state.should_stop = state.metrics.get("loss", 1e9) < 2.0
    """

    def on_train_begin(self, state: TrainerState) -> None:
        """Called once before the first step (also after a resume)."""

    def on_step_end(self, state: TrainerState) -> None:
        """Called after every optimizer step."""

    def on_evaluate(self, state: TrainerState, metrics: Mapping[str, float]) -> None:
        """Called after each evaluation with its metrics (e.g. ``val_loss``)."""

    def on_save(self, state: TrainerState, path: Path) -> None:
        """Called after a checkpoint directory is complete at ``path``."""

    def on_train_end(self, state: TrainerState) -> None:
        """Called once after the last step."""
