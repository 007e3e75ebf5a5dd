from __future__ import annotations

from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.protocols import ConfigError, FormatError
from lego.tokenize.patterns import PATTERNS
from lego.tokenize.training.sources import iter_chunks, iter_documents


def test_a_string_is_text_never_a_path(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("content", encoding="utf-8")
    chunks = list(iter_chunks(str(path)))
    assert chunks == [[str(path)]]
    assert list(iter_chunks(path)) == [["content"]]
    assert list(iter_chunks(["a", path, "b"], chunk_size=1000)) == [["a", "content", "b"]]


def test_bad_data_types() -> None:
    with pytest.raises(ConfigError, match="not bytes"):
        list(iter_chunks(b"abc"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="items must be str"):
        list(iter_chunks(["a", 3]))  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="got int"):
        list(iter_chunks(3))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="chunk_size"):
        list(iter_chunks("a", chunk_size=0))
    with pytest.raises(ConfigError, match="errors"):
        list(iter_documents("a", errors="ignore"))  # type: ignore[arg-type]


def test_non_utf8_file_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"line one\nline two caf\xe9\n")
    with pytest.raises(FormatError, match="byte offset 21") as info:
        list(iter_chunks(path))
    assert info.value.path == str(path)
    assert info.value.line == 2
    assert "errors='replace'" in (info.value.hint or "")
    assert list(iter_chunks(path, errors="replace")) == [["line one\nline two caf\ufffd\n"]]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 64])
def test_offset_is_exact_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    from lego.tokenize.training import sources

    monkeypatch.setattr(sources, "_BLOCK_BYTES", block)
    data = "é日本\n".encode() * 3 + b"ok" + b"\xe6\x97" + b"x\n"
    path = tmp_path / "f.txt"
    path.write_bytes(data)
    with pytest.raises(FormatError) as info:
        list(iter_chunks(path))
    assert f"byte offset {data.index(bytes([0xE6, 0x97, 0x78]))}" in info.value.message
    assert info.value.line == 4
    good = tmp_path / "g.txt"
    good.write_bytes("é日本\n".encode() * 5)
    assert "".join(p for c in iter_chunks(good) for p in c) == "é日本\n" * 5


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="training file not found") as info:
        list(iter_chunks(tmp_path / "nope.txt"))
    assert info.value.path == str(tmp_path / "nope.txt")


def test_long_document_is_cut_at_safe_points() -> None:
    text = "".join(f"line {i} has words\n" for i in range(500))
    chunks = list(iter_chunks(text, chunk_size=1000))
    assert len(chunks) > 5
    pieces = [piece for chunk in chunks for piece in chunk]
    assert "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1])


def test_documents_stay_whole_when_asked() -> None:
    docs = ["x" * 3000, "y" * 10]
    chunks = list(iter_chunks(docs, chunk_size=100, split_documents=False))
    assert [piece for chunk in chunks for piece in chunk] == docs


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["word", " ", "  ", "\n", "\n\n", "\r\n", "\t", "x", "42", "!!", ".", "é", "'s", " 7"]
        ),
        max_size=80,
    ),
    st.integers(1, 40),
)
def test_cuts_never_change_pretokens(parts: list[str], chunk_size: int) -> None:
    text = "".join(parts)
    pieces = [piece for chunk in iter_chunks(text, chunk_size=chunk_size) for piece in chunk]
    assert "".join(pieces) == text
    for pattern in PATTERNS.values():
        whole = regex.findall(pattern, text)
        cut = [token for piece in pieces for token in regex.findall(pattern, piece)]
        assert cut == whole
