"""Packing: many short examples in one full-length sequence, with document boundaries kept.

Padding a batch of short SFT examples wastes most of the compute on pad tokens. Packing
concatenates whole examples ("documents") into sequences of exactly ``max_length`` tokens
and records where each document starts, so nothing leaks between them:

- ``position_ids`` restart at 0 at every document (RoPE and learned positions see each
  document as if it were alone);
- ``labels`` never cross a boundary: each example's labels are already shifted inside the
  example (see [`lego.data.encode`][lego.data.encode]);
- ``document_ids`` number the documents of a row ``0, 1, 2, ...`` and mark padding with
  ``-1``. [`document_attention_mask()`][lego.data.packing.document_attention_mask] turns them
  into the block-diagonal causal mask, shape ``(B, 1, T, T)``, boolean, ``True`` where query
  ``i`` may attend key ``j`` (same document and ``j <= i``). That is the layout
  ``torch.nn.functional.scaled_dot_product_attention`` takes as ``attn_mask`` (broadcast over
  heads), so an attention that accepts a 4-D boolean mask consumes it as is. Padding rows
  attend to themselves only, so no softmax row is empty (no NaN).

The batch ([`PackedBatch`][lego.data.packing.PackedBatch]) is an
[`LMBatch`][lego.protocols.LMBatch] plus ``document_ids``; its ``attention_mask`` is the
usual ``(B, T)`` 1/0 padding mask. A model that only reads ``attention_mask`` and
``position_ids`` still gets correct positions and labels, but its attention then spans
documents of the same row (the common "packing without cross-document masking"); pass the
block mask to keep them apart. The boundaries can also be recovered from ``position_ids``
(every 0 starts a document), which is what varlen flash-attention kernels consume.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from lego.data.collate import example_fields
from lego.protocols import IGNORE_INDEX, ConfigError, DataError, LMBatch

__all__ = [
    "PackedSequence",
    "PackedBatch",
    "PackingStrategy",
    "TooLong",
    "pack_examples",
    "PackedCollator",
    "document_attention_mask",
]

PackingStrategy = Literal["best_fit", "greedy"]
"""``"best_fit"``: best-fit decreasing (fewest sequences); ``"greedy"``: keep the order,
start a new sequence when the next example does not fit."""

TooLong = Literal["truncate", "drop", "error"]
"""What to do with an example longer than ``max_length``."""


class PackedBatch(LMBatch, total=False):
    """A packed [`LMBatch`][lego.protocols.LMBatch] with per-token document numbers.

    Attributes:
        document_ids: The document each token belongs to (``0, 1, ...`` within a row),
            ``-1`` for padding; shape ``(B, T)``, int64.
    """

    document_ids: torch.Tensor


@dataclass(frozen=True)
class PackedSequence:
    """One packed row of exactly ``max_length`` tokens.

    Attributes:
        input_ids: Token ids (pad id after the last document).
        labels: Shifted labels, ``-100`` on padding and untrained tokens.
        position_ids: Positions, restarting at 0 for every document (and for the padding).
        document_ids: ``0, 1, ...`` per document, ``-1`` on padding.
    """

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    document_ids: list[int]

    @property
    def num_documents(self) -> int:
        """How many examples the row holds."""
        return max(self.document_ids, default=-1) + 1

    @property
    def num_real(self) -> int:
        """Tokens that are not padding."""
        return sum(1 for d in self.document_ids if d >= 0)

    def __len__(self) -> int:
        return len(self.input_ids)


def _bins_greedy(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    free = 0
    for i, n in enumerate(lengths):
        if not bins or n > free:
            bins.append([])
            free = capacity
        bins[-1].append(i)
        free -= n
    return bins


def _bins_best_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    # Best-fit decreasing: longest first, each into the open bin with the least room that
    # still fits it. ``free`` is kept sorted as (room, bin number) for a bisect search.
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at == len(free):
            bins.append([i])
            room, number = capacity - n, len(bins) - 1
        else:
            room, number = free.pop(at)
            bins[number].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, number))
    for members in bins:  # documents keep their dataset order inside a row
        members.sort()
    bins.sort(key=lambda members: members[0])
    return bins


def pack_examples(
    examples: Iterable[object],
    *,
    max_length: int,
    pad_id: int,
    strategy: PackingStrategy = "best_fit",
    too_long: TooLong = "truncate",
) -> list[PackedSequence]:
    """Pack tokenized examples into rows of exactly ``max_length`` tokens.

    Args:
        examples: [`TokenizedExample`][lego.data.encode.TokenizedExample]s (or mappings
            with ``input_ids`` and ``labels``).
        max_length: Tokens per packed row (``T``).
        pad_id: The id that fills the end of a row that is not full.
        strategy: ``"best_fit"`` (best-fit decreasing; rows ordered by their first
            document) or ``"greedy"`` (dataset order, streaming-friendly).
        too_long: An example longer than ``max_length`` is cut to it (``"truncate"``),
            skipped (``"drop"``), or an error (``"error"``).

    Returns:
        The packed rows; each document appears in exactly one row, whole (or truncated).

    Raises:
        ConfigError: On a bad ``max_length``, strategy or ``too_long``.
        DataError: When an example is too long and ``too_long="error"``, or when there is
            nothing to pack.
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be at least 1, got {max_length}", key="max_length")
    if strategy not in ("best_fit", "greedy"):
        raise ConfigError(
            f"strategy must be 'best_fit' or 'greedy', got {strategy!r}", key="strategy"
        )
    if too_long not in ("truncate", "drop", "error"):
        raise ConfigError(
            f"too_long must be 'truncate', 'drop' or 'error', got {too_long!r}", key="too_long"
        )
    rows: list[tuple[list[int], list[int]]] = []
    for number, example in enumerate(examples):
        ids, labels = example_fields(example, number)
        if len(ids) > max_length:
            if too_long == "error":
                raise DataError(
                    f"example {number} has {len(ids)} tokens, more than max_length {max_length}",
                    key="max_length",
                    hint="raise max_length, or pass too_long='truncate' or 'drop'",
                )
            if too_long == "drop":
                continue
            ids, labels = ids[:max_length], labels[:max_length]
        rows.append((ids, labels))
    if not rows:
        raise DataError("there are no examples to pack")
    lengths = [len(ids) for ids, _ in rows]
    packer = _bins_best_fit if strategy == "best_fit" else _bins_greedy
    packed: list[PackedSequence] = []
    for members in packer(lengths, max_length):
        input_ids: list[int] = []
        row_labels: list[int] = []
        positions: list[int] = []
        documents: list[int] = []
        for document, i in enumerate(members):
            ids, targets = rows[i]
            input_ids += ids
            row_labels += targets
            positions += range(len(ids))
            documents += [document] * len(ids)
        pad = max_length - len(input_ids)
        packed.append(
            PackedSequence(
                input_ids=input_ids + [pad_id] * pad,
                labels=row_labels + [IGNORE_INDEX] * pad,
                position_ids=positions + list(range(pad)),
                document_ids=documents + [-1] * pad,
            )
        )
    return packed


class PackedCollator:
    """Stack packed rows into a [`PackedBatch`][lego.data.packing.PackedBatch].

    The rows are [`PackedSequence`][lego.data.packing.PackedSequence]s. Every row already
    has the same length, so this only stacks; ``attention_mask`` is 1 on document tokens
    and 0 on padding.
    """

    def __call__(self, sequences: Sequence[PackedSequence]) -> PackedBatch:
        """Stack packed rows.

        Args:
            sequences: Rows of equal length ``T``.

        Returns:
            ``input_ids``, ``labels``, ``attention_mask``, ``position_ids`` and
            ``document_ids``, each ``(B, T)`` int64.

        Raises:
            DataError: On an empty batch or rows of different lengths.
        """
        if not sequences:
            raise DataError("cannot collate an empty batch")
        lengths = {len(s) for s in sequences}
        if len(lengths) != 1:
            raise DataError(
                f"packed rows of different lengths {sorted(lengths)} cannot be stacked",
                hint="pack every row with the same max_length",
            )
        documents = torch.tensor([s.document_ids for s in sequences], dtype=torch.int64)
        return {
            "input_ids": torch.tensor([s.input_ids for s in sequences], dtype=torch.int64),
            "labels": torch.tensor([s.labels for s in sequences], dtype=torch.int64),
            "attention_mask": (documents >= 0).to(torch.int64),  # (B, T)
            "position_ids": torch.tensor([s.position_ids for s in sequences], dtype=torch.int64),
            "document_ids": documents,  # (B, T)
        }


def document_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Build the block-diagonal causal mask of packed rows.

    Args:
        document_ids: ``(B, T)`` document numbers, ``-1`` on padding (as in
            [`PackedBatch`][lego.data.packing.PackedBatch]).

    Returns:
        ``(B, 1, T, T)`` boolean: ``mask[b, 0, i, j]`` is True when token ``i`` may attend
        token ``j``, i.e. ``j <= i`` and both are in the same document. A padding token
        attends only to itself (so no row is empty). Pass it as SDPA's ``attn_mask``.

    Raises:
        DataError: When ``document_ids`` is not 2-D.
    """
    if document_ids.dim() != 2:
        raise DataError(
            f"document_ids must be (B, T), got shape {tuple(document_ids.shape)}",
            tensor="document_ids",
        )
    length = document_ids.shape[1]
    same = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    real = (document_ids >= 0)[:, :, None]  # (B, T, 1): the query is a document token
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril_()
    eye = torch.eye(length, dtype=torch.bool, device=document_ids.device)
    mask = (same & real & causal) | eye  # (B, T, T)
    return mask[:, None]  # (B, 1, T, T)
