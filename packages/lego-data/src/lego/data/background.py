"""The machinery shared by the loaders: a background thread, an epoch plan, exact resume.

[`BackgroundLoader`][lego.data.background.BackgroundLoader] is the base of
[`TokenLoader`][lego.data.loader.TokenLoader] and
[`ExampleLoader`][lego.data.example_loader.ExampleLoader]. A subclass supplies a *producer*:
a callable that turns the item indices of one batch into a batch of tensors. The base class
runs the producer in a daemon thread that fills a bounded ``queue.Queue`` of ready batches
(``prefetch`` of them), while the training loop drains it; it follows an
[`EpochPlan`][lego.data.plan.EpochPlan] (seeded order, rank sharding), counts the batches
handed out, and saves and restores that position.

Iteration semantics:

- ``iter(loader)`` yields the rest of the current epoch, from the saved position, then moves
  to the next epoch (``repeat=True`` keeps going across epochs forever).
- The position counts batches *handed to the caller*, not batches prepared ahead, so
  ``state_dict()`` taken between two batches resumes with exactly the next one.
- One iteration at a time: starting a new ``iter()``, ``load_state_dict()`` or ``close()``
  stops the running thread, and the previous iterator then ends.
- An exception raised in the thread (a bad file, a collate error) is re-raised in the caller
  at the batch where it happened, with its original traceback.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Generic, TypedDict, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from lego.data.plan import EpochPlan
from lego.protocols import CompatibilityError, ConfigError, FormatError

__all__ = ["BackgroundLoader", "LoaderOptions", "Producer", "STATE_VERSION"]

BatchT = TypeVar("BatchT")

Producer = Callable[[int, npt.NDArray[np.int64]], BatchT]
"""``producer(epoch, item_indices) -> batch``; runs in the loader's thread."""

STATE_VERSION: Final = 1
"""The version of the loaders' ``state_dict()`` layout."""

_JOIN_TIMEOUT_S = 30.0
_POLL_S = 0.05  # how long a producer waits on a full queue before it checks for a stop
_LAYOUT_KEYS: Final = ("num_items", "batch_size", "world_size", "drop_last", "shuffle")


class LoaderOptions(TypedDict, total=False):
    """The keyword options every loader takes besides its data and ``batch_size``.

    [`TokenLoader`][lego.data.loader.TokenLoader] and
    [`ExampleLoader`][lego.data.example_loader.ExampleLoader] accept them as ``**options``
    and hand them to [`BackgroundLoader`][lego.data.background.BackgroundLoader], which
    documents each one and holds their defaults.

    Attributes:
        shuffle: Visit items in a seeded pseudo-random order (a new order every epoch).
        seed: The shuffle seed; the same seed gives the same batches.
        drop_last: Skip the incomplete last batch.
        rank: This process's rank, for DDP; ranks partition each epoch's items.
        world_size: The number of ranks; every rank gets the same number of batches.
        prefetch: Batches prepared ahead (the queue's capacity).
        pin_memory: Page-locked batches; None means "when CUDA is available".
        device: Move batches there before handing them out (asynchronously when pinned).
        repeat: Iterate across epochs forever (for step-driven training loops).
    """

    shuffle: bool
    seed: int
    drop_last: bool
    rank: int
    world_size: int
    prefetch: int
    pin_memory: bool | None
    device: str | torch.device | None
    repeat: bool


class _End:
    """The thread's last message: the planned batches are all in the queue."""


_STOPPED: Final = object()
"""Put by ``_Run.signal()`` to wake a consumer waiting on an empty queue."""


@dataclass(frozen=True)
class _Failure:
    error: BaseException


@dataclass(frozen=True)
class _Ready(Generic[BatchT]):
    epoch: int
    index: int
    batch: BatchT


class _Run:
    """One running thread and the bounded queue it fills.

    ``queue.Queue`` cannot wake a thread blocked on it before Python 3.13's ``shutdown()``,
    so stopping is a flag that both sides honour: the producer waits on a full queue in
    slices of ``_POLL_S`` seconds and checks the flag between them (a batch is ready long
    before that matters), and a sentinel wakes a consumer waiting on an empty queue.
    """

    def __init__(self, capacity: int) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(capacity)
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def put(self, item: Any) -> bool:
        """Hand an item to the consumer, waiting while the queue is full.

        Returns:
            False once the run is stopped (the item may be dropped; the producer stops).
        """
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
            except queue.Full:
                continue
            return not self.stopped.is_set()
        return False

    def get(self) -> Any:
        """Take the next item, waiting while the queue is empty (``_STOPPED`` once stopped)."""
        if self.stopped.is_set():
            return _STOPPED
        item = self.queue.get()
        return _STOPPED if self.stopped.is_set() else item

    def signal(self) -> None:
        """Ask the thread to stop and wake a consumer waiting on the queue; do not wait."""
        self.stopped.set()
        # Full: the queue holds items, so no consumer waits on it.
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(_STOPPED)

    def stop(self) -> None:
        """Stop the thread, wait for it, and drop the prepared batches."""
        self.signal()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_JOIN_TIMEOUT_S)
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):  # for a consumer woken but not yet served
            self.queue.put_nowait(_STOPPED)


def _work(
    run: _Run,
    producer: Producer[Any],
    plan: EpochPlan,
    epoch: int,
    position: int,
    repeat: bool,
) -> None:
    """The thread body: produce batches in plan order until done or stopped."""
    try:
        while not run.stopped.is_set():
            batches = plan.iter_batches(epoch, position)
            for index, items in enumerate(batches, start=position):
                if not run.put(_Ready(epoch, index, producer(epoch, items))):
                    return
            if not repeat:
                break
            epoch, position = epoch + 1, 0
        run.put(_End())
    except BaseException as error:  # handed to the consumer, re-raised there
        run.put(_Failure(error))


class _BatchIterator(Iterator[BatchT]):
    """Drains one run's buffer and advances the loader's position."""

    def __init__(self, loader: BackgroundLoader[BatchT], run: _Run) -> None:
        self._loader = loader
        self._run = run
        self._done = False

    def __iter__(self) -> _BatchIterator[BatchT]:
        return self

    def __next__(self) -> BatchT:
        if self._done:
            raise StopIteration
        item = self._run.get()
        if item is _STOPPED or isinstance(item, _End):
            self._finish()
            raise StopIteration
        if isinstance(item, _Failure):
            self._finish()
            raise item.error
        self._loader._advance(item.epoch, item.index)
        return self._loader._to_device(item.batch)

    def _finish(self) -> None:
        self._done = True
        self._loader._stop_run(self._run)

    def close(self) -> None:
        """Stop the thread behind this iterator (the loader keeps its position)."""
        if not self._done:
            self._finish()

    def __del__(self) -> None:
        run = getattr(self, "_run", None)
        if run is not None and not getattr(self, "_done", True):
            run.signal()


class BackgroundLoader(ABC, Generic[BatchT]):
    """A resumable, shardable batch source whose batches are built in a background thread.

    Satisfies [`BatchSource`][lego.protocols.BatchSource]. Subclasses implement
    ``_make_producer()``.

    Args:
        num_items: Items in the dataset.
        batch_size: Items per batch on this rank.
        shuffle: Visit items in a seeded pseudo-random order (else in index order).
        seed: The shuffle seed (the epoch number is mixed in: every epoch differs).
        drop_last: Skip the incomplete last batch (see [`EpochPlan`][lego.data.plan.EpochPlan]).
        rank: This process's rank (``torch.distributed.get_rank()``).
        world_size: The number of ranks (``torch.distributed.get_world_size()``).
        prefetch: Batches prepared ahead (the queue's capacity).
        pin_memory: Allocate batches in page-locked memory for fast, asynchronous copies to
            the GPU; None means "when CUDA is available".
        device: Move every batch there (``non_blocking`` from pinned memory) before handing
            it out; None keeps batches on the CPU.
        repeat: Keep iterating across epochs instead of stopping at the end of one.

    Raises:
        ConfigError: On bad sizes, a rank outside ``range(world_size)``, or
            ``pin_memory=True`` without CUDA.
        DataError: When the dataset cannot fill one batch per rank.
    """

    def __init__(
        self,
        *,
        num_items: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        pin_memory: bool | None = None,
        device: str | torch.device | None = None,
        repeat: bool = False,
    ) -> None:
        if isinstance(prefetch, bool) or prefetch < 1:
            raise ConfigError(f"prefetch must be at least 1, got {prefetch!r}", key="prefetch")
        cuda = torch.cuda.is_available()
        if pin_memory and not cuda:
            raise ConfigError(
                "pin_memory=True needs CUDA, which this torch build or machine lacks",
                key="pin_memory",
                hint="leave pin_memory unset (None) to pin only when CUDA is available",
            )
        self.plan = EpochPlan(
            num_items=num_items,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
            rank=rank,
            world_size=world_size,
        )
        self.prefetch = prefetch
        self.pin_memory = cuda if pin_memory is None else pin_memory
        self.device = torch.device(device) if device is not None else None
        self.repeat = repeat
        self.epoch = 0
        self.position = 0
        self._run: _Run | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ subclass hook

    @abstractmethod
    def _make_producer(self) -> Producer[BatchT]:
        """Return a fresh producer (called once per iteration, used only by its thread).

        The producer must not hold a reference to the loader, so an abandoned loader can be
        garbage-collected (and its thread stopped) while the thread is alive.
        """

    # ---------------------------------------------------------------------- iteration

    @property
    def batch_size(self) -> int:
        """Items per batch on this rank."""
        return self.plan.batch_size

    @property
    def seed(self) -> int:
        """The shuffle seed."""
        return self.plan.seed

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self.plan.num_batches

    def __iter__(self) -> Iterator[BatchT]:
        """Yield the remaining batches of the current epoch (of every epoch with ``repeat``)."""
        with self._lock:
            if self._run is not None:
                self._run.stop()
            run = _Run(self.prefetch)
            thread = threading.Thread(
                target=_work,
                args=(
                    run,
                    self._make_producer(),
                    self.plan,
                    self.epoch,
                    self.position,
                    self.repeat,
                ),
                name=f"{type(self).__name__}-worker",
                daemon=True,
            )
            run.thread = thread
            self._run = run
            thread.start()
        return _BatchIterator(self, run)

    def _describe(self) -> str:
        """The leading part of ``repr()``: what the loader reads (subclasses override)."""
        return f"items={self.plan.num_items}"

    def __repr__(self) -> str:
        plan = self.plan
        return (
            f"{type(self).__name__}({self._describe()}, batch_size={plan.batch_size}, "
            f"shuffle={plan.shuffle}, seed={plan.seed}, rank={plan.rank}, "
            f"world_size={plan.world_size}, batches={len(self)}, epoch={self.epoch}, "
            f"position={self.position})"
        )

    def _advance(self, epoch: int, index: int) -> None:
        if index + 1 >= self.plan.num_batches:
            self.epoch, self.position = epoch + 1, 0
        else:
            self.epoch, self.position = epoch, index + 1

    def _stop_run(self, run: _Run) -> None:
        run.stop()
        with self._lock:
            if self._run is run:
                self._run = None

    def _to_device(self, batch: BatchT) -> BatchT:
        if self.device is None or not isinstance(batch, Mapping):
            return batch
        moved: dict[str, Any] = {
            key: value.to(self.device, non_blocking=self.pin_memory)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in batch.items()
        }
        return moved  # type: ignore[return-value]

    def set_epoch(self, epoch: int) -> None:
        """Jump to the start of ``epoch`` (stops a running iteration).

        Args:
            epoch: The epoch number (0-based).
        """
        self.close()
        self.epoch, self.position = epoch, 0

    # -------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Return the position: epoch, batches handed out in it, seed and the batch layout.

        Returns:
            A fresh dictionary of ints and bools (loads with ``torch.load(weights_only=True)``).
        """
        plan = self.plan
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": plan.seed,
            "num_items": plan.num_items,
            "batch_size": plan.batch_size,
            "world_size": plan.world_size,
            "rank": plan.rank,
            "drop_last": plan.drop_last,
            "shuffle": plan.shuffle,
        }

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        """Continue from a saved position: the next batch is the one after the save.

        The seed is taken from the state. The batch layout (dataset size, batch size, world
        size, ``drop_last``, ``shuffle``) must match, since the position means nothing
        otherwise. A running iteration is stopped.

        Args:
            state_dict: A dictionary from
                [`state_dict()`][lego.data.background.BackgroundLoader.state_dict].

        Raises:
            FormatError: When a key is missing or has the wrong type.
            CompatibilityError: When the batch layout differs from this loader's.
        """
        for key in ("version", "epoch", "position", "seed", *_LAYOUT_KEYS):
            if key not in state_dict:
                raise FormatError(
                    f"the loader state lacks the key {key!r}",
                    key=key,
                    hint="pass the dictionary a lego.data loader's state_dict() returned",
                )
        if state_dict["version"] != STATE_VERSION:
            raise FormatError(
                f"loader state version {state_dict['version']!r} is not {STATE_VERSION}",
                key="version",
            )
        plan = self.plan
        for key in _LAYOUT_KEYS:
            ours, theirs = getattr(plan, key), state_dict[key]
            if ours != theirs:
                raise CompatibilityError(
                    f"the saved loader had {key}={theirs!r}, this one has {key}={ours!r}: "
                    "the saved position cannot be resumed exactly",
                    key=key,
                    hint=f"build the loader with {key}={theirs!r} (and the same dataset)",
                )
        epoch, position, seed = state_dict["epoch"], state_dict["position"], state_dict["seed"]
        for key, value in (("epoch", epoch), ("position", position), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise FormatError(f"{key} must be an integer, got {value!r}", key=key)
        if epoch < 0 or not 0 <= position < plan.num_batches:
            raise FormatError(
                f"position {position} of epoch {epoch} is outside the {plan.num_batches} "
                "batches of an epoch",
                key="position",
            )
        self.close()
        if seed != plan.seed:
            self.plan = EpochPlan(
                num_items=plan.num_items,
                batch_size=plan.batch_size,
                shuffle=plan.shuffle,
                seed=seed,
                drop_last=plan.drop_last,
                rank=plan.rank,
                world_size=plan.world_size,
            )
        self.epoch, self.position = epoch, position

    # ----------------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Stop the background thread and drop the prepared batches (the position stays)."""
        with self._lock:
            run, self._run = self._run, None
        if run is not None:
            run.stop()

    def __enter__(self) -> BackgroundLoader[BatchT]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        run = getattr(self, "_run", None)
        if run is not None:
            run.signal()

    @property
    def running(self) -> bool:
        """Whether a background thread is alive."""
        run = self._run
        return run is not None and run.thread is not None and run.thread.is_alive()
