"""A resumable, shardable loader over a list of examples and a collate function.

[`ExampleLoader`][lego.data.example_loader.ExampleLoader] is the
[`BatchSource`][lego.protocols.BatchSource] for instruction, packed and preference data:
it picks the items of each batch with the same seeded, rank-sharded
[`EpochPlan`][lego.data.plan.EpochPlan] as [`TokenLoader`][lego.data.loader.TokenLoader],
collates them in a background thread, and saves and restores its position exactly.

Example:
    >>> from lego.data import InstructionDataset, PaddingCollator
    >>> from lego.tokenize import RegexBPETokenizer
    >>> tok = RegexBPETokenizer(
    ...     "gpt2", special_tokens={"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    ... )
    >>> records = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(16)]
    >>> train = InstructionDataset(records, tok, template="chatml")
    >>> collate = PaddingCollator(pad_id=256, eos_id=258, pad_to_multiple_of=8)
    >>> with ExampleLoader(train, batch_size=8, collate_fn=collate, seed=0) as loader:
    ...     shapes = [tuple(batch["input_ids"].shape) for batch in loader]
    >>> shapes  # (8, L): L padded to a multiple of 8
    [(8, 32), (8, 32)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from lego.data.background import BackgroundLoader, LoaderOptions, Producer

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["ExampleLoader"]

ItemT = TypeVar("ItemT")
BatchT = TypeVar("BatchT")


class _CollateProducer(Generic[ItemT, BatchT]):
    def __init__(
        self, items: Sequence[ItemT], collate_fn: Callable[[list[ItemT]], BatchT], pin: bool
    ) -> None:
        self.items = items
        self.collate_fn = collate_fn
        self.pin = pin

    def __call__(self, epoch: int, indices: npt.NDArray[np.int64]) -> BatchT:
        batch = self.collate_fn([self.items[int(i)] for i in indices])
        if self.pin and isinstance(batch, Mapping):
            pinned: dict[str, Any] = {
                key: value.pin_memory() if isinstance(value, torch.Tensor) else value
                for key, value in batch.items()
            }
            return pinned  # type: ignore[return-value]
        return batch


class ExampleLoader(BackgroundLoader[BatchT], Generic[ItemT, BatchT]):
    """Batches of collated examples, built ahead in a background thread.

    Args:
        dataset: The examples (any sequence: a list, an
            [`InstructionDataset`][lego.data.instruction.InstructionDataset], packed rows).
        batch_size: Examples per batch on this rank.
        collate_fn: Turns a list of examples into a batch (e.g.
            [`PaddingCollator`][lego.data.collate.PaddingCollator]).
        **options: The [`LoaderOptions`][lego.data.background.LoaderOptions] (``shuffle``,
            ``seed``, ``drop_last``, ``rank``, ``world_size``, ``prefetch``, ``pin_memory``,
            ``device``, ``repeat``), with the defaults of
            [`BackgroundLoader`][lego.data.background.BackgroundLoader] except
            ``drop_last=False`` (every example is seen). With ``pin_memory`` the tensors of
            mapping batches are copied to page-locked memory in the thread; ``device`` moves
            every tensor of a mapping batch.

    Raises:
        ConfigError: On bad sizes or a rank outside ``range(world_size)``.
        DataError: When the dataset cannot fill one batch per rank.
    """

    def __init__(
        self,
        dataset: Sequence[ItemT],
        *,
        batch_size: int,
        collate_fn: Callable[[list[ItemT]], BatchT],
        **options: Unpack[LoaderOptions],
    ) -> None:
        options.setdefault("drop_last", False)
        super().__init__(num_items=len(dataset), batch_size=batch_size, **options)
        self.dataset = dataset
        self.collate_fn = collate_fn

    def _make_producer(self) -> Producer[BatchT]:
        producer: _CollateProducer[ItemT, BatchT] = _CollateProducer(
            self.dataset, self.collate_fn, self.pin_memory
        )
        return producer

    def _describe(self) -> str:
        return f"examples={self.plan.num_items}"
