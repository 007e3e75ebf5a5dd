"""The base of the datasets built from JSON Lines records: one split, encoded, located errors.

[`RecordDataset`][lego.data.record_dataset.RecordDataset] is what
[`InstructionDataset`][lego.data.instruction.InstructionDataset] and
[`PreferenceDataset`][lego.data.preference.PreferenceDataset] share: read the records (a
``.jsonl`` file or in-memory dictionaries), keep one seeded train/validation split, encode
every record (an error is located at the record's file and line), drop the examples that
train nothing, and behave as a read-only sequence of the encoded examples.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import TypeVar, overload

from lego.data.records import Record, RecordSource, SplitName, at_line, load_records, select_split
from lego.protocols import DataError
from lego.protocols.chat import Message, check_messages

__all__ = ["RecordDataset", "record_field_messages"]

ExampleT = TypeVar("ExampleT")


def record_field_messages(record: Record, field: str, value: object) -> list[Message]:
    """Validate a record's conversation field, with errors located at the record.

    Args:
        record: The record the conversation came from.
        field: The field holding it (``"messages"``, ``"prompt"``, ``"chosen"``, ...).
        value: The field's value.

    Returns:
        The validated messages.

    Raises:
        DataError: When the conversation is invalid; the message names the line (and the
            field unless it is ``"messages"``), ``key`` the field and the message index.
    """
    try:
        return check_messages(value, where=record.path)
    except DataError as err:
        where = f"line {record.line}" + ("" if field == "messages" else f", field {field!r}")
        raise DataError(
            f"{where}: {err.message}",
            path=record.path,
            line=record.line,
            key=f"{field}{(err.key or '').removeprefix('messages')}",
        ) from err


class RecordDataset(Sequence[ExampleT], abc.ABC):
    """A read-only sequence of examples encoded from the records of one split.

    Subclasses implement ``_encode()`` and ``_trains()`` and call ``_load()`` from their
    constructor.

    Attributes:
        examples: The encoded examples of the split.
        lines: The source line of each example.
        skipped: Lines dropped because their example trains nothing.
    """

    examples: list[ExampleT]
    lines: list[int]
    skipped: list[int]

    @abc.abstractmethod
    def _encode(self, record: Record) -> ExampleT:
        """Encode one record (a [`DataError`][lego.protocols.DataError] gets located)."""

    @abc.abstractmethod
    def _trains(self, example: ExampleT) -> bool:
        """Whether the example has trained labels (else ``skip_untrained`` drops it)."""

    def _load(
        self,
        source: RecordSource,
        *,
        split: SplitName,
        val_fraction: float,
        seed: int,
        skip_untrained: bool,
        nothing_left: str,
    ) -> None:
        """Read, split and encode the records into ``examples``, ``lines`` and ``skipped``.

        Args:
            source: A ``.jsonl`` path, or an iterable of dictionaries.
            split: ``"train"``, ``"val"`` or ``"all"``.
            val_fraction: The fraction of records in validation.
            seed: The split seed.
            skip_untrained: Drop examples that train nothing (recording their lines).
            nothing_left: The error message's start when no example is left, e.g.
                ``"no example of the train split has a trained token"``.

        Raises:
            DataError: On a corrupt line, a record that cannot be encoded (located at its
                file and line), or when no example is left.
            ConfigError: On an unknown split or a bad fraction.
        """
        records = select_split(load_records(source), split, val_fraction=val_fraction, seed=seed)
        self.examples, self.lines, self.skipped = [], [], []
        for record in records:
            try:
                example = self._encode(record)
            except DataError as err:
                located = at_line(err, record)
                if located is err:
                    raise
                raise located from err
            if skip_untrained and not self._trains(example):
                self.skipped.append(record.line)
                continue
            self.examples.append(example)
            self.lines.append(record.line)
        if not self.examples:
            raise DataError(
                f"{nothing_left} ({len(self.skipped)} skipped)",
                hint="raise max_length, or check the records have responses",
            )

    def __len__(self) -> int:
        return len(self.examples)

    @overload
    def __getitem__(self, index: int) -> ExampleT: ...

    @overload
    def __getitem__(self, index: slice) -> list[ExampleT]: ...

    def __getitem__(self, index: int | slice) -> ExampleT | list[ExampleT]:
        return self.examples[index]

    def __iter__(self) -> Iterator[ExampleT]:
        return iter(self.examples)
