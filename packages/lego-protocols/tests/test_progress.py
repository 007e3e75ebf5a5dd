from __future__ import annotations

import io
import sys

import pytest

from lego.protocols import ConfigError
from lego.protocols.progress import (
    PlainProgress,
    Progress,
    format_amount,
    make_progress,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_first_updates_done() -> None:
    out = io.StringIO()
    with make_progress("plain", stream=out, interval=0) as progress:
        with progress.task("download", total=2048, unit="B") as task:
            task.update(1024, info="fast")
        progress.message("between")
    lines = out.getvalue().splitlines()
    assert lines[0] == "download (2.0 KiB) ..."
    assert lines[1].startswith("  download: 1.0 KiB of 2.0 KiB (50%)  fast  eta ")
    assert lines[2].startswith("download: done, 1.0 KiB in ")
    assert lines[3] == "between"


def test_plain_interval_throttles_updates() -> None:
    out = io.StringIO()
    progress = make_progress("plain", stream=out, interval=3600)
    task = progress.task("work", total=100, unit="docs")
    for _ in range(100):
        task.advance()
    task.finish()
    task.finish()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[-1].startswith("work: done, 100 docs in ")


def test_failed_task_prints_no_done_line() -> None:
    out = io.StringIO()
    progress = make_progress("plain", stream=out, interval=0)
    task = progress.task("work", total=2)

    def fail() -> None:
        with task:
            task.advance()
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail()
    assert "done" not in out.getvalue()


def test_none_mode_prints_nothing_but_counts() -> None:
    progress = make_progress(False)
    task = progress.task("x", total=3)
    task.advance(2)
    assert task.completed == 2
    progress.message("hidden")
    assert type(progress) is Progress


def test_auto_is_plain_off_a_terminal() -> None:
    assert isinstance(make_progress("auto", stream=io.StringIO()), PlainProgress)
    assert make_progress(True, stream=io.StringIO()).mode == "plain"


def test_auto_is_rich_on_a_terminal_when_rich_exists() -> None:
    pytest.importorskip("rich")
    out = Terminal()
    with make_progress("auto", stream=out) as progress:
        assert progress.mode == "rich"
        with progress.task("merge", total=4, unit="tokens") as task:
            task.advance(4)
        progress.message("note")
    assert "merge" in out.getvalue()
    assert "note" in out.getvalue()


def test_auto_falls_back_to_plain_without_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    assert make_progress("auto", stream=Terminal()).mode == "plain"
    with pytest.raises(ConfigError, match="pip install rich"):
        make_progress("rich", stream=Terminal())


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'plain'"):
        make_progress("plane")  # type: ignore[arg-type]


def test_eta_and_format_amount() -> None:
    task = Progress().task("x", total=10)
    assert task.eta() != task.eta()  # NaN before any progress
    assert format_amount(1.5, "") == "1.50"
    assert format_amount(3 * 1024**3, "B") == "3.0 GiB"


def test_a_callers_display_is_lent_not_closed() -> None:
    out = io.StringIO()
    mine = make_progress("plain", stream=out, interval=0)
    with make_progress(mine) as lent:
        assert lent.mode == "plain"
        with lent.task("inner", total=1) as task:
            task.advance()
    mine.message("still open")
    assert out.getvalue().splitlines()[-1] == "still open"
