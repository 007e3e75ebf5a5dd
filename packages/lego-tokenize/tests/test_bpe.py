"""The pure-Python encoder gives tiktoken's ids."""

from __future__ import annotations

import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.tokenize import RegexBPETokenizer
from lego.tokenize.bpe import (
    PythonEncoder,
    _parts_heap,
    bpe_merge,
    bpe_parts,
    fix_surrogates,
    utf8_bytes,
)
from lego.tokenize.patterns import PATTERNS

RANKS = {bytes([b]): b for b in range(256)}
for i, token in enumerate([b"ab", b"abc", b"bc", b"aa", b"aaa", b"cab", b"abcab"]):
    RANKS[token] = 256 + i


def test_lowest_rank_merges_first() -> None:
    # "abc": "ab" (256) merges before "bc" (258), then "abc" (257).
    assert bpe_merge(b"abc", RANKS) == [257]
    assert bpe_parts(b"abcabc", RANKS) == [b"abc", b"abc"]
    assert bpe_merge(b"aaaa", RANKS) == [259, 259]  # leftmost first on ties
    assert bpe_parts(b"xyz", RANKS) == [b"x", b"y", b"z"]
    assert bpe_parts(b"abc", RANKS, max_rank=257) == [b"ab", b"c"]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcx", min_size=1, max_size=200))
def test_heap_equals_list_scan(text: str) -> None:
    piece = text.encode()
    short = [piece[i : i + 1] for i in range(len(piece))]
    # the list scan, written out for any length
    parts = short
    while len(parts) > 1:
        candidates = [
            (RANKS[parts[i] + parts[i + 1]], i)
            for i in range(len(parts) - 1)
            if parts[i] + parts[i + 1] in RANKS
        ]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    assert _parts_heap(piece, RANKS, None) == parts
    assert bpe_parts(piece, RANKS) == parts


def test_surrogates_become_replacement_character() -> None:
    assert fix_surrogates("a\ud800b") == "a\ufffdb"
    assert utf8_bytes("a\ud800") == "a\ufffd".encode()
    assert fix_surrogates("plain") == "plain"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_python_encoder_equals_tiktoken(corpus_tokenizer: RegexBPETokenizer, text: str) -> None:
    for name, pattern in PATTERNS.items():
        ranks = dict(corpus_tokenizer.mergeable_ranks)
        encoder = PythonEncoder(ranks=ranks, pattern=pattern, cache_size=8)
        reference = tiktoken.Encoding(
            name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
        )
        assert encoder.encode_ordinary(text) == reference.encode_ordinary(text), name
