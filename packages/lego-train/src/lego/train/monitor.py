"""Observability: the JSONL metrics log, TensorBoard, and the text of a progress line.

The progress display itself is lego-protocols' one mechanism
([`make_progress()`][lego.protocols.make_progress]: a rich bar on a terminal, plain lines
otherwise); [`format_step()`][lego.train.monitor.format_step] is what the trainer shows
for a step.

``RUN_DIR/metrics.jsonl`` gets one JSON object per log event:
``{"step": 10, "split": "train", "loss": 3.2, "lr": 3e-4, "tokens_per_s": 12000.0, ...}``
(``split`` is ``train`` or ``val``). After a resume the log is appended to, so a step may
appear twice; readers keep the last record of each ``(split, step)``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from lego.protocols import ConfigError, read_bytes

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics", "TensorBoardWriter", "format_step"]

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends metric records to ``RUN_DIR/metrics.jsonl`` (one JSON object per line).

    Args:
        run_dir: The run directory (created).
    """

    def __init__(self, *, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / METRICS_FILE
        self._handle: TextIO | None = self.path.open("a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it.

        Args:
            record: JSON-compatible values (non-finite floats are written as strings).
        """
        if self._handle is None:
            return
        self._handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a run's metrics, keeping the last record of each ``(split, step)``.

    Args:
        run_dir: The run directory.

    Returns:
        Records sorted by split then step.

    Lines that are not JSON objects (cut by a kill, damaged) are skipped.

    Raises:
        ConfigError: When the run has no ``metrics.jsonl`` (or it cannot be read).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {METRICS_FILE} in the run directory",
            path=path,
            hint="pass the out_dir of a lego-train run",
        )
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for raw in read_bytes(path, what="metrics log").splitlines():
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # a line cut by a kill, or damaged
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            latest[(str(record.get("split", "train")), record["step"])] = record
    return [latest[key] for key in sorted(latest)]


class TensorBoardWriter:
    """Scalars to TensorBoard event files (needs ``lego-train[tensorboard]``).

    Args:
        log_dir: Where the event files go.

    Raises:
        ConfigError: When the ``tensorboard`` package is not installed.
    """

    def __init__(self, *, log_dir: Path) -> None:
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    @staticmethod
    def check_available() -> None:
        """Check, before any training, that TensorBoard logging can work.

        Raises:
            ConfigError: When the ``tensorboard`` package is not installed.
        """
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "tensorboard logging needs the tensorboard package",
                key="tensorboard",
                hint='pip install "lego-train[tensorboard]", or set tensorboard: false',
            ) from exc

    def write(self, record: Mapping[str, Any]) -> None:
        """Add every numeric value of a record as a scalar ``split/name`` at its step."""
        step = int(record["step"])
        split = str(record.get("split", "train"))
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self._writer.add_scalar(f"{split}/{key}", float(value), step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def format_step(metrics: Mapping[str, float]) -> str:
    """The metrics of a training step as one short line of text.

    Args:
        metrics: ``loss``, ``lr``, ``tokens_per_s`` and optionally ``mfu``.

    Returns:
        E.g. ``"loss 3.2100  lr 3.00e-04  12,000 tok/s  mfu 41.0%"``.

    Example:
        >>> format_step({"loss": 2.0, "lr": 1e-3, "tokens_per_s": 10.0})
        'loss 2.0000  lr 1.00e-03  10 tok/s'
    """
    info = (
        f"loss {metrics.get('loss', float('nan')):.4f}  lr {metrics.get('lr', 0.0):.2e}  "
        f"{metrics.get('tokens_per_s', 0.0):,.0f} tok/s"
    )
    if metrics.get("mfu"):
        info += f"  mfu {100 * metrics['mfu']:.1f}%"
    return info
