from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import regex

from lego.protocols import ConfigError, FormatError
from lego.tokenize.patterns import GPT4_PATTERN
from lego.tokenize.training import count_pretokens, resolve_workers


def test_counts_equal_a_plain_findall(corpus: list[str]) -> None:
    expected = Counter(t for doc in corpus for t in regex.findall(GPT4_PATTERN, doc))
    for workers, chunk_size in [(1, 1 << 20), (2, 3000), (3, 1000)]:
        assert (
            count_pretokens(corpus, pattern=GPT4_PATTERN, workers=workers, chunk_size=chunk_size)
            == expected
        )


def test_specials_are_not_counted() -> None:
    counts = count_pretokens("a<|eot|>b", pattern=GPT4_PATTERN, special_tokens=["<|eot|>"])
    assert counts == Counter({"a": 1, "b": 1})


def test_whole_documents_without_pattern() -> None:
    assert count_pretokens(["ab ab", "ab ab", "c"], pattern=None) == Counter({"ab ab": 2, "c": 1})


def test_worker_errors_reach_the_caller(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n" * 2000 + b"\xff")
    docs: list[str | Path] = ["x" * 5000, "y" * 5000, bad]
    with pytest.raises(FormatError, match="byte offset 6000") as info:
        count_pretokens(docs, pattern=GPT4_PATTERN, workers=2, chunk_size=1000)
    assert info.value.path == str(bad)


def test_progress_sees_every_character(corpus: list[str]) -> None:
    seen: list[int] = []
    count_pretokens(corpus, pattern=GPT4_PATTERN, workers=2, chunk_size=5000, on_chunk=seen.append)
    assert sum(seen) == sum(map(len, corpus))


def test_resolve_workers() -> None:
    assert resolve_workers(None) >= 1
    assert resolve_workers(3) == 3
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="workers"):
            resolve_workers(bad)  # type: ignore[arg-type]


def test_spawned_workers_count_the_same(monkeypatch: pytest.MonkeyPatch, corpus: list[str]) -> None:
    from lego.tokenize.training import counting

    # With other threads running, fork is unsafe and the counter spawns its workers.
    monkeypatch.setattr(counting.threading, "active_count", lambda: 2)
    assert counting._context().get_start_method() == "spawn"
    expected = count_pretokens(corpus[:6], pattern=GPT4_PATTERN, workers=1)
    assert count_pretokens(corpus[:6], pattern=GPT4_PATTERN, workers=2, chunk_size=2000) == expected
