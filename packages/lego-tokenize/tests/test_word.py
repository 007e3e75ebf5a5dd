from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lego.protocols.testing import TokenizerContract
from lego.tokenize import WordTokenizer

TEXT = "the cat sat on the mat. the dog sat too!\n"


class TestWordContract(TokenizerContract):
    round_trip_texts = ("the cat sat on the mat.", "the dog sat too!\n", "")
    any_texts = ("the cat", "unknown words here", "")

    def make_tokenizer(self) -> WordTokenizer:
        tok = WordTokenizer()
        tok.train(TEXT, 100, workers=1)
        return tok


def test_unknown_words_become_unk() -> None:
    tok = WordTokenizer()
    tok.train(TEXT, 100)
    assert tok.decode(tok.encode("the bird sat")) == "the <unk> sat"
    assert tok.encode("<|endoftext|>", allowed_special="all") == [
        tok.special_tokens["<|endoftext|>"]
    ]


def test_min_frequency_and_max_size() -> None:
    tok = WordTokenizer(min_frequency=2)
    tok.train(TEXT, 100)
    assert "cat" not in tok.vocabulary.tokens
    assert "the" in tok.vocabulary.tokens
    small = WordTokenizer()
    small.train(TEXT, 5)
    assert small.vocab_size == 5
    assert small.vocabulary.tokens[0] == " "  # the most frequent piece


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["the", "cat", "mat", "sat", "dog"]),
            st.sampled_from([" ", "\n", ". ", "!\n", "."]),
        )
    )
)
def test_round_trip_over_vocabulary(pairs: list[tuple[str, str]]) -> None:
    tok = WordTokenizer()
    tok.train(TEXT, 100)
    text = "".join(word + sep for word, sep in pairs)
    assert tok.decode(tok.encode(text)) == text
