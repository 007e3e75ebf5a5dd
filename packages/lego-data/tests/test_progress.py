from __future__ import annotations

import io

import pytest

from lego.data.progress import LineProgress, NullProgress, RichProgress, make_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_make_progress_chooses_by_stream() -> None:
    assert isinstance(make_progress(False), NullProgress)
    assert isinstance(make_progress(True, stream=io.StringIO()), LineProgress)
    assert isinstance(make_progress(True, stream=Terminal()), RichProgress)
    given = LineProgress()
    assert make_progress(given) is given


def test_line_progress_throttles_and_finishes() -> None:
    stream = io.StringIO()
    with LineProgress(stream=stream, interval=3600) as progress:
        progress.start("tokenizing x", total=1000, unit="chars")
        for done in range(0, 1001, 100):
            progress.update(done)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "tokenizing x (1,000 chars) ..."
    assert len(lines) == 2  # no intermediate line within the interval
    assert lines[1].startswith("tokenizing x: done, 1,000 chars in ")


def test_line_progress_reports_percentages() -> None:
    stream = io.StringIO()
    progress = LineProgress(stream=stream, interval=0.0)
    progress.start("downloading f", total=4096, unit="B")
    progress.update(2048)
    assert "2.0 KiB of 4.0 KiB (50%)" in stream.getvalue()


def test_failure_prints_no_done_line() -> None:
    stream = io.StringIO()
    progress = LineProgress(stream=stream)

    def fail() -> None:
        with progress:
            progress.start("work", total=None, unit="docs")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail()
    assert stream.getvalue().startswith("work ...")
    assert "done" not in stream.getvalue()


def test_rich_progress_draws_on_a_terminal() -> None:
    stream = Terminal()
    with RichProgress(stream=stream) as progress:
        progress.start("downloading f", total=100, unit="B")
        progress.update(100)
        progress.start("again", total=None, unit="docs")  # a restart closes the first bar
        progress.update(3)
    assert "downloading f" in stream.getvalue()
