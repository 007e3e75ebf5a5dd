"""Small byte-level BPE vocabularies for the interop tests, made without the trainer."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence

import pytest
import regex

from lego.protocols.testing import DEFAULT_TEXTS
from lego.tokenize.byte_level import bytes_to_unicode
from lego.tokenize.patterns import PATTERNS

CORPUS = "\n".join(DEFAULT_TEXTS) * 3 + (
    "\nThe quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.\n"
    "    indented    code   with   many     spaces\n\n\n"
    "numbers 1234567 and 89 and 1000000, 'quoted' words, DON'T, it's, we'll.\n"
)


def gpt2_byte_order() -> list[int]:
    """The byte values in GPT-2's id order (``!`` first)."""
    table = bytes_to_unicode()
    printable = [b for b in range(256) if table[b] == chr(b)]
    return printable + [b for b in range(256) if table[b] != chr(b)]


def train_ranks(
    text: str,
    n_merges: int,
    *,
    pattern: str = PATTERNS["gpt4"],
    byte_order: Sequence[int] | None = None,
) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """A plain full-recount BPE trainer: ranks (bytes -> id) and the merges it made."""
    ranks = {bytes([b]): i for i, b in enumerate(byte_order or range(256))}
    words: Counter[tuple[bytes, ...]] = Counter(
        tuple(bytes([c]) for c in piece.encode("utf-8")) for piece in regex.findall(pattern, text)
    )
    merges: list[tuple[bytes, bytes]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                if pair[0] + pair[1] not in ranks:
                    pairs[pair] += count
        if not pairs:
            break
        (left, right), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0][0], kv[0][1]))
        ranks[left + right] = len(ranks)
        merges.append((left, right))
        new_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out: list[bytes] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    out.append(left + right)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    return ranks, merges


Trainer = Callable[..., tuple[dict[bytes, int], list[tuple[bytes, bytes]]]]


@pytest.fixture(scope="session")
def bpe_trainer() -> Trainer:
    """The trainer `train_ranks` itself, for tests that train on a corpus of their own."""
    return train_ranks


@pytest.fixture(scope="session")
def trained() -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """Ranks and merges trained on CORPUS (identity byte order, gpt4 pattern)."""
    return train_ranks(CORPUS, 150)


@pytest.fixture(scope="session")
def trained_gpt2_order() -> tuple[dict[bytes, int], list[tuple[bytes, bytes]]]:
    """Ranks and merges trained on CORPUS with GPT-2's byte order and pattern."""
    return train_ranks(CORPUS, 150, pattern=PATTERNS["gpt2"], byte_order=gpt2_byte_order())
