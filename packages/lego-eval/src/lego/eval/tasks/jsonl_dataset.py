"""Reads an offline task's JSONL file for lm-evaluation-harness (``custom_dataset``).

The task YAML files beside this module name it as ``custom_dataset: !function
jsonl_dataset.load`` with ``dataset_kwargs: {data_file: <name>.jsonl, fields: [...]}``:
lm-eval imports this file from the YAML's folder and calls
[`load()`][lego.eval.tasks.jsonl_dataset.load], which reads the JSONL file that sits beside
it. No download, no Hugging Face cache: the rows become a ``datasets.Dataset`` in memory.

This module is run by lm-eval as a loose file, so it imports only absolute names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lego.protocols import DataError, import_optional, read_text

__all__ = ["read_rows", "load"]

HERE = Path(__file__).resolve().parent
"""The folder of the offline tasks (this module's own)."""


def read_rows(path: str | Path, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a JSONL file, each a JSON object holding ``fields``.

    Args:
        path: The file (a bare name is looked up beside this module).
        fields: Keys every row must have.

    Returns:
        One dictionary per non-empty line.

    Raises:
        DataError: A line that is not a JSON object, or lacks one of ``fields`` (the
            message names the file and the line).
        ConfigError: A file that cannot be read.

    Example:
        >>> rows = read_rows("arithmetic_mc.jsonl", fields=["prompt", "choices", "answer"])
        >>> len(rows), sorted(rows[0])
        (100, ['answer', 'choices', 'prompt'])
    """
    file = Path(path)
    if not file.is_absolute() and not file.exists():
        file = HERE / file
    text = read_text(file, what="task data file")
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"line {number} is not valid JSON ({err.msg})",
                path=file,
                line=number,
                hint="each line must be one JSON object",
            ) from err
        if not isinstance(row, dict):
            raise DataError(
                f"line {number} is a JSON {type(row).__name__}, not an object",
                path=file,
                line=number,
                hint="each line must be one JSON object",
            )
        missing = [name for name in fields if name not in row]
        if missing:
            raise DataError(
                f"line {number} has no field {missing[0]!r}",
                path=file,
                line=number,
                key=missing[0],
                hint=f"every row needs the fields {list(fields)}",
            )
        rows.append(row)
    if not rows:
        raise DataError("the task data file holds no rows", path=file)
    return rows


def load(data_file: str, fields: Sequence[str] = (), **metadata: Any) -> dict[str, Any]:
    """lm-eval's ``custom_dataset``: the JSONL file as the task's ``test`` split.

    Args:
        data_file: The JSONL file (a bare name is looked up beside this module).
        fields: Keys every row must have.
        **metadata: What lm-eval passes besides (the task's and the run's metadata); unused.

    Returns:
        ``{"test": datasets.Dataset}``.

    Raises:
        DataError: A malformed row (file and line named).
    """
    datasets: Any = import_optional(
        "datasets", needed_by="the offline lm-eval tasks", install='"lego-eval[harness]"'
    )
    return {"test": datasets.Dataset.from_list(read_rows(data_file, fields))}
