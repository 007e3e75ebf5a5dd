"""Progress reporting for long work: a rich bar on a terminal, plain lines otherwise.

[`Progress`][lego.data.progress.Progress] is what [`download()`][lego.data.download.download]
and [`prepare()`][lego.data.prepare.prepare] report to. ``make_progress(True)`` picks a rich
bar when stderr is a terminal and plain lines (at most one every few seconds) when it is a
file or a pipe, so CI logs stay readable; ``make_progress(False)`` reports nothing.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

__all__ = ["Progress", "NullProgress", "LineProgress", "RichProgress", "make_progress"]


class Progress:
    """Receives progress of one task: a description, a total (or None) and advances.

    Use as a context manager; ``update`` may be called as often as wanted (implementations
    throttle their output).
    """

    def start(self, description: str, *, total: float | None, unit: str) -> None:
        """Begin the task.

        Args:
            description: What is being done, e.g. ``"downloading input.txt"``.
            total: The amount of work (bytes, documents), or None when unknown.
            unit: The unit of ``total`` (``"B"`` formats as bytes).
        """

    def update(self, completed: float) -> None:
        """Report the work done so far (absolute, not an increment).

        Args:
            completed: The amount done, in the unit given to ``start``.
        """

    def finish(self) -> None:
        """End the task (the bar is closed, a final line printed)."""

    def abort(self) -> None:
        """End the task after a failure (the bar is closed, no "done" line)."""
        self.finish()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


class NullProgress(Progress):
    """Reports nothing."""


def _amount(value: float, unit: str) -> str:
    if unit != "B":
        return f"{value:,.0f} {unit}"
    for prefix in ("", "Ki", "Mi", "Gi"):
        if abs(value) < 1024 or prefix == "Gi":
            return f"{value:,.0f} B" if not prefix else f"{value:.1f} {prefix}B"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


class LineProgress(Progress):
    """Plain progress lines on a stream, at most one every ``interval`` seconds.

    Args:
        stream: Where lines go (default: ``sys.stderr``).
        interval: The least number of seconds between two lines.
    """

    def __init__(self, *, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._interval = interval
        self._description = ""
        self._total: float | None = None
        self._unit = ""
        self._done = 0.0
        self._last = 0.0
        self._started = 0.0
        self._active = False

    def start(self, description: str, *, total: float | None, unit: str) -> None:
        """Begin the task and print its first line."""
        self._description, self._total, self._unit = description, total, unit
        self._done = 0.0
        self._started = self._last = time.monotonic()
        self._active = True
        total_text = f" ({_amount(total, unit)})" if total is not None else ""
        print(f"{description}{total_text} ...", file=self._stream, flush=True)

    def update(self, completed: float) -> None:
        """Record the work done; print a line when ``interval`` has passed."""
        self._done = completed
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            print(f"  {self._status()}", file=self._stream, flush=True)

    def abort(self) -> None:
        """Stop without a final line."""
        self._active = False

    def finish(self) -> None:
        """Print the final line once."""
        if self._active:
            self._active = False
            elapsed = time.monotonic() - self._started
            print(
                f"{self._description}: done, {_amount(self._done, self._unit)} in {elapsed:.1f} s",
                file=self._stream,
                flush=True,
            )

    def _status(self) -> str:
        done = _amount(self._done, self._unit)
        if self._total:
            return f"{done} of {_amount(self._total, self._unit)} ({self._done / self._total:.0%})"
        return done


class RichProgress(Progress):
    """A rich progress bar on the terminal (stderr).

    Args:
        stream: The terminal stream (default: ``sys.stderr``).
    """

    def __init__(self, *, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as _RichProgress

        self._console = Console(file=stream if stream is not None else sys.stderr)
        self._columns = {
            "B": (DownloadColumn(), TransferSpeedColumn()),
            "other": (MofNCompleteColumn(),),
        }
        self._factory = _RichProgress
        self._bar = BarColumn()
        self._text = TextColumn("[progress.description]{task.description}")
        self._remaining = TimeRemainingColumn()
        self._progress: _RichProgress | None = None
        self._task: object = None

    def start(self, description: str, *, total: float | None, unit: str) -> None:
        """Open the bar (closing one left open by an earlier ``start``)."""
        self.finish()
        extra = self._columns["B" if unit == "B" else "other"]
        self._progress = self._factory(
            self._text, self._bar, *extra, self._remaining, console=self._console, transient=False
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def update(self, completed: float) -> None:
        """Move the bar."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)  # type: ignore[arg-type]

    def finish(self) -> None:
        """Close the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def make_progress(enabled: bool | Progress, *, stream: TextIO | None = None) -> Progress:
    """Choose how to report progress.

    Args:
        enabled: False for none; True for a rich bar on a terminal and plain lines
            otherwise; or a [`Progress`][lego.data.progress.Progress] to use as is.
        stream: The stream to report on (default: ``sys.stderr``).

    Returns:
        The progress reporter.
    """
    if isinstance(enabled, Progress):
        return enabled
    if not enabled:
        return NullProgress()
    out = stream if stream is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    if callable(isatty) and isatty():
        return RichProgress(stream=out)
    return LineProgress(stream=out)
