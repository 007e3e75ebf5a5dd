"""Dynamic padding: examples of different lengths to one rectangular batch.

[`PaddingCollator`][lego.data.collate.PaddingCollator] pads every example of a batch to the
longest one (optionally rounded up to a multiple of 8, which tensor cores like), with a pad
id that must differ from the end-of-sequence id, labels padded with
[`IGNORE_INDEX`][lego.protocols.IGNORE_INDEX] and an ``attention_mask`` of 1 (real) / 0
(padding). It returns an [`LMBatch`][lego.protocols.LMBatch] with ``position_ids`` that
count real tokens from 0, so right and left padding both give every token its true position.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, Protocol, runtime_checkable

import torch

from lego.protocols import IGNORE_INDEX, ConfigError, DataError, LMBatch

__all__ = ["PaddingCollator", "ExampleLike", "PaddingSide", "example_fields", "padded_length"]

PaddingSide = Literal["right", "left"]
"""Where padding goes: after the tokens (training) or before them (batched generation)."""


@runtime_checkable
class ExampleLike(Protocol):
    """Anything with ``input_ids`` and ``labels`` sequences of equal length.

    [`TokenizedExample`][lego.data.encode.TokenizedExample] conforms; so do mappings with
    those two keys (accepted by the collators too).
    """

    @property
    def input_ids(self) -> Sequence[int]:
        """Token ids."""
        ...

    @property
    def labels(self) -> Sequence[int]:
        """Shifted labels, ``-100`` where not trained."""
        ...


def example_fields(example: object, number: int) -> tuple[list[int], list[int]]:
    """Return ``(input_ids, labels)`` of an example object or mapping, as lists.

    Args:
        example: An [`ExampleLike`][lego.data.collate.ExampleLike] or a mapping with
            ``input_ids`` and ``labels`` (lists or 1-D tensors).
        number: The example's position in the batch, for errors.

    Returns:
        The two lists.

    Raises:
        DataError: When a field is missing or the lengths differ.
    """
    if isinstance(example, Mapping):
        for key in ("input_ids", "labels"):
            if key not in example:
                raise DataError(
                    f"example {number} of the batch lacks {key!r}", key=f"[{number}].{key}"
                )
        ids, labels = example["input_ids"], example["labels"]
    elif isinstance(example, ExampleLike):
        ids, labels = example.input_ids, example.labels
    else:
        raise DataError(
            f"example {number} of the batch is a {type(example).__name__}, not an example "
            "with input_ids and labels",
            key=f"[{number}]",
        )
    ids_list = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    labels_list = labels.tolist() if isinstance(labels, torch.Tensor) else list(labels)
    if len(ids_list) != len(labels_list):
        raise DataError(
            f"example {number} has {len(ids_list)} input_ids but {len(labels_list)} labels",
            key=f"[{number}].labels",
        )
    if not ids_list:
        raise DataError(f"example {number} of the batch is empty", key=f"[{number}].input_ids")
    return ids_list, labels_list


def padded_length(longest: int, multiple: int | None) -> int:
    """Round ``longest`` up to a multiple of ``multiple`` (unchanged when None).

    Args:
        longest: The longest example's length.
        multiple: The multiple, or None.

    Returns:
        The padded length.
    """
    if not multiple:
        return longest
    return -(-longest // multiple) * multiple


class PaddingCollator:
    """Pad a list of examples to an [`LMBatch`][lego.protocols.LMBatch].

    Args:
        pad_id: The id written into padded ``input_ids`` positions.
        eos_id: The end-of-sequence id; when given it must differ from ``pad_id`` (a pad
            equal to EOS makes padding indistinguishable from real end-of-text tokens for
            every tool that derives masks from ids).
        pad_to_multiple_of: Round the padded length up to a multiple of this (e.g. 8).
        padding_side: ``"right"`` (training) or ``"left"`` (batched generation).

    Raises:
        ConfigError: When ``pad_id == eos_id``, an id is negative, the multiple is below 1,
            or the side is unknown.

    Example:
        >>> from lego.data.encode import TokenizedExample
        >>> collate = PaddingCollator(pad_id=0, eos_id=2)
        >>> batch = collate([TokenizedExample([5, 6, 7], [6, 7, 2]), TokenizedExample([5], [9])])
        >>> batch["input_ids"].tolist(), batch["labels"].tolist()
        ([[5, 6, 7], [5, 0, 0]], [[6, 7, 2], [9, -100, -100]])
    """

    def __init__(
        self,
        *,
        pad_id: int,
        eos_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: PaddingSide = "right",
    ) -> None:
        if type(pad_id) is bool or pad_id < 0:
            raise ConfigError(
                f"pad_id must be a non-negative integer, got {pad_id!r}", key="pad_id"
            )
        if eos_id is not None and eos_id == pad_id:
            raise ConfigError(
                f"pad_id and eos_id are both {pad_id}: padding would look like end-of-text",
                key="pad_id",
                hint="choose a pad id distinct from EOS (e.g. a dedicated <|pad|> special "
                "token, or any id whose labels are masked anyway)",
            )
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ConfigError(
                f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}",
                key="pad_to_multiple_of",
            )
        if padding_side not in ("right", "left"):
            raise ConfigError(
                f"padding_side must be 'right' or 'left', got {padding_side!r}",
                key="padding_side",
            )
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side: PaddingSide = padding_side

    def pad(self, rows: Sequence[tuple[list[int], list[int]]], length: int) -> LMBatch:
        """Pad ``(input_ids, labels)`` rows to ``length``.

        Args:
            rows: The examples' fields, each no longer than ``length``.
            length: The padded length ``L``.

        Returns:
            ``input_ids``, ``labels``, ``attention_mask`` and ``position_ids``, each
            ``(B, L)`` int64.
        """
        batch = len(rows)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.int64)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.int64)
        attention_mask = torch.zeros((batch, length), dtype=torch.int64)
        for row, (ids, targets) in enumerate(rows):
            n = len(ids)
            cols = slice(0, n) if self.padding_side == "right" else slice(length - n, length)
            input_ids[row, cols] = torch.tensor(ids, dtype=torch.int64)
            labels[row, cols] = torch.tensor(targets, dtype=torch.int64)
            attention_mask[row, cols] = 1
        # Real tokens count 0, 1, 2, ...; padding gets 0 (it attends nowhere that matters).
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp_(min=0) * attention_mask
        return {
            "input_ids": input_ids,  # (B, L)
            "labels": labels,  # (B, L)
            "attention_mask": attention_mask,  # (B, L)
            "position_ids": position_ids,  # (B, L)
        }

    def __call__(self, examples: Sequence[object]) -> LMBatch:
        """Collate examples into a padded batch.

        Args:
            examples: [`TokenizedExample`][lego.data.encode.TokenizedExample]s or mappings
                with ``input_ids`` and ``labels``.

        Returns:
            The batch: ``input_ids`` (pad id in padding), ``labels`` (``-100`` in padding),
            ``attention_mask`` (1 real / 0 padding) and ``position_ids``, all ``(B, L)``
            int64 with ``L`` the longest example rounded up to ``pad_to_multiple_of``.

        Raises:
            DataError: On an empty batch or a malformed example.
        """
        if not examples:
            raise DataError("cannot collate an empty batch")
        rows = [example_fields(example, i) for i, example in enumerate(examples)]
        length = padded_length(max(len(ids) for ids, _ in rows), self.pad_to_multiple_of)
        return self.pad(rows, length)

    def __repr__(self) -> str:
        return (
            f"PaddingCollator(pad_id={self.pad_id}, eos_id={self.eos_id}, "
            f"pad_to_multiple_of={self.pad_to_multiple_of}, padding_side={self.padding_side!r})"
        )
