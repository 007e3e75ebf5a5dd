"""Fault injection for ``lego-data prepare``: concurrent writers, full disks, signals, bad input.

Every test runs ``python -m lego.data.cli`` in a real subprocess (harness.py) and asserts
the exit code, one message without a traceback, and that every file that existed before is
byte-identical afterwards (issue 17: items 4, 10, 12, 13, 17).

Signals land at a chosen point without timing: the command runs in its own process group,
is stopped (SIGSTOP) as soon as it prints the marker, gets the signal, and is continued.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

from lego.tokenize import RegexBPETokenizer

PROG = "lego-data"
EOT = "<|endoftext|>"


def data(*args: str) -> list[str]:
    return harness.command("lego.data.cli", *args)


@pytest.fixture
def tok(tmp_path: Path) -> Path:
    """A byte-level tokenizer file: ids are the UTF-8 bytes, ``<|endoftext|>`` is 256."""
    path = tmp_path / "bytes.json"
    RegexBPETokenizer("gpt2", special_tokens={EOT: 256}).save(path, vocab_file=False)
    return path


def _docs(folder: Path, *, count: int = 6, chars: int = 2000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        words = " ".join(f"word{(i * 7 + j) % 101}" for j in range(chars // 8))
        (folder / f"{i:03d}.txt").write_text(words + "\n", encoding="utf-8")
    return folder


def _prepare(corpus: Path, tok: Path, out: Path | str, *extra: str) -> list[str]:
    return data("prepare", str(corpus), "--tokenizer", str(tok), "-o", str(out), *extra)


def _fails(
    argv: list[str], cwd: Path, *, phrase: str | None = None, prog: str = PROG
) -> harness.Result:
    before = harness.snapshot(cwd)
    result = harness.run(argv, cwd=cwd)
    harness.assert_one_message(result, prog=prog, phrase=phrase)
    harness.assert_unchanged(before, cwd)
    return result


def _complete(folder: Path) -> dict[str, object]:
    """The dataset's meta.json, after checking that its token files match it."""
    meta = json.loads((folder / "meta.json").read_text())
    width = 2 if meta["dtype"] == "uint16" else 4
    for split in ("train", "val"):
        entry = meta["splits"][split]
        assert (folder / entry["file"]).stat().st_size == entry["tokens"] * width
    return meta


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


# -- item 4: concurrent writers ----------------------------------------------------------------


def _start(argv: list[str], cwd: Path, *, umask: int | None = None) -> subprocess.Popen[str]:
    """Start a command in its own process group (signals can go to all of its processes)."""
    harness.COUNTS["commands"] += 1
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env={**os.environ, **harness.OFFLINE_ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=harness.as_in_a_terminal,
    )


@contextlib.contextmanager
def paused(process: subprocess.Popen[str], marker: str) -> Iterator[None]:
    """Stop the command's whole group once it prints ``marker``; continue it at the end."""
    harness.run_until(process, marker)
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)


def test_a_second_prepare_into_the_same_folder_gets_one_clear_error(
    tmp_path: Path, tok: Path
) -> None:
    corpus = _docs(tmp_path / "docs")
    first = _start(_prepare(corpus, tok, "ds", "--workers", "1"), tmp_path)
    with paused(first, "tokenizing "):
        second = harness.run(_prepare(corpus, tok, "ds", "--workers", "1"), cwd=tmp_path)
        harness.assert_one_message(second, prog=PROG, phrase="being written by another process")
        assert f"pid {first.pid}" in second.stderr
    rest, _ = first.communicate(timeout=600)
    assert first.returncode == 0, rest
    _complete(tmp_path / "ds")
    assert _leftovers(tmp_path / "ds") == []  # the lock and the temporaries are gone


def test_a_dead_processs_lock_and_temporaries_are_taken_over(tmp_path: Path, tok: Path) -> None:
    corpus = _docs(tmp_path / "docs")
    out = tmp_path / "ds"
    out.mkdir()
    pid = _dead_pid()
    host = socket.gethostname()
    (out / ".lego.lock").write_text(json.dumps({"pid": pid, "host": host, "token": "x"}))
    safe_host = "".join(c if c.isalnum() or c in "_-" else "_" for c in host)
    stale = out / f".train.bin.tmp-{safe_host}-{pid}-0123abcd"
    stale.write_bytes(b"half a file")
    live = out / f".val.bin.tmp-{safe_host}-{os.getpid()}-0123abcd"  # a live process's
    live.write_bytes(b"in progress")
    result = harness.run(_prepare(corpus, tok, out), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert f"took over the dataset folder lock of pid {pid}" in result.stderr
    _complete(out)
    assert not stale.exists()
    assert live.exists()


# -- item 10: a full or read-only disk ---------------------------------------------------------


def test_prepare_onto_a_full_disk_is_one_message_and_keeps_the_old_dataset(
    tmp_path: Path, tok: Path
) -> None:
    small = _docs(tmp_path / "small", count=2, chars=400)
    big = _docs(tmp_path / "big", count=8, chars=40_000)
    with harness.small_disk(tmp_path / "disk", size_kib=160) as (disk, limit):
        made = harness.run(_prepare(small, tok, disk / "ds"), cwd=tmp_path, file_size_limit=limit)
        assert made.code == 0, made.stderr
        before = harness.snapshot(tmp_path)
        result = harness.run(
            _prepare(big, tok, disk / "ds", "--workers", "2"), cwd=tmp_path, file_size_limit=limit
        )
        harness.assert_one_message(result, prog=PROG, phrase="cannot write")
        harness.assert_unchanged(before, tmp_path)
        _complete(disk / "ds")
        assert _leftovers(disk / "ds") == []


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder on a read-only filesystem (a tmpfs mounted read-only), or skip."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


@pytest.mark.parametrize("inside", [False, True], ids=["folder-itself", "new-subfolder"])
def test_prepare_into_a_read_only_folder_is_one_message(
    tmp_path: Path, tok: Path, inside: bool
) -> None:
    corpus = _docs(tmp_path / "docs")
    with read_only_folder(tmp_path / "ro") as folder:
        target = folder / "ds" if inside else folder
        _fails(_prepare(corpus, tok, target), tmp_path)


# -- item 12 and outputs over inputs -----------------------------------------------------------


def test_an_out_dir_that_is_a_file_is_refused(tmp_path: Path, tok: Path) -> None:
    corpus = _docs(tmp_path / "docs")
    (tmp_path / "notes.txt").write_text("keep me\n")
    _fails(_prepare(corpus, tok, "notes.txt"), tmp_path, phrase="must be a folder")


def test_outputs_never_replace_the_corpus_or_the_tokenizer(tmp_path: Path, tok: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "train.bin").write_text("this text file is the corpus\n")
    _fails(_prepare(ds / "train.bin", tok, ds), tmp_path, phrase="would overwrite an input")
    (ds / "meta.json").write_bytes(tok.read_bytes())
    corpus = _docs(tmp_path / "docs")
    _fails(_prepare(corpus, ds / "meta.json", ds), tmp_path, phrase="would overwrite an input")


# -- item 13 and signals: Ctrl-C, SIGTERM, SIGKILL during prepare ------------------------------


@pytest.mark.parametrize(
    ("signum", "group", "code", "word"),
    [
        (signal.SIGINT, True, 130, "interrupted"),
        (signal.SIGTERM, False, 143, "terminated"),
        (signal.SIGKILL, False, -signal.SIGKILL, None),
    ],
    ids=["ctrl-c-group", "sigterm", "sigkill"],
)
def test_a_signal_during_a_multi_worker_prepare_keeps_the_old_dataset(
    tmp_path: Path, tok: Path, signum: int, group: bool, code: int, word: str | None
) -> None:
    corpus = _docs(tmp_path / "docs", count=12, chars=200_000)
    made = harness.run(_prepare(_docs(tmp_path / "old", count=2), tok, "ds"), cwd=tmp_path)
    assert made.code == 0, made.stderr
    before = harness.snapshot(tmp_path)
    process = _start(_prepare(corpus, tok, "ds", "--workers", "2"), tmp_path)
    harness.stop_at(process, "tokenizing ", workers=2)
    harness.COUNTS["faults"] += 1
    try:
        if group:  # Ctrl-C in a terminal: every process of the group, workers included
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
    rest, _ = process.communicate(timeout=600)
    assert process.returncode == code, rest
    if word is not None:  # after SIGKILL nothing reports (orphaned workers may still print)
        assert "Traceback" not in rest, rest
        assert rest.count(word) == 1, rest
        assert _leftovers(tmp_path / "ds") == []
    harness.assert_unchanged(before, tmp_path)
    rerun = harness.run(_prepare(corpus, tok, "ds", "--workers", "2"), cwd=tmp_path)
    assert rerun.code == 0, rerun.stderr
    assert _complete(tmp_path / "ds")["source"]["documents"] == 12  # type: ignore[index]
    assert _leftovers(tmp_path / "ds") == []  # a killed run's lock and temporaries are gone


# -- item 17: file modes follow the umask ------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_dataset_files_follow_the_umask(tmp_path: Path, tok: Path, umask: int) -> None:
    corpus = _docs(tmp_path / "docs")
    argv = _prepare(corpus, tok, "ds")
    code = f"import os, runpy, sys; os.umask({umask}); sys.argv = {argv[2:]!r}; "
    code += "runpy.run_module('lego.data.cli', run_name='__main__')"
    result = harness.run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.code == 0, result.stderr
    for name in ("train.bin", "val.bin", "meta.json"):
        mode = stat.S_IMODE((tmp_path / "ds" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


# -- bad inputs --------------------------------------------------------------------------------


def _bad_corpus(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad-{kind}"
    if kind == "empty-folder":
        path.mkdir()
    elif kind == "binary-folder":
        path.mkdir()
        (path / "x.txt").write_bytes(bytes(range(256)) * 8)
    elif kind == "binary":
        path.write_bytes(b"\x00\x01\x02" * 100)
    elif kind == "not-utf8":
        path.write_bytes(b"caf\xe9\n" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "jsonl-garbage":
        path = tmp_path / "bad.jsonl"
        path.write_text('{"text": "ok"}\n{not json\n')
    elif kind == "jsonl-no-text":
        path = tmp_path / "bad.jsonl"
        path.write_text('{"body": "no text key"}\n')
    return path  # "missing": never created


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty-folder",
        "binary-folder",
        "binary",
        "not-utf8",
        "empty",
        "jsonl-garbage",
        "jsonl-no-text",
    ],
)
def test_a_bad_corpus_is_one_message(tmp_path: Path, tok: Path, kind: str) -> None:
    corpus = _bad_corpus(tmp_path, kind)
    _fails(_prepare(corpus, tok, "ds"), tmp_path)
    assert not (tmp_path / "ds" / "meta.json").exists()


@pytest.mark.parametrize(
    "content", [None, b"", b"\x00\xff garbage", b'{"format": "lego-tokenizer"', b"[]", "dir"]
)
def test_a_bad_tokenizer_is_one_message(tmp_path: Path, content: bytes | str | None) -> None:
    corpus = _docs(tmp_path / "docs")
    bad = tmp_path / "bad-tok.json"
    if content == "dir":
        bad.mkdir()
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    _fails(_prepare(corpus, bad, "ds"), tmp_path)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--workers", "0"],
        ["--val-fraction", "1.5"],
        ["--eot-id", "999"],
        ["--dtype", "uint16", "--eot-id", "-1"],
        ["val_fractoin=0.1"],
        ["--config", "missing.yaml"],
        ["--config", "garbage.yaml"],
        ["--split", "documents", "--val-fraction", "0.5", "seed=x"],
    ],
)
def test_bad_options_are_one_message(tmp_path: Path, tok: Path, extra: list[str]) -> None:
    corpus = _docs(tmp_path / "docs")
    (tmp_path / "garbage.yaml").write_bytes(b"\x00: [unclosed\n")
    _fails(_prepare(corpus, tok, "ds", *extra), tmp_path)
    assert not (tmp_path / "ds" / "meta.json").exists()


# -- the same class of fault elsewhere: summary --plot and download ----------------------------


def test_summary_plot_is_checked_before_the_work_and_never_replaces_the_corpus(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    corpus = tmp_path / "c.svg"  # a text corpus that happens to carry an image suffix
    corpus.write_text("some text\n" * 20)
    (tmp_path / "folder.png").mkdir()
    for plot, phrase in (
        ("out.xyz", "cannot write .xyz"),
        (str(corpus), "would overwrite an input"),
        ("folder.png", "must be a file"),
    ):
        _fails(data("summary", str(corpus), "--plot", plot), tmp_path, phrase=phrase)


def test_summary_plot_onto_a_full_or_read_only_disk_is_one_message(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    corpus = _docs(tmp_path / "docs")
    with harness.small_disk(tmp_path / "disk", size_kib=8) as (disk, limit):
        (disk / "old.svg").write_text("<svg/>")
        before = harness.snapshot(tmp_path)
        result = harness.run(
            data("summary", str(corpus), "--plot", str(disk / "old.svg")),
            cwd=tmp_path,
            file_size_limit=limit,
        )
        harness.assert_one_message(result, prog=PROG, phrase="cannot write")
        harness.assert_unchanged(before, tmp_path)
        assert _leftovers(disk) == []
    with read_only_folder(tmp_path / "ro") as folder:
        _fails(data("summary", str(corpus), "--plot", str(folder / "p.png")), tmp_path)


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "binary", "not-utf8", "empty"])
def test_summary_of_a_bad_corpus_is_one_message(tmp_path: Path, kind: str) -> None:
    corpus = _bad_corpus(tmp_path, kind)
    before = harness.snapshot(tmp_path)
    result = harness.run(data("summary", str(corpus)), cwd=tmp_path)
    if kind == "empty":  # an empty file is an empty corpus: zeros, not an error
        assert result.code in (0, 2), result.stderr
        if result.code == 2:
            harness.assert_one_message(result, prog=PROG)
    else:
        harness.assert_one_message(result, prog=PROG)
    harness.assert_unchanged(before, tmp_path)


@pytest.mark.parametrize(
    "argv",
    [
        ["http://127.0.0.1:9/corpus.txt", "out.txt"],  # nothing listens: offline
        ["no_such_corpus", "out/"],
        ["python-stdlib", "out/"],
        ["ftp://example.org/x.txt", "out.txt"],
        ["http://127.0.0.1:9/x.txt", "out.txt", "--sha256", "abc"],
        ["http://127.0.0.1:9/x.txt"],
    ],
)
def test_download_failures_are_one_message(tmp_path: Path, argv: list[str]) -> None:
    usage = len(argv) == 1  # argparse's usage error names the subcommand
    _fails(data("download", *argv), tmp_path, prog=f"{PROG} download" if usage else PROG)
    assert not (tmp_path / "out.txt").exists()
