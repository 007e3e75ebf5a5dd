"""The one JSON Lines reader of lego-data: objects with their line numbers, located errors.

[`iter_json_objects()`][lego.data.jsonl.iter_json_objects] reads the lines of an open binary
file and yields ``(line_number, object)`` for every non-blank line. It serves both
[`FileCorpus`][lego.data.corpora.FileCorpus] (``.jsonl`` corpora, where undecodable lines may
be skipped) and [`read_jsonl()`][lego.data.records.read_jsonl] (instruction and preference
records). A line that is not valid JSON, or that holds something other than an object, is a
[`DataError`][lego.protocols.DataError] naming the file, the line and the column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from lego.protocols import DataError

__all__ = ["iter_json_objects", "BadBytesHandler"]

BadBytesHandler = Callable[[int, int, UnicodeDecodeError], None]
"""``handler(line, offset, error)`` for a line that is not UTF-8: ``offset`` is the file's
byte offset of the bad byte. It raises, or returns to skip the line."""


def iter_json_objects(
    lines: Iterable[bytes],
    path: str | os.PathLike[str],
    *,
    on_bad_bytes: BadBytesHandler | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Parse JSON Lines: one object per non-blank line.

    Args:
        lines: The file's raw lines, line breaks included (an open binary file).
        path: The file, for messages.
        on_bad_bytes: Called for a line that is not UTF-8 (see
            [`BadBytesHandler`][lego.data.jsonl.BadBytesHandler]); None raises a
            [`DataError`][lego.protocols.DataError] with the line and column.

    Yields:
        ``(line_number, object)``, 1-based line numbers, in file order.

    Raises:
        DataError: When a line is not UTF-8 (and no handler is given), not valid JSON, or
            not a JSON object.
    """
    offset = 0
    for number, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if on_bad_bytes is None:
                raise DataError(
                    f"line {number} is not UTF-8 text ({err.reason})",
                    path=path,
                    line=number,
                    column=err.start + 1,
                    hint=f"the problem is at byte offset {start + err.start}; convert the file "
                    "to UTF-8",
                ) from None
            on_bad_bytes(number, start + err.start, err)
            continue
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"line {number} is not valid JSON: {err.msg}",
                path=path,
                line=number,
                column=err.colno,
                hint="fix or remove the line; every line must be one JSON object",
            ) from None
        if not isinstance(data, dict):
            raise DataError(
                f"line {number} holds a JSON {type(data).__name__}, not an object",
                path=path,
                line=number,
                hint="every line must be one JSON object",
            )
        yield number, data
