from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lego.protocols import ConfigError, FolderLock
from lego.protocols.locks import LOCK_FILE, pid_alive


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def test_lock_is_taken_and_released(tmp_path: Path) -> None:
    with FolderLock(tmp_path / "run", what="training run") as lock:
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid()
        assert record["host"] == socket.gethostname()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_second_writer_gets_one_clear_error(tmp_path: Path) -> None:
    second = FolderLock(tmp_path, what="training run")
    with (
        FolderLock(tmp_path, what="training run"),
        pytest.raises(ConfigError, match="being written by another process") as info,
    ):
        second.acquire()
    assert f"pid {os.getpid()}" in info.value.message
    assert "wait for it to finish" in str(info.value.hint)


def test_lock_held_by_a_live_process_elsewhere(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
    )
    try:
        record = {"pid": child.pid, "host": socket.gethostname(), "started": "x", "token": "t"}
        (tmp_path / LOCK_FILE).write_text(json.dumps(record))
        with pytest.raises(ConfigError, match=f"pid {child.pid}"):
            FolderLock(tmp_path, what="dataset").acquire()
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("content", ["dead", "garbage", "empty"])
def test_stale_lock_is_taken_over_with_a_notice(tmp_path: Path, content: str) -> None:
    text = {
        "dead": json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "token": "t"}),
        "garbage": "{not json",
        "empty": "",
    }[content]
    (tmp_path / LOCK_FILE).write_text(text)
    notes = io.StringIO()
    with FolderLock(tmp_path, what="dataset", stream=notes) as lock:
        assert lock.held
    assert "took over the dataset lock" in notes.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_lock_from_another_host_is_not_taken_over(tmp_path: Path) -> None:
    record = {"pid": 1, "host": "other-host", "started": "x", "token": "t"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="host other-host") as info:
        FolderLock(tmp_path, what="run").acquire()
    assert "delete" in str(info.value.hint)


def test_release_leaves_someone_elses_lock(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path, what="run").acquire()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "h", "token": "other"}))
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(_dead_pid())
    assert not pid_alive(0)


def test_lock_of_an_earlier_attempt_of_the_same_job_is_taken_over(tmp_path: Path) -> None:
    record = {"pid": 1, "host": "other-machine", "started": "x", "token": "t", "job": "run-7"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="other-machine"):
        FolderLock(tmp_path, what="training run", job="run-8").acquire()
    with pytest.raises(ConfigError, match="other-machine"):
        FolderLock(tmp_path, what="training run").acquire()
    stream = io.StringIO()
    with FolderLock(tmp_path, what="training run", job="run-7", stream=stream) as lock:
        assert json.loads(lock.path.read_text())["job"] == "run-7"
    assert "took over" in stream.getvalue()


def test_the_lock_file_appears_with_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock file seen empty would be taken for a writer killed mid-write and taken over:
    # the record is complete before the file has the lock's name.
    linked: list[str] = []
    real_link = os.link

    def link(source: str, target: str) -> None:
        linked.append(Path(source).read_text())
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    with FolderLock(tmp_path, what="training run"):
        assert json.loads(linked[0])["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no private file left


def test_without_hard_links_the_lock_is_created_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: str, target: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with FolderLock(tmp_path, what="training run") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(ConfigError, match="being written by another process"):
            FolderLock(tmp_path, what="training run").acquire()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
