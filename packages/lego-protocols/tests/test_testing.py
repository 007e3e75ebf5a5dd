"""The tokenizer conformance suite passes a correct tokenizer and catches broken ones."""

from collections.abc import Mapping, Sequence
from typing import ClassVar

import pytest

from lego.protocols import SpecialTokens, Tokenizer
from lego.protocols.testing import DEFAULT_TEXTS, TokenizerContract


class ByteTokenizer:
    """UTF-8 bytes as ids, plus one special token after them."""

    def __init__(self) -> None:
        self.special_tokens: Mapping[str, int] = SpecialTokens({"<|endoftext|>": 256})

    @property
    def vocab_size(self) -> int:
        return 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class TestByteTokenizer(TokenizerContract):
    def make_tokenizer(self) -> Tokenizer:
        return ByteTokenizer()


class AsciiOnly(ByteTokenizer):
    """Lossy outside ASCII, but honest about it."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("ascii", errors="replace"))


class TestLossyTokenizerWithOwnTexts(TokenizerContract):
    round_trip_texts: ClassVar[tuple[str, ...]] = ("hello", "a b c")

    def make_tokenizer(self) -> Tokenizer:
        return AsciiOnly()


class OffByOne(ByteTokenizer):
    def encode(self, text: str) -> list[int]:
        return [i + 1 for i in super().encode(text)]


class BadSpecials(ByteTokenizer):
    def __init__(self) -> None:
        self.special_tokens = {"<|endoftext|>": 999}


class Suite(TokenizerContract):
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def make_tokenizer(self) -> Tokenizer:
        return self.tokenizer


def test_contract_catches_a_broken_round_trip() -> None:
    with pytest.raises(AssertionError, match="round trip changed"):
        Suite(OffByOne()).test_round_trip()


def test_contract_catches_out_of_range_specials() -> None:
    with pytest.raises(AssertionError):
        Suite(BadSpecials()).test_special_tokens_fit_vocab()


def test_contract_catches_non_conforming_objects() -> None:
    with pytest.raises(AssertionError):
        Suite(object()).test_satisfies_protocol()  # type: ignore[arg-type]


def test_default_texts_cover_many_scripts() -> None:
    joined = "".join(DEFAULT_TEXTS)
    assert any(ord(c) > 0xFFFF for c in joined)  # astral-plane emoji
    assert "\r\n" in joined
    assert len(DEFAULT_TEXTS) >= 8
