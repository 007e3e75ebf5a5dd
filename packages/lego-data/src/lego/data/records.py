"""JSON Lines records for instruction and preference data, and the train/validation split.

[`read_jsonl()`][lego.data.records.read_jsonl] yields one object per non-blank line with its
1-based line number; a line that is not valid JSON, not UTF-8, or not an object is a
[`DataError`][lego.protocols.DataError] naming the file and the line.
[`split_indices()`][lego.data.records.split_indices] divides records into train and
validation deterministically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lego.data.jsonl import iter_json_objects
from lego.protocols import ConfigError, DataError

__all__ = [
    "Record",
    "RecordSource",
    "SplitName",
    "read_jsonl",
    "load_records",
    "split_indices",
    "select_split",
    "require_field",
    "require_str",
    "at_line",
]

RecordSource = str | os.PathLike[str] | Iterable[Mapping[str, Any]]
"""A ``.jsonl`` path, or the records themselves (e.g. a list of dictionaries)."""

SplitName = Literal["train", "val", "all"]
"""Which part of a dataset to keep."""


@dataclass(frozen=True)
class Record:
    """One JSON object and where it came from.

    Attributes:
        data: The parsed object.
        path: The file, or None for in-memory records.
        line: The 1-based line number (or the position in an in-memory list, from 1).
    """

    data: Mapping[str, Any]
    path: str | None
    line: int


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Read a JSON Lines file, one object per non-blank line.

    Args:
        path: The ``.jsonl`` file.

    Yields:
        The records, in file order.

    Raises:
        DataError: When the file is missing, or a line is not UTF-8, not valid JSON or not a
            JSON object (with the file and line number).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError("the JSON Lines file does not exist", path=file)
    with file.open("rb") as handle:
        for number, data in iter_json_objects(handle, file):
            yield Record(data=data, path=str(file), line=number)


def load_records(source: RecordSource) -> list[Record]:
    """Read every record of a ``.jsonl`` file, or wrap in-memory objects as records.

    Args:
        source: A ``.jsonl`` path, or an iterable of mappings (their "line" is their
            1-based position).

    Returns:
        The records.

    Raises:
        DataError: On a corrupt line (file and line number) or a non-mapping object.
    """
    if isinstance(source, (str, os.PathLike)):
        return list(read_jsonl(source))
    records: list[Record] = []
    for number, data in enumerate(source, start=1):
        if not isinstance(data, Mapping):
            raise DataError(
                f"record {number} is a {type(data).__name__}, not a mapping",
                line=number,
                hint="pass dictionaries (one per example) or a .jsonl path",
            )
        records.append(Record(data=data, path=None, line=number))
    return records


def require_field(record: Record, key: str, *, hint: str | None = None) -> Any:
    """Return ``record.data[key]``, which must be present and not null.

    Args:
        record: The record.
        key: The field.
        hint: What to do, for the error (e.g. which fields a record needs).

    Returns:
        The value.

    Raises:
        DataError: When the field is missing or null, naming the key, the fields present and
            the line.
    """
    value = record.data.get(key)
    if value is None:
        present = ", ".join(sorted(record.data)) or "none"
        raise DataError(
            f"record on line {record.line} lacks the field {key!r} (fields: {present})",
            path=record.path,
            line=record.line,
            key=key,
            hint=hint,
        )
    return value


def require_str(record: Record, key: str, *, optional: bool = False) -> str:
    """Return ``record.data[key]`` as a string.

    Args:
        record: The record.
        key: The field.
        optional: A missing (or null) field gives ``""`` instead of an error.

    Returns:
        The string.

    Raises:
        DataError: When the field is missing (and required) or not a string, naming the key
            and line.
    """
    if optional and record.data.get(key) is None:
        return ""
    value = require_field(record, key)
    if not isinstance(value, str):
        raise DataError(
            f"field {key!r} on line {record.line} must be a string, got {type(value).__name__}",
            path=record.path,
            line=record.line,
            key=key,
        )
    return value


def at_line(err: DataError, record: Record) -> DataError:
    """Return ``err`` located at ``record``'s file and line (unchanged if it has a line).

    Args:
        err: An error raised while encoding the record.
        record: The record.

    Returns:
        The located error.
    """
    if err.line is not None:
        return err
    return DataError(
        f"line {record.line}: {err.message}",
        path=record.path if record.path is not None else err.path,
        line=record.line,
        key=err.key,
        hint=err.hint,
    )


def split_indices(n: int, *, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into train and validation indices, deterministically.

    A seeded permutation (``numpy.random.default_rng(seed)``) picks the validation records:
    the first ``round(n * val_fraction)`` of it (at least one when the fraction is positive).
    Both lists keep the original order. The same ``(n, val_fraction, seed)`` always gives
    the same split.

    Args:
        n: The number of records.
        val_fraction: The fraction in validation, in ``[0, 1)``.
        seed: The split seed.

    Returns:
        ``(train, val)`` index lists; their union is ``range(n)``.

    Raises:
        ConfigError: When ``val_fraction`` is outside ``[0, 1)``.
        DataError: When the split would leave the training set empty.
    """
    if not math.isfinite(val_fraction) or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            f"val_fraction must be in [0, 1), got {val_fraction!r}", key="val_fraction"
        )
    n_val = 0 if val_fraction == 0 else max(1, math.floor(n * val_fraction + 0.5))
    if n - n_val < 1:
        raise DataError(
            f"{n} record(s) with val_fraction={val_fraction} leave no training data",
            key="val_fraction",
            hint="add records or lower val_fraction",
        )
    chosen = np.random.default_rng(seed).permutation(n)[:n_val]
    is_val = np.zeros(n, dtype=bool)
    is_val[chosen] = True
    return np.flatnonzero(~is_val).tolist(), np.flatnonzero(is_val).tolist()


def select_split(
    records: list[Record], split: SplitName, *, val_fraction: float, seed: int
) -> list[Record]:
    """Keep the records of one split.

    Args:
        records: All records.
        split: ``"train"``, ``"val"`` or ``"all"``.
        val_fraction: The validation fraction.
        seed: The split seed.

    Returns:
        The selected records, in their original order.

    Raises:
        ConfigError: On an unknown split name or a bad fraction.
        DataError: On an empty selection.
    """
    if split not in ("train", "val", "all"):
        raise ConfigError(f"split must be 'train', 'val' or 'all', got {split!r}", key="split")
    if not records:
        raise DataError("the dataset has no records", hint="check the file is not empty")
    if split == "all":
        return list(records)
    train, val = split_indices(len(records), val_fraction=val_fraction, seed=seed)
    chosen = train if split == "train" else val
    if not chosen:
        raise DataError(
            f"the {split} split is empty (val_fraction={val_fraction})",
            key="val_fraction",
            hint="set val_fraction above 0 to get a validation split",
        )
    return [records[i] for i in chosen]
