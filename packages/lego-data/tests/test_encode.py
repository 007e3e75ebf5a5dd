from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from lego.data.encode import (
    TokenizedExample,
    encode_alpaca,
    encode_chat,
    encode_segments,
    special_token_id,
)
from lego.protocols import IGNORE_INDEX, CompatibilityError, ConfigError, DataError
from lego.protocols.chat import Segment

M = IGNORE_INDEX


def b(text: str) -> list[int]:
    return list(text.encode())


def test_chatml_masking_exact(byte_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    example = encode_chat(messages, byte_tokenizer, template="chatml")
    tokens = [257, *b("user\nHi"), 258, *b("\n"), 257, *b("assistant\n"), *b("Yo"), 258, 10]
    assert example.input_ids == tokens[:-1]
    # Only "Y", "o" and <|im_end|> of the assistant turn are predicted.
    assert example.labels == [M] * 20 + [ord("Y"), ord("o"), 258, M]
    assert example.num_trained == 3


def test_llama3_masking_exact(byte_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": " A "},
    ]
    example = encode_chat(messages, byte_tokenizer, template="llama3")
    head = [259, 260, *b("system"), 261, *b("\n\nS"), 262, 260, *b("user"), 261, *b("\n\nQ"), 262]
    tokens = [*head, 260, *b("assistant"), 261, *b("\n\n"), ord("A"), 262]
    assert example.input_ids == tokens[:-1]
    n = len(tokens) - 1
    assert example.labels == [M] * (n - 2) + [ord("A"), 262]


def test_alpaca_masking(byte_tokenizer: Any) -> None:
    example = encode_alpaca("Do.", "ok", byte_tokenizer)
    prompt_len = len(
        b(
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the request.\n\n### Instruction:\nDo.\n\n### Response:\n"
        )
    )
    assert len(example) == prompt_len + 2  # prompt + "ok" + EOS, minus one for the shift
    assert example.labels[: prompt_len - 1] == [M] * (prompt_len - 1)
    assert example.labels[prompt_len - 1 :] == [ord("o"), ord("k"), 256]


def test_straddling_token_counts_as_trained(make_byte_tokenizer: Callable[..., Any]) -> None:
    tok = make_byte_tokenizer(["\nY"])  # one token spans "assistant\n" | "Yo"
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    example = encode_chat(messages, tok)
    merged = example.input_ids.index(300)
    assert example.labels[merged - 1] == 300  # predicted: it carries the answer's first char
    assert example.labels[merged] == ord("o")
    assert all(label == M for label in example.labels[: merged - 1])


def test_text_chunks_encode_like_the_whole_string(make_byte_tokenizer: Callable[..., Any]) -> None:
    tok = make_byte_tokenizer(["ab", "bc"])
    segments = [Segment("a"), Segment("bc", train=True), Segment("<|endoftext|>", special=True)]
    example = encode_segments(segments, tok)
    assert example.input_ids == tok.encode("abc")  # [300 ('ab'), ord('c')]
    assert example.labels == [ord("c"), M]


def test_missing_special_token(byte_tokenizer: Any) -> None:
    with pytest.raises(CompatibilityError, match="no special token '<\\|nope\\|>'"):
        special_token_id(byte_tokenizer, "<|nope|>")
    with pytest.raises(CompatibilityError, match="Alpaca"):
        encode_alpaca("a", "b", byte_tokenizer, eos_token="<|nope|>")


def test_truncation_and_errors(byte_tokenizer: Any) -> None:
    example = encode_alpaca("Do.", "okay", byte_tokenizer, max_length=5)
    assert len(example) == 5
    assert example.num_trained == 0
    with pytest.raises(DataError, match="at least 2"):
        encode_segments([Segment("x", train=True)], byte_tokenizer)
    with pytest.raises(ConfigError, match="max_length"):
        encode_segments([Segment("xy")], byte_tokenizer, max_length=0)
    with pytest.raises(DataError, match="labels"):
        TokenizedExample([1, 2], [3])


def test_refused_text_becomes_data_error(byte_tokenizer: Any) -> None:
    class Strict(type(byte_tokenizer)):  # type: ignore[misc]
        def encode(self, text: str) -> list[int]:
            if "<|" in text:
                raise ValueError("special token text is not allowed")
            return super().encode(text)

    with pytest.raises(DataError, match="refused"):
        encode_chat([{"role": "user", "content": "<|x|>"}], Strict())
