from __future__ import annotations

import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from rich.console import Console

from lego.data.summary import plot, summarize
from lego.protocols import ConfigError, DataError


class CharTokenizer:
    """One id per character of a fixed alphabet."""

    alphabet = "abc \n"

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 1

    @property
    def special_tokens(self) -> Mapping[str, int]:
        return {"<|endoftext|>": len(self.alphabet)}

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


def test_text_figures(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("héllo\nworld\n")
    (tmp_path / "b.txt").write_text("one line, no break")
    (tmp_path / "c.txt").write_text("")
    summary = summarize(tmp_path)
    assert summary.documents == 3
    assert summary.bytes == len("héllo\nworld\n".encode()) + 18
    assert summary.characters == 12 + 18
    assert summary.lines == 3
    assert summary.distinct_characters == len(set("héllo\nworld\none line, no break"))
    assert summary.document_lengths.tolist() == [12, 18, 0]
    assert summary.tokens is None
    assert summary.to_dict()["documents"] == 3


def test_token_figures(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("aaa bb\nc")
    summary = summarize(tmp_path / "a.txt", CharTokenizer(), top_k=2)
    assert summary.tokens is not None
    assert summary.tokens.tokens == 8
    assert summary.tokens.distinct == 5
    assert summary.tokens.bytes_per_token == 1.0
    assert summary.tokens.most_common == [(0, "a", 3), (1, "b", 2)]
    assert summary.tokens.counts.tolist() == [3, 2, 1, 1, 1, 0]
    data = summary.to_dict()
    assert data["tokens"]["most_common"][0] == {"id": 0, "text": "a", "count": 3}


def test_table_renders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc abc\n")
    summary = summarize(tmp_path / "a.txt", CharTokenizer())
    out = io.StringIO()
    Console(file=out, width=120).print(summary.table())
    text = out.getvalue()
    assert "distinct characters" in text
    assert "bytes per token" in text
    assert "#1 token 0 'a'" in text


def test_skipped_files_are_counted(tmp_path: Path) -> None:
    from lego.data.corpora import FileCorpus

    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe")
    summary = summarize(FileCorpus(tmp_path, errors="skip"))
    assert summary.skipped == 1
    assert summary.documents == 1


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        summarize(tmp_path / "a.txt")


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.txt").write_text("abc")
    summary = summarize(tmp_path / "a.txt")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match="matplotlib") as info:
        plot(summary, tmp_path / "out.png")
    assert info.value.hint == 'pip install "lego-data[plot]"'
    assert not (tmp_path / "out.png").exists()


def test_documents_and_special_token_text(tmp_path: Path) -> None:
    from lego.tokenize import RegexBPETokenizer

    tok = RegexBPETokenizer("gpt2", special_tokens={"<|endoftext|>": 256})
    text = "a <|endoftext|> b"
    summary = summarize([text, "c"], tok)  # documents given directly
    assert summary.documents == 2
    assert summary.tokens is not None
    assert summary.tokens.tokens == len(text) + 1  # one id per byte: the text is ordinary
    assert summary.tokens.counts[256] == 0
    with pytest.raises(ConfigError) as info:
        summarize([text], tok, top_k=-1)
    assert info.value.key == "top_k"
