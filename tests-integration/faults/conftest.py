"""The fault suite's folder is on the path (for ``harness``); its counts end the report.

Every command's stderr goes to one log (``$LEGO_FAULTS_LOG``, or ``lego-faults-stderr.log``
in the temporary folder): the run fails if any of it holds a "Traceback", which is the
issue's ``grep -rn Traceback`` over the captured stderr, done on every run.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402 - the folder is put on the path just above


def _log_path() -> Path:
    default = Path(tempfile.gettempdir()) / "lego-faults-stderr.log"
    return Path(os.environ.get("LEGO_FAULTS_LOG") or default)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not harness.CAPTURED:
        return
    log = _log_path()
    with log.open("w", encoding="utf-8") as handle:
        for command, stderr in harness.CAPTURED:
            handle.write(f"$ {command}\n{stderr}\n")
    with_traceback = [command for command, stderr in harness.CAPTURED if "Traceback" in stderr]
    session.config.stash[_TRACEBACKS] = (str(log), with_traceback)
    if with_traceback and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_TRACEBACKS = pytest.StashKey[tuple[str, list[str]]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    counts = harness.COUNTS
    if counts:
        terminalreporter.write_line(
            f"fault suite: {counts['commands']} commands run, {counts['faults']} faults "
            f"injected and checked, {counts['files_compared']} pre-existing files compared"
        )
    log, with_traceback = terminalreporter.config.stash.get(_TRACEBACKS, ("", []))
    if log:
        terminalreporter.write_line(
            f"fault suite: stderr of {len(harness.CAPTURED)} commands in {log}; "
            f"{len(with_traceback)} hold a Traceback"
        )
    for command in with_traceback:
        terminalreporter.write_line(f"  Traceback in the stderr of: {command}", red=True)
