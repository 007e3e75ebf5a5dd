from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lego.protocols import ConfigError, DataError, TrainableTokenizer
from lego.protocols.testing import DEFAULT_TEXTS, TokenizerContract
from lego.tokenize import CharTokenizer, Vocabulary

ALPHABET = "".join(DEFAULT_TEXTS)


class TestCharContract(TokenizerContract):
    def make_tokenizer(self) -> CharTokenizer:
        tok = CharTokenizer()
        tok.train(list(DEFAULT_TEXTS), 1000, workers=1)
        return tok


def test_from_text_orders_characters() -> None:
    tok = CharTokenizer.from_text("hello world")
    assert tok.vocabulary.tokens == (" ", "d", "e", "h", "l", "o", "r", "w")
    assert tok.encode("hello") == [3, 2, 4, 4, 5]
    assert tok.encode("z") == [tok.special_tokens["<unk>"]]
    assert tok.vocab_size == 10
    assert isinstance(tok, TrainableTokenizer)


@given(st.text(alphabet=sorted(set(ALPHABET))))
def test_round_trip_over_alphabet(text: str) -> None:
    tok = CharTokenizer.from_text(ALPHABET)
    assert tok.decode(tok.encode(text)) == text


def test_train_keeps_most_frequent() -> None:
    tok = CharTokenizer()
    tok.train("aaaabbbc", 4)
    assert tok.vocabulary.tokens == ("a", "b")
    assert tok.decode(tok.encode("abc")) == "ab<unk>"


def test_without_unk_unknown_is_an_error() -> None:
    tok = CharTokenizer(vocabulary=Vocabulary(tokens=["a"], special_tokens={}, unk_token=None))
    with pytest.raises(DataError, match="'b' is not in the vocabulary"):
        tok.encode("ab")


def test_tokens_must_be_single_characters() -> None:
    with pytest.raises(ConfigError, match="single characters"):
        CharTokenizer(vocabulary=Vocabulary(tokens=["ab"], special_tokens={}, unk_token=None))


def test_decode_unknown_id() -> None:
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(DataError, match="token id 7"):
        tok.decode([7])
    with pytest.raises(DataError, match="token id -1"):
        tok.decode([-1])
