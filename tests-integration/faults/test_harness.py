"""The harness itself: a clean failure passes, a traceback or a changed file does not."""

from __future__ import annotations

import sys
from pathlib import Path

import harness
import pytest


def test_one_message_accepts_a_clean_failure(tmp_path: Path) -> None:
    code = "import sys; print('tool: error: bad', file=sys.stderr); sys.exit(2)"
    result = harness.run([sys.executable, "-c", code], cwd=tmp_path)
    harness.assert_one_message(result, prog="tool", phrase="bad")


def test_one_message_refuses_a_traceback(tmp_path: Path) -> None:
    result = harness.run([sys.executable, "-c", "raise ValueError('x')"], cwd=tmp_path)
    harness.CAPTURED.pop()  # a traceback on purpose: not one of the suite's commands
    with pytest.raises(AssertionError):
        harness.assert_one_message(result, code=1)


def test_unchanged_sees_a_changed_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    before = harness.snapshot(tmp_path)
    harness.assert_unchanged(before, tmp_path)
    (tmp_path / "a.txt").write_text("two")
    with pytest.raises(AssertionError, match=r"a\.txt"):
        harness.assert_unchanged(before, tmp_path)


def test_small_disk_fills_up(tmp_path: Path) -> None:
    code = "open('big.bin', 'wb').write(b'x' * 1_000_000)"
    with harness.small_disk(tmp_path / "disk", size_kib=256) as (disk, limit):
        result = harness.run([sys.executable, "-c", code], cwd=disk, file_size_limit=limit)
    harness.CAPTURED.pop()  # plain Python's traceback on purpose: not one of the suite's
    assert result.code != 0
    assert "No space left on device" in result.stderr or "File too large" in result.stderr
