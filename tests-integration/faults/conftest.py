"""The fault suite's folder is on the path (for ``harness``); its counts end the report."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402 - the folder is put on the path just above


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = harness.COUNTS
    if counts:
        terminalreporter.write_line(
            f"fault suite: {counts['commands']} commands run, {counts['faults']} faults "
            f"injected and checked, {counts['files_compared']} pre-existing files compared"
        )
