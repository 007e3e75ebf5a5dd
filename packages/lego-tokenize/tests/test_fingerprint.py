from __future__ import annotations

from pathlib import Path

from lego.protocols.testing import DEFAULT_TEXTS
from lego.tokenize import (
    CharTokenizer,
    RegexBPETokenizer,
    WordTokenizer,
    load,
    tokenizer_fingerprint,
)
from lego.tokenize.fingerprint import vocabulary_sha256

EOT = "<|endoftext|>"


def test_a_known_value() -> None:
    # ids 0 and 1, then one special: fixed bytes, so a fixed digest on every machine
    digest = vocabulary_sha256([b"a", b"bc"], {EOT: 2})
    assert digest == vocabulary_sha256([b"a", b"bc"], {EOT: 2})
    assert digest != vocabulary_sha256([b"a", b"bc"], {EOT: 3})
    assert digest != vocabulary_sha256([b"bc", b"a"], {EOT: 2})
    assert len(digest) == 64


def test_same_vocabulary_same_fingerprint(tmp_path: Path) -> None:
    tok = RegexBPETokenizer("gpt4")
    tok.train(list(DEFAULT_TEXTS), 300, special_tokens=[EOT], workers=1)
    tok.save(tmp_path / "tok.json")
    again = RegexBPETokenizer.from_ranks(
        tok.mergeable_ranks, pattern="gpt4", special_tokens=tok.special_tokens
    )
    assert tokenizer_fingerprint(load(tmp_path / "tok.json")) == tokenizer_fingerprint(tok)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    fresh = RegexBPETokenizer("gpt4")
    assert tokenizer_fingerprint(fresh) != tokenizer_fingerprint(tok)


def test_every_lego_tokenizer_has_one_and_others_none() -> None:
    char = CharTokenizer.from_text("hello")
    word = WordTokenizer()
    word.train(list(DEFAULT_TEXTS), 50, workers=1)
    assert tokenizer_fingerprint(char) is not None
    assert tokenizer_fingerprint(word) is not None
    assert tokenizer_fingerprint(char) != tokenizer_fingerprint(word)
    assert tokenizer_fingerprint("gpt2") is None
