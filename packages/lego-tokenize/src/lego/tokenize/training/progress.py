"""Progress display for training: a rich progress bar when verbose, nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["TrainingProgress"]


class TrainingProgress:
    """Two phases on one rich display: counting characters, then making tokens.

    Used as a context manager; when ``verbose`` is False every method is a no-op and rich
    is not imported. On a terminal the bars update in place; otherwise rich prints the final
    state once.

    Args:
        verbose: Show progress on standard error.
        description: What is being trained, e.g. ``"regex BPE (gpt4)"``.
    """

    def __init__(self, *, verbose: bool, description: str) -> None:
        self._verbose = verbose
        self._description = description
        self._progress: Progress | None = None
        self._count_task: Any = None
        self._merge_task: Any = None

    def __enter__(self) -> TrainingProgress:
        if self._verbose:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=sys.stderr),
            )
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def counter(self) -> Callable[[int], None] | None:
        """A callback for the counting phase (characters per chunk), or None."""
        if self._progress is None:
            return None
        progress = self._progress
        task = progress.add_task(f"{self._description}: counting characters", total=None)
        self._count_task = task

        def advance(n_chars: int) -> None:
            progress.advance(task, n_chars)

        return advance

    def merger(self, total: int) -> Callable[[int], None] | None:
        """A callback for the merge phase (tokens made so far), or None.

        Args:
            total: The number of tokens to make.
        """
        if self._progress is None:
            return None
        progress = self._progress
        if self._count_task is not None:
            progress.update(self._count_task, total=progress.tasks[0].completed)
        task = progress.add_task(f"{self._description}: making tokens", total=total)

        def update(done: int) -> None:
            progress.update(task, completed=done)

        return update
