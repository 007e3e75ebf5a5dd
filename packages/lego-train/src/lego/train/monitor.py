"""Observability: the JSONL metrics log, the console (rich bar or plain lines), TensorBoard.

``RUN_DIR/metrics.jsonl`` gets one JSON object per log event:
``{"step": 10, "split": "train", "loss": 3.2, "lr": 3e-4, "tokens_per_s": 12000.0, ...}``
(``split`` is ``train`` or ``val``). After a resume the log is appended to, so a step may
appear twice; readers keep the last record of each ``(split, step)``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TextIO

from lego.protocols import ConfigError

__all__ = ["METRICS_FILE", "MetricsLog", "Console", "read_metrics", "TensorBoardWriter"]

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

    Raises:
        ConfigError: When the run has no ``metrics.jsonl``.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {METRICS_FILE} in the run directory",
            path=path,
            hint="pass the out_dir of a lego-train run",
        )
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
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
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "tensorboard logging needs the tensorboard package",
                key="tensorboard",
                hint='pip install "lego-train[tensorboard]", or set tensorboard: false',
            ) from exc
        self._writer = SummaryWriter(log_dir=str(log_dir))

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


class Console:
    """Progress on the terminal: a rich bar (step, loss, lr, tokens/s, ETA) or plain lines.

    Args:
        mode: ``auto`` (rich when stderr is a terminal), ``rich``, ``plain`` or ``none``.
        max_steps: The planned steps (the bar's total).
        start_step: The step the run starts or resumes at.
        stream: Where plain lines go (default: stderr).
    """

    def __init__(
        self,
        *,
        mode: Literal["auto", "rich", "plain", "none"],
        max_steps: int,
        start_step: int = 0,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "rich" if self.stream.isatty() else "plain"
        self.mode = mode
        self.max_steps = max_steps
        self.start_step = start_step
        self._start = time.perf_counter()
        self._progress: Any = None
        self._task: Any = None
        if mode == "rich":
            from rich.console import Console as RichConsole
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=RichConsole(file=self.stream),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=max_steps, completed=start_step, info=""
            )

    def _eta(self, step: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._start) / done * (self.max_steps - step)

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Show a training step's metrics.

        Args:
            step: Steps taken.
            metrics: ``loss``, ``lr``, ``tokens_per_s`` and optionally ``mfu``.
        """
        info = (
            f"loss {metrics.get('loss', float('nan')):.4f}  lr {metrics.get('lr', 0.0):.2e}  "
            f"{metrics.get('tokens_per_s', 0.0):,.0f} tok/s"
        )
        if metrics.get("mfu"):
            info += f"  mfu {100 * metrics['mfu']:.1f}%"
        if self.mode == "rich":
            self._progress.update(self._task, completed=step, info=info)
        elif self.mode == "plain":
            eta = self._eta(step)
            eta_text = f"  eta {eta:.0f}s" if math.isfinite(eta) else ""
            print(f"step {step}/{self.max_steps}  {info}{eta_text}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print a line (above the bar in rich mode)."""
        if self.mode == "rich":
            self._progress.console.print(text, markup=False, highlight=False)
        elif self.mode == "plain":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Stop the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
