from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lego.data.corpora import (
    KNOWN_SOURCES,
    FileCorpus,
    PythonStdlibCorpus,
    RemoteCorpus,
    corpus_names,
    default_cache_dir,
    get_corpus,
)
from lego.protocols import DataError


def test_names() -> None:
    assert corpus_names() == [
        "python-stdlib",
        "tiny_shakespeare",
        "tinystories",
        "tinystories_valid",
    ]
    assert isinstance(get_corpus("python-stdlib"), PythonStdlibCorpus)
    assert isinstance(get_corpus("Python_Stdlib"), PythonStdlibCorpus)
    shakespeare = get_corpus("tiny-shakespeare")
    assert isinstance(shakespeare, RemoteCorpus)
    assert shakespeare.name == "tiny_shakespeare"
    assert shakespeare.sha256 == KNOWN_SOURCES["tiny_shakespeare"].sha256


def test_tinystories_has_no_invented_checksum() -> None:
    assert KNOWN_SOURCES["tinystories"].sha256 is None
    assert KNOWN_SOURCES["tinystories"].separator == "<|endoftext|>"


def test_paths_urls_and_corpora(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    assert isinstance(get_corpus(tmp_path / "a.txt"), FileCorpus)
    assert isinstance(get_corpus(str(tmp_path)), FileCorpus)
    remote = get_corpus("https://example.org/data/corpus.txt", cache_dir=tmp_path)
    assert isinstance(remote, RemoteCorpus)
    assert remote.path == tmp_path / "corpus.txt"
    corpus = PythonStdlibCorpus()
    assert get_corpus(corpus) is corpus


def test_unknown_name_suggests() -> None:
    with pytest.raises(DataError) as info:
        get_corpus("tiny_shakespear")
    assert info.value.hint == "did you mean 'tiny_shakespeare'?"
    assert info.value.path is None


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        get_corpus(tmp_path / "missing.txt")
    assert info.value.path == str(tmp_path / "missing.txt")
    assert "python-stdlib" in (info.value.hint or "")


def test_cache_dir_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEGO_DATA_HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home"
    monkeypatch.delenv("LEGO_DATA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lego" / "data"


def test_remote_corpus_downloads_once(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/stories.txt"] = b"one story\n<|endoftext|>\nanother\n"
    corpus = RemoteCorpus(
        file_server.url("/stories.txt"), cache_dir=tmp_path, separator="<|endoftext|>"
    )
    assert list(corpus) == ["one story", "another"]
    assert list(corpus) == ["one story", "another"]
    assert len(file_server.requests) == 1
    assert (tmp_path / "stories.txt").is_file()
    assert corpus.name == file_server.url("/stories.txt")


def test_remote_corpus_skips_are_recorded(file_server: Any, tmp_path: Path) -> None:
    file_server.files["/lines.txt"] = b"ok\nbad \xff\n"
    corpus = RemoteCorpus(
        file_server.url("/lines.txt"), cache_dir=tmp_path, unit="line", errors="skip"
    )
    assert list(corpus) == ["ok"]
    assert [s.line for s in corpus.skipped] == [2]
