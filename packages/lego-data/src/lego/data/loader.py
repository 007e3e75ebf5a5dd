"""The pre-training loader: batches of windows from a memory-mapped token file, at memory speed.

[`TokenLoader`][lego.data.loader.TokenLoader] is a
[`BatchSource`][lego.protocols.BatchSource] of [`LMBatch`][lego.protocols.LMBatch] over a
[`TokenDataset`][lego.data.dataset.TokenDataset]. A background thread computes each batch's
window starts from the epoch plan, gathers the windows out of the memory map with one
fancy-indexing ``np.take`` into a preallocated buffer, widens them to int64 straight into
the batch tensors (page-locked when CUDA is present), and puts the batch into a bounded
queue; the training loop takes ready batches without waiting. No worker processes, no
pickling, no per-item Python calls: one batch costs a handful of numpy operations.

Example (with ``device="cuda"`` the batches arrive on the GPU, copied from pinned memory)::

    ds = TokenDataset("data/shakespeare", context_length=256)
    with TokenLoader(ds, batch_size=32, seed=0, device="cuda") as loader:
        for batch in loader:
            loss = model_loss(batch["input_ids"], batch["labels"])  # (32, 256) each
        state = loader.state_dict()    # save with the checkpoint

On the CPU, over a small dataset prepared from documents:

    >>> import tempfile
    >>> from lego.data.prepare import prepare
    >>> from lego.tokenize import RegexBPETokenizer
    >>> tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
    >>> folder = tempfile.mkdtemp()
    >>> _ = prepare(["some text. " * 100] * 4, tok, folder, val_fraction=0.25, workers=1)
    >>> ds = TokenDataset(folder, context_length=64)
    >>> with TokenLoader(ds, batch_size=4, seed=0) as loader:
    ...     batch = next(iter(loader))
    ...     state = loader.state_dict()  # position 1 of epoch 0: resumes at the next batch
    >>> batch["input_ids"].shape, state["position"]
    (torch.Size([4, 64]), 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from lego.data.background import BackgroundLoader, LoaderOptions, Producer
from lego.data.dataset import TokenDataset
from lego.protocols import CompatibilityError, ConfigError, LMBatch

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["TokenLoader", "DEFAULT_RELEASE_BYTES"]

DEFAULT_RELEASE_BYTES = 64 * 2**20
"""How many bytes of mapped pages the loader lets a pass touch before it unmaps them."""

_FAULT_AROUND_BYTES = 64 * 1024  # Linux maps up to 16 neighbouring pages per page fault


class _TokenProducer:
    """Builds one [`LMBatch`][lego.protocols.LMBatch] from window indices (in the thread)."""

    def __init__(self, dataset: TokenDataset, batch_size: int, pin: bool, release: int) -> None:
        width = dataset.context_length + 1
        self.dataset = dataset
        self.pin = pin
        self.release = release
        self.index_buffer = np.empty((batch_size, width), dtype=np.int64)
        self.window_buffer = np.empty((batch_size, width), dtype=dataset.dtype)
        # Pages a window can map into the process: its own bytes plus fault-around.
        self.bytes_per_window = width * dataset.dtype.itemsize + 2 * _FAULT_AROUND_BYTES
        self.touched = 0

    def __call__(self, epoch: int, indices: npt.NDArray[np.int64]) -> LMBatch:
        rows = int(indices.shape[0])
        context = self.dataset.context_length
        starts = self.dataset.window_starts(indices, epoch=epoch)
        windows = self.dataset.gather(
            starts, out=self.window_buffer[:rows], index_buffer=self.index_buffer[:rows]
        )  # (B, T + 1), the file's dtype
        input_ids = torch.empty((rows, context), dtype=torch.int64, pin_memory=self.pin)
        labels = torch.empty((rows, context), dtype=torch.int64, pin_memory=self.pin)
        np.copyto(input_ids.numpy(), windows[:, :-1])  # (B, T) widened to int64
        np.copyto(labels.numpy(), windows[:, 1:])  # (B, T): the next token of each input
        if self.release:
            self.touched += rows * self.bytes_per_window
            if self.touched >= self.release:
                self.dataset.release_pages()
                self.touched = 0
        return {"input_ids": input_ids, "labels": labels}


class TokenLoader(BackgroundLoader[LMBatch]):
    """Batches of ``(input_ids, labels)`` windows, built ahead in a background thread.

    Satisfies [`BatchSource`][lego.protocols.BatchSource]``[LMBatch]``: every batch is
    ``{"input_ids": (B, T), "labels": (B, T)}``, int64, ``labels`` already shifted. In
    sequential mode without shuffling nor ``drop_last``, one epoch yields every window of the
    dataset exactly once, in file order.

    Args:
        dataset: The windows.
        batch_size: Windows per batch on this rank (``B``).
        release_pages_every: Unmap the file's pages from the process after roughly this many
            bytes of them were touched, keeping the resident size flat on huge files
            (see [`TokenDataset.release_pages()`][lego.data.dataset.TokenDataset.release_pages]);
            0 or None never unmaps.
        **options: The [`LoaderOptions`][lego.data.background.LoaderOptions] (``shuffle``,
            ``seed``, ``drop_last``, ``rank``, ``world_size``, ``prefetch``, ``pin_memory``,
            ``device``, ``repeat``), with the defaults of
            [`BackgroundLoader`][lego.data.background.BackgroundLoader]: shuffled, seed 0,
            ``drop_last=True`` (every batch then has ``B`` rows), one rank.

    Raises:
        ConfigError: On a negative ``release_pages_every``, or a bad option (as
            [`BackgroundLoader`][lego.data.background.BackgroundLoader] says).
        DataError: When the dataset cannot fill one batch per rank.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        *,
        batch_size: int,
        release_pages_every: int | None = DEFAULT_RELEASE_BYTES,
        **options: Unpack[LoaderOptions],
    ) -> None:
        if release_pages_every is not None and release_pages_every < 0:
            raise ConfigError(
                f"release_pages_every must be >= 0, got {release_pages_every}",
                key="release_pages_every",
            )
        super().__init__(num_items=len(dataset), batch_size=batch_size, **options)
        self.dataset = dataset
        self.release_pages_every = release_pages_every or 0

    @property
    def tokens_per_batch(self) -> int:
        """``batch_size * context_length`` (the last batch may hold fewer without drop_last)."""
        return self.batch_size * self.dataset.context_length

    def _make_producer(self) -> Producer[LMBatch]:
        return _TokenProducer(
            self.dataset, self.batch_size, self.pin_memory, self.release_pages_every
        )

    def _describe(self) -> str:
        return repr(self.dataset)

    def state_dict(self) -> dict[str, Any]:
        """Return the position, plus how the dataset cuts its windows.

        See [`BackgroundLoader.state_dict()`][lego.data.background.BackgroundLoader.state_dict].

        Returns:
            A fresh dictionary; also records the dataset's context length, stride, mode and
            random-mode seed.
        """
        state = super().state_dict()
        state["context_length"] = self.dataset.context_length
        state["stride"] = self.dataset.stride
        state["mode"] = self.dataset.mode
        state["window_seed"] = self.dataset.seed
        return state

    def load_state_dict(self, state_dict: dict[str, Any], /) -> None:
        """Continue from a saved position (the windows must be cut the same way).

        Args:
            state_dict: A dictionary from [`state_dict()`][lego.data.loader.TokenLoader.state_dict].

        Raises:
            FormatError: When a key is missing or has the wrong type.
            CompatibilityError: When the batch layout or the window layout (context length,
                stride, mode, random-mode seed) differs from this loader's.
        """
        ours = {
            "context_length": self.dataset.context_length,
            "stride": self.dataset.stride,
            "mode": self.dataset.mode,
            "window_seed": self.dataset.seed,
        }
        for key, value in ours.items():
            if key in state_dict and state_dict[key] != value:
                raise CompatibilityError(
                    f"the saved loader read windows with {key}={state_dict[key]!r}, this "
                    f"dataset has {key}={value!r}",
                    key=key,
                    hint=f"build the TokenDataset with {key}={state_dict[key]!r}",
                )
        super().load_state_dict(state_dict)
