"""The incremental merge loop equals a full-recount reference trainer."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from lego.tokenize.patterns import GPT4_PATTERN
from lego.tokenize.training import learn_merges


def reference_merges(
    words: dict[bytes, int], n_merges: int
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Recount every pair after every merge; same tie-break and same reuse rule."""
    vocab = [bytes([i]) for i in range(256)]
    token_id = {token: i for i, token in enumerate(vocab)}
    seqs = {word: list(word) for word in words}
    merges: list[tuple[int, int]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[int, int]] = Counter()
        for word, seq in seqs.items():
            for pair in pairwise(seq):
                pairs[pair] += words[word]
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], vocab[p[0]] + vocab[p[1]], vocab[p[0]]))
        merged = vocab[a] + vocab[b]
        z = token_id.get(merged)
        if z is None:
            z = len(vocab)
            vocab.append(merged)
            token_id[merged] = z
            merges.append((a, b))
        for word, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == a and seq[i + 1] == b:
                    out.append(z)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[word] = out
    return vocab, merges


def word_counts(texts: list[str]) -> dict[bytes, int]:
    counts: Counter[bytes] = Counter()
    for text in texts:
        counts.update(piece.encode() for piece in regex.findall(GPT4_PATTERN, text))
    return dict(counts)


def test_equals_reference_on_corpus(small_corpus: list[str]) -> None:
    words = word_counts(small_corpus)
    result = learn_merges(words, 150)
    vocab, merges = reference_merges(words, 150)
    assert result.merges == merges
    assert result.vocab == vocab


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="aab c", min_size=1, max_size=12).map(str.encode),
        st.integers(1, 5),
        max_size=8,
    ),
    st.integers(0, 40),
)
def test_equals_reference_on_random_words(words: dict[bytes, int], n: int) -> None:
    result = learn_merges(words, n)
    vocab, merges = reference_merges(words, n)
    assert result.merges == merges
    assert result.vocab == vocab


def test_reuses_existing_tokens() -> None:
    # "ab" then "abc" via (ab, c); later "bc" and then (a, bc) = "abc" again: no new id.
    words = {b"abc": 5, b"bcx": 4, b"xbc": 4, b"abq": 1, b"a": 3}
    result = learn_merges(words, 10)
    assert len(set(result.vocab)) == len(result.vocab)
    for i, (a, b) in enumerate(result.merges):
        assert result.vocab[256 + i] == result.vocab[a] + result.vocab[b]
        assert a < 256 + i
        assert b < 256 + i


def test_stops_when_no_pair_is_left() -> None:
    result = learn_merges({b"ab": 1}, 10)
    assert result.merges == [(97, 98)]
    assert learn_merges({b"a": 10}, 10).merges == []


def test_progress_callback() -> None:
    seen: list[int] = []
    learn_merges({bytes(range(100)): 1}, 70, on_merge=seen.append)
    assert seen == [64, 70] or seen[-1] == 70


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.text(alphabet="aab", min_size=50, max_size=300).map(str.encode), max_size=3),
    st.integers(0, 30),
)
def test_equals_reference_on_long_repetitive_words(words: list[bytes], n: int) -> None:
    counts = {word: i + 1 for i, word in enumerate(words)}
    result = learn_merges(counts, n)
    vocab, merges = reference_merges(counts, n)
    assert result.merges == merges
    assert result.vocab == vocab
