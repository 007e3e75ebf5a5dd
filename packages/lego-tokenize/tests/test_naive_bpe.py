from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lego.protocols import TrainableTokenizer
from lego.protocols.testing import DEFAULT_TEXTS, TokenizerContract
from lego.tokenize import NaiveBPETokenizer


class TestNaiveBPEContract(TokenizerContract):
    def make_tokenizer(self) -> NaiveBPETokenizer:
        tok = NaiveBPETokenizer()
        tok.train(list(DEFAULT_TEXTS), 300, special_tokens=["<|endoftext|>"], workers=1)
        return tok


def test_worked_example() -> None:
    tok = NaiveBPETokenizer()
    tok.train("aaabdaaabac", 256 + 3)
    assert tok.merges == [(97, 97), (256, 97), (257, 98)]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"
    assert isinstance(tok, TrainableTokenizer)


def test_merges_cross_word_borders() -> None:
    tok = NaiveBPETokenizer()
    tok.train("a b a b a b", 258)
    assert tok.decode_single_token_bytes(257) in (b"a b", b" a b", b"a b ", b"b a")


def test_documents_are_counted_whole_across_workers(corpus: list[str]) -> None:
    merges = []
    for workers, chunk_size in [(1, 1 << 20), (2, 500), (3, 5000)]:
        tok = NaiveBPETokenizer()
        tok.train(corpus[:12], 330, workers=workers, chunk_size=chunk_size)
        merges.append(tok.merges)
    assert merges[0] == merges[1] == merges[2]


@settings(max_examples=60, deadline=None)
@given(text=st.text())
def test_round_trip_any_unicode(text: str) -> None:
    tok = _trained()
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_long_text_uses_the_heap_path() -> None:
    tok = _trained()
    text = "the quick brown fox " * 40
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2


_CACHE: list[NaiveBPETokenizer] = []


def _trained() -> NaiveBPETokenizer:
    if not _CACHE:
        tok = NaiveBPETokenizer()
        tok.train(["the quick brown fox jumps over the lazy dog. " * 5, *DEFAULT_TEXTS], 320)
        _CACHE.append(tok)
    return _CACHE[0]
