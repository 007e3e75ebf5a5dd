"""Progress of long work: one mechanism for every brick, a rich bar or plain lines.

[`make_progress()`][lego.protocols.progress.make_progress] picks how to report: a rich
display when the stream is a terminal and `rich <https://rich.readthedocs.io>`_ is
installed, plain lines otherwise (so CI logs stay readable), or nothing. Work reports to a
[`Task`][lego.protocols.progress.Task] made by
[`Progress.task()`][lego.protocols.progress.Progress.task]; one display may hold several
tasks (counting, then merging; downloading, then tokenizing):

    >>> import io
    >>> out = io.StringIO()
    >>> with make_progress("plain", stream=out, interval=0) as progress:
    ...     with progress.task("tokenizing", total=4, unit="docs") as task:
    ...         task.update(2)
    ...         task.advance(2)
    >>> print(out.getvalue(), end="")  # doctest: +ELLIPSIS
    tokenizing (4 docs) ...
      tokenizing: 2 of 4 docs (50%)...
      tokenizing: 4 of 4 docs (100%)...
    tokenizing: done, 4 docs in ... s

Modes: ``"auto"`` (rich on a terminal when rich can be imported, else plain), ``"rich"``,
``"plain"`` (at most one line per task every ``interval`` seconds, plus the first and the
last), ``"none"``. lego-protocols has no dependencies: rich is imported only when a rich
display is made, and bricks that want bars declare ``rich`` themselves.
"""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import Any, Literal, TextIO

from lego.protocols.checks import check_choice
from lego.protocols.optional import import_optional

__all__ = [
    "ProgressMode",
    "PROGRESS_MODES",
    "Progress",
    "Task",
    "PlainProgress",
    "RichProgress",
    "make_progress",
    "format_amount",
]

ProgressMode = Literal["auto", "rich", "plain", "none"]
"""How progress is shown: ``auto`` chooses ``rich`` on a terminal, else ``plain``."""
PROGRESS_MODES: tuple[str, ...] = ("auto", "rich", "plain", "none")
"""The valid [`ProgressMode`][lego.protocols.progress.ProgressMode] names."""


def format_amount(value: float, unit: str) -> str:
    """Format an amount for a progress line: bytes in binary units, others with commas.

    Args:
        value: The amount.
        unit: Its unit; ``"B"`` formats as bytes (``1.5 MiB``), ``""`` as a bare number.

    Returns:
        The text, e.g. ``"1,234 docs"`` or ``"2.0 KiB"``.

    Example:
        >>> format_amount(2048, "B"), format_amount(1234, "docs"), format_amount(7, "")
        ('2.0 KiB', '1,234 docs', '7')
    """
    if unit == "B":
        for prefix in ("", "Ki", "Mi", "Gi", "Ti"):
            if abs(value) < 1024 or prefix == "Ti":
                return f"{value:,.0f} B" if not prefix else f"{value:.1f} {prefix}B"
            value /= 1024
    number = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return f"{number} {unit}" if unit else number


class Task:
    """One piece of work on a progress display: a description, a total and how much is done.

    Made by [`Progress.task()`][lego.protocols.progress.Progress.task]; the base class
    records the numbers and shows nothing. Use it as a context manager: leaving the block
    normally calls [`finish()`][lego.protocols.progress.Task.finish], leaving it with an
    exception only stops the task (no "done" line).

    Attributes:
        description: What is being done, e.g. ``"downloading input.txt"``.
        total: The amount of work, or None when unknown.
        unit: The unit of the amounts (``"B"`` formats as bytes).
        completed: The amount done so far.
        info: A short free text shown after the numbers (``"loss 3.21"``).
    """

    def __init__(
        self, description: str, *, total: float | None, unit: str, completed: float
    ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.completed = completed
        self.info = ""
        self.started = time.monotonic()
        self.start_amount = completed
        self.finished = False

    def update(
        self,
        completed: float | None = None,
        *,
        total: float | None = None,
        info: str | None = None,
    ) -> None:
        """Report the amount done so far (absolute), a new total or new info text.

        Args:
            completed: The amount done, in the task's unit (None keeps it).
            total: A new total (None keeps it).
            info: A new info text (None keeps it).
        """
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if info is not None:
            self.info = info
        self._show()

    def advance(self, amount: float = 1.0) -> None:
        """Add ``amount`` to the amount done.

        Args:
            amount: The work just done.
        """
        self.update(self.completed + amount)

    def finish(self) -> None:
        """Mark the task done (the plain display prints its final line once)."""
        if not self.finished:
            self.finished = True
            self._done()

    def stop(self) -> None:
        """End the task after a failure: no "done" line."""
        self.finished = True

    def eta(self) -> float:
        """Seconds until ``total`` at the rate seen so far (NaN when it cannot be told)."""
        done = self.completed - self.start_amount
        if not self.total or done <= 0:
            return math.nan
        rate = done / max(time.monotonic() - self.started, 1e-9)
        return max(self.total - self.completed, 0.0) / rate

    def _show(self) -> None:
        """Display the current numbers (subclasses)."""

    def _done(self) -> None:
        """Display the end of the task (subclasses)."""

    def __enter__(self) -> Task:
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
            self.stop()


class Progress:
    """A progress display that shows nothing: the ``"none"`` mode and the base class.

    Use it as a context manager (or call [`close()`][lego.protocols.progress.Progress.close]).

    Attributes:
        mode: ``"none"``, ``"plain"`` or ``"rich"``: what this display is.
    """

    mode: str = "none"

    def task(
        self, description: str, *, total: float | None = None, unit: str = "", completed: float = 0
    ) -> Task:
        """Start a task on this display.

        Args:
            description: What is being done.
            total: The amount of work, or None when unknown.
            unit: The unit of the amounts (``"B"`` formats as bytes, ``""`` none).
            completed: The amount already done (e.g. the step a run resumes at).

        Returns:
            The task to report to.
        """
        return Task(description, total=total, unit=unit, completed=completed)

    def message(self, text: str) -> None:
        """Show one line of text (above the bars of a rich display).

        Args:
            text: The line.
        """

    def close(self) -> None:
        """Stop the display (idempotent)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _PlainTask(Task):
    def __init__(
        self,
        owner: PlainProgress,
        description: str,
        *,
        total: float | None,
        unit: str,
        completed: float,
    ) -> None:
        super().__init__(description, total=total, unit=unit, completed=completed)
        self._owner = owner
        self._last = self.started
        amount = f" ({format_amount(total, unit)})" if total is not None else ""
        owner.message(f"{description}{amount} ...")

    def _show(self) -> None:
        now = time.monotonic()
        if now - self._last < self._owner.interval:
            return
        self._last = now
        done = format_amount(self.completed, self.unit)
        if self.total:
            line = f"{done.removesuffix(' ' + self.unit) if self.unit else done} of "
            line += f"{format_amount(self.total, self.unit)} ({self.completed / self.total:.0%})"
        else:
            line = done
        if self.info:
            line += f"  {self.info}"
        eta = self.eta()
        if math.isfinite(eta) and self.completed < (self.total or 0):
            line += f"  eta {eta:.0f} s"
        self._owner.message(f"  {self.description}: {line}")

    def _done(self) -> None:
        elapsed = time.monotonic() - self.started
        done = format_amount(self.completed, self.unit)
        extra = f", {self.info}" if self.info else ""
        self._owner.message(f"{self.description}: done, {done} in {elapsed:.1f} s{extra}")


class PlainProgress(Progress):
    """Plain lines on a stream: a task's first line, its updates, then its "done" line.

    Update lines of one task are at least ``interval`` seconds apart.

    Args:
        stream: Where lines go (default: ``sys.stderr``).
        interval: The least number of seconds between two update lines of one task (0:
            every update prints a line).
    """

    mode = "plain"

    def __init__(self, *, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval

    def task(
        self, description: str, *, total: float | None = None, unit: str = "", completed: float = 0
    ) -> Task:
        """Start a task and print its first line."""
        return _PlainTask(self, description, total=total, unit=unit, completed=completed)

    def message(self, text: str) -> None:
        """Print one line and flush."""
        print(text, file=self.stream, flush=True)


class _RichTask(Task):
    def __init__(
        self,
        owner: RichProgress,
        description: str,
        *,
        total: float | None,
        unit: str,
        completed: float,
    ) -> None:
        super().__init__(description, total=total, unit=unit, completed=completed)
        self._owner = owner
        self._id = owner.display.add_task(
            description, total=total, completed=completed, info="", unit=unit
        )

    def _show(self) -> None:
        self._owner.display.update(
            self._id, completed=self.completed, total=self.total, info=self.info
        )

    def _done(self) -> None:
        self._show()
        self._owner.display.stop_task(self._id)

    def stop(self) -> None:
        super().stop()
        self._owner.display.stop_task(self._id)


class RichProgress(Progress):
    """A rich display (needs the ``rich`` package): one bar per task, in place.

    Columns: the description, the bar, done/total (bytes and speed for ``unit="B"``), the
    task's info text, elapsed time and time remaining.

    Args:
        stream: The terminal stream (default: ``sys.stderr``).

    Raises:
        ConfigError: When rich is not installed.
    """

    mode = "rich"

    def __init__(self, *, stream: TextIO | None = None) -> None:
        rich_console = import_optional(
            "rich.console", needed_by="a rich progress bar", install="rich"
        )
        rp: Any = import_optional("rich.progress", needed_by="a rich progress bar", install="rich")

        class _Amount(rp.ProgressColumn):  # type: ignore[misc]
            def render(self, task: Any) -> Any:
                unit = task.fields.get("unit", "")
                done = format_amount(task.completed, unit)
                if task.total is not None:
                    done += f"/{format_amount(task.total, unit)}"
                return rp.Text(done, style="progress.download")

        self.display: Any = rp.Progress(
            rp.TextColumn("[progress.description]{task.description}"),
            rp.BarColumn(),
            _Amount(),
            rp.TextColumn("{task.fields[info]}"),
            rp.TimeElapsedColumn(),
            rp.TimeRemainingColumn(),
            console=rich_console.Console(file=stream if stream is not None else sys.stderr),
            transient=False,
        )
        self.display.start()
        self._open = True

    def task(
        self, description: str, *, total: float | None = None, unit: str = "", completed: float = 0
    ) -> Task:
        """Add a bar for a new task."""
        return _RichTask(self, description, total=total, unit=unit, completed=completed)

    def message(self, text: str) -> None:
        """Print a line above the bars."""
        self.display.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        """Stop the display."""
        if self._open:
            self._open = False
            self.display.stop()


class _Borrowed(Progress):
    """A caller's display, lent to a function: reports to it, never closes it."""

    def __init__(self, lent: Progress) -> None:
        self.lent = lent
        self.mode = lent.mode

    def task(
        self, description: str, *, total: float | None = None, unit: str = "", completed: float = 0
    ) -> Task:
        """Start a task on the lent display."""
        return self.lent.task(description, total=total, unit=unit, completed=completed)

    def message(self, text: str) -> None:
        """Show a line on the lent display."""
        self.lent.message(text)


def _rich_available() -> bool:
    try:
        import_optional("rich.progress", needed_by="", install="rich")
    except Exception:
        return False
    return True


def make_progress(
    mode: ProgressMode | bool | Progress = "auto",
    *,
    stream: TextIO | None = None,
    interval: float = 5.0,
) -> Progress:
    """Choose how to report progress.

    Args:
        mode: ``"auto"`` (or True): a rich display when ``stream`` is a terminal and rich is
            installed, plain lines otherwise; ``"rich"``, ``"plain"``, ``"none"`` (or
            False); or a caller's [`Progress`][lego.protocols.progress.Progress], reported
            to as it is and left open (closing the returned display does not close it), so
            a function can always write ``with make_progress(progress) as display:``.
        stream: Where to report (default: ``sys.stderr``).
        interval: The least seconds between two plain update lines of one task.

    Returns:
        The display; use it as a context manager.

    Raises:
        ConfigError: An unknown mode, or ``"rich"`` without rich installed.

    Example:
        >>> make_progress(False).mode, make_progress("plain").mode
        ('none', 'plain')
    """
    if isinstance(mode, Progress):
        return _Borrowed(mode)
    if mode is True:
        mode = "auto"
    elif mode is False:
        mode = "none"
    check_choice("progress", mode, PROGRESS_MODES)
    out = stream if stream is not None else sys.stderr
    if mode == "auto":
        isatty = getattr(out, "isatty", None)
        tty = callable(isatty) and bool(isatty())
        mode = "rich" if tty and _rich_available() else "plain"
    if mode == "none":
        return Progress()
    if mode == "plain":
        return PlainProgress(stream=out, interval=interval)
    return RichProgress(stream=out)
