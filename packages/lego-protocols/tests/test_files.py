"""lego.protocols.files: round trips, every error path, and atomic writes that fail cleanly."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lego.protocols
from lego.protocols import ConfigError, DataError, FormatError, files

FIXTURE_SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_exported_from_the_package() -> None:
    for name in files.__all__:
        assert getattr(lego.protocols, name) is getattr(files, name)
        assert name in lego.protocols.__all__


# -- round trips ----------------------------------------------------------------------------


@FIXTURE_SETTINGS
@given(data=st.binary(max_size=2000))
def test_bytes_round_trip(tmp_path: Path, data: bytes) -> None:
    target = tmp_path / "blob.bin"
    files.atomic_write_bytes(target, data)
    assert files.read_bytes(target, what="blob") == data
    assert _entries(tmp_path) == ["blob.bin"]


@FIXTURE_SETTINGS
@given(text=st.text())
def test_text_round_trip_is_exact(tmp_path: Path, text: str) -> None:
    target = tmp_path / "text.txt"
    files.atomic_write_text(target, text)
    assert files.read_text(target, what="text file") == text
    assert target.read_bytes() == text.encode("utf-8")  # no newline translation


@FIXTURE_SETTINGS
@given(value=json_values)
def test_json_round_trip(tmp_path: Path, value: Any) -> None:
    target = tmp_path / "doc.json"
    files.atomic_write_text(target, json.dumps(value, ensure_ascii=False))
    assert files.read_json(target, what="JSON file") == value


def test_read_text_keeps_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfa\r\nb")
    assert files.read_text(path, what="text file") == "\ufeffa\r\nb"


def test_read_json_ignores_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}')
    assert files.read_json(path, what="JSON file") == {"a": 1}


def test_write_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    files.atomic_write_text("here.txt", "x")
    assert (tmp_path / "here.txt").read_text() == "x"
    assert _entries(tmp_path) == ["here.txt"]


# -- reading: wrong paths are ConfigError -----------------------------------------------------


def test_read_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    for read in (files.read_bytes, files.read_text, files.read_json):
        with pytest.raises(ConfigError, match="widget file not found") as info:
            read(missing, what="widget file")
        assert info.value.path == str(missing)
        assert info.value.hint is not None


def test_read_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a widget file, found a directory") as info:
        files.read_bytes(tmp_path, what="widget file")
    assert info.value.path == str(tmp_path)


def test_read_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.txt"
    path.write_text("secret")

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files, "open", denied, raising=False)
    with pytest.raises(ConfigError, match="cannot read the widget file: Permission denied") as info:
        files.read_text(path, what="widget file")
    assert info.value.path == str(path)
    assert info.value.hint == "check the file's permissions"


def test_open_binary_streams_and_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(b"abc" * 1000)
    with files.open_binary(path, what="training file") as handle:
        assert handle.read(3) == b"abc"
    with pytest.raises(ConfigError, match="training file not found") as info:
        files.open_binary(tmp_path / "gone.txt", what="training file")
    assert info.value.path == str(tmp_path / "gone.txt")
    with pytest.raises(ConfigError, match="found a directory"):
        files.open_binary(tmp_path, what="training file")


# -- reading: wrong content is FormatError ----------------------------------------------------


def test_not_utf8_gives_line_byte_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(FormatError, match=r"not UTF-8 text \(byte offset 14") as info:
        files.read_text(path, what="text file")
    assert (info.value.line, info.value.column) == (2, 6)
    assert info.value.path == str(path)
    assert info.value.hint is not None


@given(prefix=st.text().map(lambda t: t.encode("utf-8")))
def test_not_utf8_position_is_exact(prefix: bytes) -> None:
    data = prefix + b"\x80"
    with pytest.raises(FormatError) as info:
        files.decode_utf8(data, path=None, what="stream")
    assert info.value.line == prefix.count(b"\n") + 1
    last_line = prefix.rsplit(b"\n", 1)[-1]
    assert info.value.column == len(last_line) + 1
    assert f"byte offset {len(prefix)}" in info.value.message
    assert info.value.path is None


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": ]\n}')
    with pytest.raises(FormatError, match="config file is not valid JSON") as info:
        files.read_json(path, what="config file")
    assert (info.value.line, info.value.column) == (3, 8)
    assert "truncated" not in info.value.message
    assert info.value.path == str(path)


@given(value=json_values.filter(lambda v: isinstance(v, (dict, list)) and v), cut=st.data())
def test_truncated_json_is_said_to_be_truncated(value: Any, cut: st.DataObject) -> None:
    text = json.dumps(value)
    end = cut.draw(st.integers(min_value=1, max_value=len(text) - 1))
    with pytest.raises(FormatError, match="truncated") as info:
        files.parse_json(text[:end], path="cut.json", what="JSON file")
    assert info.value.hint is not None
    assert "cut short" in info.value.hint


@pytest.mark.parametrize("text", ["", "  \n", "\ufeff"])
def test_empty_json(text: str) -> None:
    with pytest.raises(FormatError, match="the JSON file is empty"):
        files.parse_json(text, path="e.json", what="JSON file")


def test_duplicate_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "dup.json"
    path.write_text('{"a": 1, "b": {"c": 1, "c": 2}}')
    with pytest.raises(FormatError, match="repeats the key 'c' in one JSON object") as info:
        files.read_json(path, what="JSON file")
    assert info.value.key == "c"
    assert info.value.path == str(path)
    assert files.read_json(path, what="JSON file", allow_duplicate_keys=True) == {
        "a": 1,
        "b": {"c": 2},
    }


def test_deeply_nested_json() -> None:
    text = "[" * 200_000 + "]" * 200_000
    with pytest.raises(FormatError, match="nested too deeply"):
        files.parse_json(text, path=None, what="JSON file")


@pytest.mark.skipif(
    not hasattr(sys, "get_int_max_str_digits"), reason="no integer string limit before 3.11"
)
def test_overlong_integer() -> None:
    with pytest.raises(FormatError, match="cannot be read"):
        files.parse_json("1" * 10_000, path=None, what="JSON file")


# -- writing --------------------------------------------------------------------------------


def test_replace_keeps_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(0o640)
    files.atomic_write_text(target, "new ünïcode\n")
    assert target.read_text(encoding="utf-8") == "new ünïcode\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _entries(tmp_path) == ["out.txt"]


def test_new_file_gets_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "fresh.txt"
    old = os.umask(0o027)
    try:
        files.atomic_write_bytes(target, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_write_into_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="cannot write the report: its folder does not") as info:
        files.atomic_write_text(missing / "out.txt", "x", what="report")
    assert info.value.path == str(missing)
    assert info.value.hint is not None


def test_write_onto_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    with pytest.raises(ConfigError, match="the path is a directory") as info:
        files.atomic_write_text(tmp_path / "sub", "x")
    assert info.value.path == str(tmp_path / "sub")


def test_write_into_an_unwritable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def denied(name: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if ".tmp-" in str(name):
            raise PermissionError(errno.EACCES, "Permission denied", str(name))
        return real_open(name, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(ConfigError, match="Permission denied") as info:
        files.atomic_write_text(tmp_path / "out.txt", "x")
    assert info.value.path == str(tmp_path)
    assert _entries(tmp_path) == []


@pytest.mark.parametrize("broken", ["write", "fsync", "replace"])
def test_failed_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("precious")

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, broken, fail)
    with pytest.raises(ConfigError, match="No space left on device") as info:
        files.atomic_write_text(target, "new content")
    monkeypatch.undo()
    assert info.value.path == str(target)
    assert target.read_text() == "precious"
    assert _entries(tmp_path) == ["out.txt"]


def test_keyboard_interrupt_mid_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"precious")
    real_write = os.write
    calls: list[int] = []

    def half_then_interrupt(fd: int, data: Any) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_bytes(target, b"0123456789" * 100)
    monkeypatch.undo()
    assert calls == [1000, 500]  # the interrupt came after half the data was written
    assert target.read_bytes() == b"precious"
    assert _entries(tmp_path) == ["out.bin"]


def test_lone_surrogate_is_a_data_error_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(DataError, match="character 2 is a lone surrogate") as info:
        files.atomic_write_text(target, "ab\udcff", what="decoded text")
    assert info.value.path == str(target)
    assert _entries(tmp_path) == []


def test_errors_pickle_with_their_context(tmp_path: Path) -> None:
    import pickle

    with pytest.raises(ConfigError) as info:
        files.read_json(tmp_path / "x.json", what="JSON file")
    again = pickle.loads(pickle.dumps(info.value))
    assert again.context == info.value.context


def test_temporary_names_are_unique_and_name_the_process(tmp_path: Path) -> None:
    a, b = files.temporary_name(tmp_path / "x.bin"), files.temporary_name(tmp_path / "x.bin")
    assert a != b
    assert a.parent == tmp_path
    assert f"-{os.getpid()}-" in a.name


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    mine = files.temporary_name(tmp_path / "a.bin")
    mine.write_text("live")
    theirs = Path(
        str(files.temporary_name(tmp_path / "b")).replace(f"-{os.getpid()}-", f"-{dead}-")
    )
    theirs.mkdir()
    (theirs / "inside").write_text("x")
    other = tmp_path / ".c.tmp-elsewhere-1-0123abcd"
    other.write_text("another host")
    plain = tmp_path / "keep.txt"
    plain.write_text("user file")
    assert files.remove_stale_temporaries(tmp_path) == [theirs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name, plain.name])


def test_output_may_not_be_an_input(tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("text")
    with pytest.raises(ConfigError, match="would overwrite an input") as info:
        files.check_output_path(source, inputs=[source], what="ids file", key="-o")
    assert info.value.key == "-o"
    link = tmp_path / "link.txt"
    link.symlink_to(source)
    with pytest.raises(ConfigError, match="would overwrite an input"):
        files.check_output_path(link, inputs=[source], what="ids file")


def test_output_kind_and_overwrite(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="must be a folder"):
        files.check_output_path(tmp_path / "file", what="run", kind="folder")
    with pytest.raises(ConfigError, match="must be a file"):
        files.check_output_path(tmp_path, what="tokenizer file")
    with pytest.raises(ConfigError, match="already exists"):
        files.check_output_path(tmp_path / "file", what="model", overwrite=False)
    assert files.check_output_path(tmp_path / "new", what="model", overwrite=False).name == "new"


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device", "ckpt/optimizer.pt"),
        RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
            "writing file data/0: file write failed"
        ),
        PermissionError(errno.EACCES, "Permission denied", "ckpt"),
    ],
)
def test_write_errors_become_one_clear_error(exc: BaseException) -> None:
    from lego.protocols import TrainingError

    with (
        pytest.raises(TrainingError, match="cannot write the checkpoint") as info,
        files.write_errors("ckpt", what="checkpoint", error=TrainingError),
    ):
        raise exc
    assert info.value.hint is not None


def test_write_errors_let_other_errors_through() -> None:
    with pytest.raises(RuntimeError, match="shape mismatch"), files.write_errors("x", what="y"):
        raise RuntimeError("shape mismatch")
    with pytest.raises(FileNotFoundError), files.write_errors("x", what="y"):
        raise FileNotFoundError(errno.ENOENT, "No such file")
