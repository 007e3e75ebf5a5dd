"""Fault injection for ``lego-tokenize``: outputs over inputs, bad inputs, full disks, signals.

Every test runs ``python -m lego.tokenize.cli`` in a real subprocess (harness.py) and
asserts the exit code, one message without a traceback, and that every file that existed
before is byte-identical afterwards (issue 17: items 2, 3, 10, 12, 16).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

PROG = "lego-tokenize"
EOT = "<|endoftext|>"
TEXT = "the quick brown fox jumps over the lazy dog. " * 40 + "hello world, hello there!\n"


def tokenize(*args: str) -> list[str]:
    return harness.command("lego.tokenize.cli", *args)


def _corpus(folder: Path, name: str = "corpus.txt", text: str = TEXT) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _tokenizer(folder: Path) -> Path:
    """A small trained tokenizer file (and its dump), made through the CLI itself."""
    corpus = _corpus(folder, "tok-corpus.txt")
    result = harness.run(
        tokenize("train", str(corpus), "--vocab-size", "280", "--special", EOT, "-o", "tok.json"),
        cwd=folder,
    )
    assert result.code == 0, result.stderr
    return folder / "tok.json"


def _fails(
    argv: list[str], cwd: Path, *, phrase: str | None = None, stdin: str | None = None
) -> harness.Result:
    """Run a command that must fail cleanly and leave every existing file alone."""
    before = harness.snapshot(cwd)
    result = harness.run(argv, cwd=cwd, stdin=stdin)
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    harness.assert_unchanged(before, cwd)
    return result


# -- item 2: the .vocab dump never overwrites a file the user did not name -------------------


def test_training_on_a_vocab_file_never_overwrites_it(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path, "corpus.vocab")
    _fails(tokenize("train", str(corpus), "--vocab-size", "300", "-o", "corpus.json"), tmp_path)
    assert not (tmp_path / "corpus.json").exists()  # refused before training


def test_the_dump_never_replaces_a_users_file(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    (tmp_path / "words.vocab").write_text("my own word list\n", encoding="utf-8")
    argv = tokenize("train", str(corpus), "--vocab-size", "280", "-o", "words.json")
    _fails(argv, tmp_path, phrase="not a vocabulary dump")
    assert not (tmp_path / "words.json").exists()

    before = harness.snapshot(tmp_path)
    result = harness.run([*argv, "--no-vocab-file"], cwd=tmp_path)
    assert result.code == 0, result.stderr
    harness.assert_unchanged(before, tmp_path)
    assert "vocab" not in result.stderr

    result = harness.run([*argv, "--vocab-file", "words.vocab"], cwd=tmp_path)  # named: allowed
    assert result.code == 0, result.stderr
    assert (tmp_path / "words.vocab").read_text(encoding="utf-8").startswith("# lego-tokenizer")


def test_the_dump_is_announced_and_a_rerun_replaces_only_its_own_dump(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    argv = tokenize("train", str(corpus), "--vocab-size", "280", "-o", "tok.json")
    first = harness.run(argv, cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert "wrote tok.vocab" in first.stderr
    again = harness.run(argv, cwd=tmp_path)
    assert again.code == 0, again.stderr
    before = harness.snapshot(tmp_path)
    _fails([*argv, "--vocab-file", str(corpus)], tmp_path, phrase="training file")
    _fails([*argv, "--vocab-file", "tok.json"], tmp_path, phrase="tokenizer file")
    harness.assert_unchanged(before, tmp_path)


def test_a_folder_is_not_trained_on_the_files_an_earlier_run_wrote_into_it(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _corpus(data, "a.txt")
    argv = tokenize("train", "data", "--vocab-size", "280", "-o", "data/tok.json")
    first = harness.run(argv, cwd=tmp_path)
    assert first.code == 0, first.stderr
    made = (data / "tok.json").read_bytes()
    second = harness.run(argv, cwd=tmp_path)
    assert second.code == 0, second.stderr
    assert "from 1 file(s)" in second.stdout
    assert (data / "tok.json").read_bytes() == made  # neither tok.json nor tok.vocab read


# -- item 3: an output equal to an input is an error -------------------------------------------


def test_encode_never_writes_over_its_input(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    text = _corpus(tmp_path, "f.txt", "hello world\n")
    _fails(tokenize("encode", "-t", str(tok), "-i", "f.txt", "-o", "f.txt"), tmp_path)
    _fails(tokenize("encode", "-t", str(tok), "-i", "f.txt", "-o", "./f.txt"), tmp_path)
    os.symlink(text, tmp_path / "link.txt")
    _fails(tokenize("encode", "-t", str(tok), "-i", "f.txt", "-o", "link.txt"), tmp_path)
    _fails(tokenize("encode", "-t", str(tok), "-i", "f.txt", "-o", "tok.json"), tmp_path)


def test_decode_never_writes_over_its_input_or_the_tokenizer(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    (tmp_path / "ids.txt").write_text("104 105\n", encoding="utf-8")
    _fails(tokenize("decode", "-t", str(tok), "-i", "ids.txt", "-o", "ids.txt"), tmp_path)
    _fails(tokenize("decode", "-t", f"lego:{tok}", "-o", "tok.json"), tmp_path, stdin="104")


def test_train_never_writes_over_a_named_training_file(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    _fails(tokenize("train", str(corpus), "--vocab-size", "280", "-o", "corpus.txt"), tmp_path)


# -- item 12: an output that is a folder, or whose folder is missing ---------------------------


@pytest.mark.parametrize("command", ["train", "encode", "decode"])
def test_an_output_that_is_a_folder_is_refused_before_any_work(
    tmp_path: Path, command: str
) -> None:
    tok = _tokenizer(tmp_path)
    (tmp_path / "out").mkdir()
    corpus = _corpus(tmp_path)
    argv = {
        "train": ["train", str(corpus), "--vocab-size", "280"],
        "encode": ["encode", "-t", str(tok), "-i", str(corpus)],
        "decode": ["decode", "-t", str(tok)],
    }[command]
    _fails(tokenize(*argv, "-o", "out"), tmp_path, phrase="folder", stdin="104")
    _fails(tokenize(*argv, "-o", "missing/x.out"), tmp_path, phrase="does not exist", stdin="1")


# -- item 16: messages that point the right way ------------------------------------------------


def test_a_vocab_size_that_cannot_be_reached_is_said_with_the_reached_size(
    tmp_path: Path,
) -> None:
    corpus = _corpus(tmp_path, text="ab ab ab\n")
    result = harness.run(
        tokenize("train", str(corpus), "--vocab-size", "5000", "-o", "tok.json"), cwd=tmp_path
    )
    assert result.code == 0, result.stderr
    vocab_size = json.loads((tmp_path / "tok.json").read_text())["merges"].__len__() + 256
    assert f"{PROG}: warning: asked for a vocabulary of 5000 ids, reached {vocab_size}" in (
        result.stderr
    )
    assert f"vocab size {vocab_size}" in result.stdout


def test_stdin_is_not_told_that_a_file_was_cut_short(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    result = _fails(tokenize("decode", "-t", str(tok)), tmp_path, stdin="[104, 105")
    assert "file" not in result.stderr.split("what to do:")[-1]
    assert "stdin" in result.stderr


# -- bad inputs to every subcommand ------------------------------------------------------------

BAD_FILES = {
    "missing": None,
    "folder": "dir",
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "not-utf8": b"caf\xe9 au lait\n",
    "nul-text": b"text\x00more",
    "truncated-json": b'{"format": "lego-tokenizer", "version": 1, "type": "regex',
    "json-list": b"[1, 2, 3]",
    "other-json": b'{"model": {"type": "WordPiece"}}',
}


def _bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad-{kind}"
    content = BAD_FILES[kind]
    if content == "dir":
        path.mkdir()
        (path / ".hidden").write_text("x")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_tokenizer_file_is_one_message_in_every_subcommand(tmp_path: Path, kind: str) -> None:
    bad = _bad(tmp_path, kind)
    corpus = _corpus(tmp_path, "in.txt", "hello\n")
    for argv in (
        ["encode", "-t", str(bad), "-i", str(corpus)],
        ["decode", "-t", str(bad), "-i", str(corpus)],
        ["info", str(bad)],
        ["compare", str(bad), "--text", "hi"],
        ["encode", "-t", f"hf:{bad}", "-i", str(corpus)],
        ["encode", "-t", f"gpt2:{bad}", "-i", str(corpus)],
    ):
        _fails(tokenize(*argv), tmp_path)


@pytest.mark.parametrize("kind", ["missing", "folder", "binary", "not-utf8", "nul-text"])
def test_a_bad_input_file_is_one_message_in_every_subcommand(tmp_path: Path, kind: str) -> None:
    tok = _tokenizer(tmp_path)
    bad = _bad(tmp_path, kind)
    commands = [["decode", "-t", str(tok), "-i", str(bad)]]
    if kind != "nul-text":  # NUL is a character: text with one encodes fine
        commands += [
            ["encode", "-t", str(tok), "-i", str(bad)],
            ["info", str(tok), "--sample", str(bad)],
            ["compare", str(tok), "-i", str(bad)],
        ]
    for argv in commands:
        _fails(tokenize(*argv), tmp_path)


@pytest.mark.parametrize("kind", ["missing", "folder", "empty", "not-utf8"])
def test_bad_training_data_is_one_message(tmp_path: Path, kind: str) -> None:
    bad = _bad(tmp_path, kind)
    _fails(tokenize("train", str(bad), "--vocab-size", "300", "-o", "tok.json"), tmp_path)
    assert not (tmp_path / "tok.json").exists()


@pytest.mark.parametrize(
    "stdin", ["", "[1, 2", "1 2 x", "-1", "[1.5]", "99999999999999999999", "{}", "[[1]]"]
)
def test_bad_ids_on_stdin_are_one_message(tmp_path: Path, stdin: str) -> None:
    tok = _tokenizer(tmp_path)
    before = harness.snapshot(tmp_path)
    result = harness.run(tokenize("decode", "-t", str(tok)), cwd=tmp_path, stdin=stdin)
    if stdin == "":  # no ids: no text, not an error
        assert result.code == 0, result.stderr
    else:
        harness.assert_one_message(result, prog=PROG)
    harness.assert_unchanged(before, tmp_path)


def test_binary_garbage_on_stdin_is_one_message(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    argv = tokenize("encode", "-t", str(tok))
    before = harness.snapshot(tmp_path)
    done = subprocess.run(argv, cwd=tmp_path, input=b"\xff\xfe\x00garbage", capture_output=True)
    harness.COUNTS["commands"] += 1
    result = harness.Result(done.returncode, done.stdout.decode(), done.stderr.decode())
    harness.assert_one_message(result, prog=PROG, phrase="stdin")
    harness.assert_unchanged(before, tmp_path)


# -- item 10: a full or read-only disk ---------------------------------------------------------


@contextlib.contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder on a read-only filesystem (a tmpfs remounted read-only), or skip."""
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


def _big_corpus(folder: Path, chars: int) -> Path:
    words = [f"w{i % 997}x{i % 13}" for i in range(chars // 6)]
    return _corpus(folder, "big.txt", " ".join(words))


def test_train_onto_a_full_disk_is_one_message_and_leaves_nothing(tmp_path: Path) -> None:
    corpus = _big_corpus(tmp_path, 200_000)
    with harness.small_disk(tmp_path / "disk", size_kib=48) as (disk, limit):
        (disk / "tok.json").write_text("{}\n")  # a file that was there before
        before = harness.snapshot(tmp_path)
        result = harness.run(
            tokenize("train", str(corpus), "--vocab-size", "4000", "-o", str(disk / "tok.json")),
            cwd=tmp_path,
            file_size_limit=limit,
        )
        harness.assert_one_message(result, prog=PROG, phrase="cannot write")
        harness.assert_unchanged(before, tmp_path)
        assert sorted(p.name for p in disk.iterdir()) == ["tok.json"]  # no temporary left


def test_encode_onto_a_full_disk_is_one_message_and_leaves_nothing(tmp_path: Path) -> None:
    tok = _tokenizer(tmp_path)
    corpus = _big_corpus(tmp_path, 300_000)
    with harness.small_disk(tmp_path / "disk", size_kib=48) as (disk, limit):
        before = harness.snapshot(tmp_path)
        result = harness.run(
            tokenize("encode", "-t", str(tok), "-i", str(corpus), "-o", str(disk / "ids.txt")),
            cwd=tmp_path,
            file_size_limit=limit,
        )
        harness.assert_one_message(result, prog=PROG, phrase="cannot write")
        harness.assert_unchanged(before, tmp_path)
        assert list(disk.iterdir()) == []


@pytest.mark.parametrize("command", ["train", "encode"])
def test_a_read_only_folder_is_one_message(tmp_path: Path, command: str) -> None:
    tok = _tokenizer(tmp_path)
    corpus = _corpus(tmp_path)
    with read_only_folder(tmp_path / "ro") as folder:
        argv = (
            ["train", str(corpus), "--vocab-size", "280"]
            if command == "train"
            else ["encode", "-t", str(tok), "-i", str(corpus)]
        )
        _fails(tokenize(*argv, "-o", str(folder / "out.json")), tmp_path, phrase="cannot write")


# -- signals during training and encoding ------------------------------------------------------


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start a command in its own process group, so a signal can go to all its processes."""
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


@pytest.mark.parametrize(
    ("marker", "signum", "group", "code"),
    [
        ("counting characters ...", signal.SIGINT, True, 130),
        ("counting characters ...", signal.SIGTERM, False, 143),
        ("making tokens", signal.SIGINT, False, 130),
        ("making tokens", signal.SIGKILL, False, -signal.SIGKILL),
    ],
    ids=["ctrl-c-counting", "sigterm-counting", "sigint-merging", "sigkill"],
)
def test_a_signal_during_training_changes_nothing_and_a_rerun_succeeds(
    tmp_path: Path, marker: str, signum: int, group: bool, code: int
) -> None:
    """The signal lands at the marker without timing: the group is stopped, signalled and
    continued."""
    corpus = _big_corpus(tmp_path, 3_000_000)
    argv = tokenize(
        "train", str(corpus), "--vocab-size", "3000", "--workers", "2", "-v", "-o", "tok.json"
    )
    (tmp_path / "tok.json").write_text("an earlier file\n")
    before = harness.snapshot(tmp_path)
    process = _start(argv, tmp_path)
    harness.stop_at(process, marker, workers=2 if "counting" in marker else 0)
    harness.COUNTS["faults"] += 1
    try:
        if group:  # Ctrl-C in a terminal: the whole process group, workers included
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
    rest, _ = process.communicate(timeout=600)
    assert process.returncode == code, rest
    assert "Traceback" not in rest, rest
    if code > 0:
        assert rest.count("interrupted" if code == 130 else "terminated") == 1, rest
    harness.assert_unchanged(before, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "tok.json"]
    rerun = harness.run([*argv[:-2], "-o", "new.json"], cwd=tmp_path)
    assert rerun.code == 0, rerun.stderr
