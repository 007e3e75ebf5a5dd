from __future__ import annotations

import json
from pathlib import Path

import pytest

from lego.data.corpora import FileCorpus, Skipped
from lego.protocols import ConfigError, DataError


def test_text_file_is_one_document(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("line one\nline two\n", encoding="utf-8")
    corpus = FileCorpus(tmp_path / "a.txt")
    assert list(corpus) == ["line one\nline two\n"]
    assert list(corpus) == ["line one\nline two\n"]  # re-iterable
    assert corpus.name == str(tmp_path / "a.txt")


def test_folder_reads_matching_files_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "b" / "10.txt").write_text("ten")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "skip.md").write_text("markdown is not read")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.txt").write_text("hidden")
    (tmp_path / "c.jsonl").write_text('{"text": "json doc"}\n')
    corpus = FileCorpus(tmp_path, name="mine")
    assert list(corpus) == ["a", "ten", "two", "json doc"]
    assert corpus.name == "mine"
    assert [p.name for p in corpus.files] == ["a.txt", "10.txt", "2.txt", "c.jsonl"]
    assert list(FileCorpus(tmp_path, extensions=["md"])) == ["markdown is not read"]


def test_several_paths_keep_their_order(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "y.txt").write_text("y")
    assert list(FileCorpus([tmp_path / "y.txt", tmp_path / "x.txt"])) == ["y", "x"]


def test_line_unit(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"first\r\n\n  \nsecond\nthird")
    assert list(FileCorpus(tmp_path / "a.txt", unit="line")) == ["first", "second", "third"]


def test_paragraph_unit(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("p1 l1\np1 l2\n\n\np2\n  \np3 l1\np3 l2")
    docs = list(FileCorpus(tmp_path / "a.txt", unit="paragraph"))
    assert docs == ["p1 l1\np1 l2", "p2", "p3 l1\np3 l2"]


def test_separator_lines(tmp_path: Path) -> None:
    text = "Once upon a time.\nThe end.\n<|endoftext|>\nAnother story.\n <|endoftext|> \n\n"
    (tmp_path / "stories.txt").write_text(text)
    docs = list(FileCorpus(tmp_path / "stories.txt", separator="<|endoftext|>", unit="line"))
    assert docs == ["Once upon a time.\nThe end.", "Another story."]


def test_jsonl_text_field(tmp_path: Path) -> None:
    lines = [json.dumps({"text": "one", "id": 1}), "", json.dumps({"body": "two", "text": "2"})]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    assert list(FileCorpus(tmp_path / "d.jsonl")) == ["one", "2"]
    (tmp_path / "e.jsonl").write_text(json.dumps({"body": "two"}) + "\n")
    assert list(FileCorpus(tmp_path / "e.jsonl", text_field="body")) == ["two"]


def test_jsonl_corrupt_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n')
    with pytest.raises(DataError) as info:
        list(FileCorpus(path))
    assert info.value.path == str(path)
    assert info.value.line == 3
    assert "line 3 is not valid JSON" in info.value.message


@pytest.mark.parametrize(
    ("line", "message", "key"),
    [
        ('["a list"]', "not an object", None),
        ('{"body": "x"}', "no field 'text'", "text"),
        ('{"text": 5}', "not a string", "text"),
    ],
)
def test_jsonl_bad_records(tmp_path: Path, line: str, message: str, key: str | None) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError, match=message) as info:
        list(FileCorpus(path))
    assert info.value.line == 2
    assert info.value.key == key


def test_non_utf8_file_reports_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 au lait".encode("utf-8") + b" and cr\xe8me")
    with pytest.raises(DataError) as info:
        list(FileCorpus(path))
    assert info.value.path == str(path)
    assert info.value.column == len("café au lait".encode()) + len(" and cr")
    assert "errors='skip'" in (info.value.hint or "")


def test_non_utf8_line_reports_line_and_absolute_offset(tmp_path: Path) -> None:
    path = tmp_path / "lines.txt"
    path.write_bytes(b"good\nalso good\nbad \xff here\n")
    with pytest.raises(DataError) as info:
        list(FileCorpus(path, unit="line"))
    assert info.value.line == 3
    offset = len(b"good\nalso good\nbad ")
    assert f"offset {offset}" in (info.value.hint or "")


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "blob.txt"
    path.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00")
    with pytest.raises(DataError, match="binary") as info:
        list(FileCorpus(path))
    assert info.value.column == 3


def test_skip_mode_skips_and_records(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("good")
    (tmp_path / "b.txt").write_bytes(b"bad \xc3\x28")
    (tmp_path / "c.txt").write_bytes(b"\x00\x01binary")
    (tmp_path / "d.txt").write_text("also good")
    corpus = FileCorpus(tmp_path, errors="skip")
    assert list(corpus) == ["good", "also good"]
    assert corpus.skipped == [
        Skipped(str(tmp_path / "b.txt"), "not UTF-8 (invalid continuation byte)", offset=4),
        Skipped(str(tmp_path / "c.txt"), "binary (NUL byte)", offset=0),
    ]
    list(corpus)
    assert len(corpus.skipped) == 2  # reset on every iteration


def test_skip_mode_per_line_and_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\ntw\xffo\nthree\n\npara \xff\nstill para\n\nlast\n")
    lines = FileCorpus(path, unit="line", errors="skip")
    assert list(lines) == ["one", "three", "still para", "last"]
    assert [s.line for s in lines.skipped] == [2, 5]
    paragraphs = FileCorpus(path, unit="paragraph", errors="skip")
    assert list(paragraphs) == ["last"]
    assert [s.line for s in paragraphs.skipped] == [2, 5]


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        list(FileCorpus(tmp_path / "empty.txt"))
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(DataError, match="no documents"):
        list(FileCorpus(tmp_path / "blank.txt", unit="line"))


def test_empty_after_skipping_says_so(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"\xff")
    with pytest.raises(DataError, match="1 file"):
        list(FileCorpus(tmp_path / "b.txt", errors="skip"))


def test_missing_paths_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file") as info:
        FileCorpus(tmp_path / "nope.txt")
    assert info.value.path == str(tmp_path / "nope.txt")
    (tmp_path / "only.md").write_text("x")
    with pytest.raises(DataError, match="holds no file"):
        FileCorpus(tmp_path)
    with pytest.raises(DataError):
        FileCorpus([])


def test_bad_options(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(ConfigError):
        FileCorpus(tmp_path / "a.txt", unit="sentence")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FileCorpus(tmp_path / "a.txt", errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FileCorpus(tmp_path / "a.txt", separator="  ")
