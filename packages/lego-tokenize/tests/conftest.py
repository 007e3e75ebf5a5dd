"""Shared fixtures of lego-tokenize's unit tests: small deterministic corpora."""

from __future__ import annotations

import random

import pytest

from lego.protocols.testing import DEFAULT_TEXTS

_SYLLABLES = ["the", "an", "qu", "ick", "br", "own", "fox", "jum", "ps", "ov", "er", "la", "zy"]
_SYLLABLES += [
    "dog",
    "é",
    "ß",
    "ñ",
    "日本",
    "語",
    "\u0440\u0443",
    "\u0441\u0441",
    "\u043a\u0438\u0439",
    "42",
    "7",
    "'s",
    "'ll",
]
_PUNCT = [",", ".", "!", "?", ";", ":", " -", "(", ")", "\n", "\n\n", "  ", "\t"]


def make_corpus(n_docs: int, words_per_doc: int, *, seed: int = 0) -> list[str]:
    """Pseudo-text with repeated words, several scripts, digits, punctuation and newlines."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(200)]
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(words_per_doc):
            word = vocab[min(int(rng.paretovariate(1.2)) - 1, len(vocab) - 1)]
            if rng.random() < 0.1:
                word = word.capitalize()
            parts.append(word)
            parts.append(rng.choice(_PUNCT) if rng.random() < 0.2 else " ")
        docs.append("".join(parts))
    return docs


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """About 60 kB of pseudo-text in 40 documents, plus the contract's mixed-script texts."""
    return [*make_corpus(40, 250), *DEFAULT_TEXTS]


@pytest.fixture(scope="session")
def small_corpus() -> list[str]:
    """About 8 kB of pseudo-text in 10 documents."""
    return make_corpus(10, 120, seed=1)


@pytest.fixture(scope="session")
def corpus_tokenizer(corpus: list[str]) -> object:
    """A gpt4-pattern regex BPE trained on ``corpus`` to 600 tokens (session-wide)."""
    from lego.tokenize import RegexBPETokenizer

    tokenizer = RegexBPETokenizer("gpt4")
    tokenizer.train(corpus, 600, workers=1)
    return tokenizer
