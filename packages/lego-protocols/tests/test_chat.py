from __future__ import annotations

import pytest

from lego.protocols import CompatibilityError, ConfigError, DataError
from lego.protocols.chat import (
    ChatMLTemplate,
    Llama3Template,
    Segment,
    check_messages,
    encode_text,
    get_chat_template,
    special_token_id,
)

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "  Bye  "},
    {"role": "assistant", "content": "Bye!"},
]


def test_chatml_rendering() -> None:
    expected = (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\n  Bye  <|im_end|>\n"
        "<|im_start|>assistant\nBye!<|im_end|>\n"
    )
    assert ChatMLTemplate().render(CONVERSATION) == expected
    prompt = ChatMLTemplate().render(CONVERSATION[:2], add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama3_rendering() -> None:
    expected = (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>"  # contents are trimmed
        "<|start_header_id|>assistant<|end_header_id|>\n\nBye!<|eot_id|>"
    )
    assert Llama3Template().render(CONVERSATION) == expected
    prompt = Llama3Template().render(CONVERSATION[1:2], add_generation_prompt=True)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_trained_segments() -> None:
    segments = ChatMLTemplate().segments(CONVERSATION[1:3])
    trained = [s for s in segments if s.train]
    assert trained == [
        Segment("Hello.", train=True),
        Segment("<|im_end|>", special=True, train=True),
    ]
    assert all(s.special for s in segments if s.text.startswith("<|"))
    last_only = Llama3Template().segments(CONVERSATION, train_on="last")
    assert [s.text for s in last_only if s.train] == ["Bye!", "<|eot_id|>"]
    from_index = ChatMLTemplate().segments(CONVERSATION, train_from=3)
    assert [s.text for s in from_index if s.train] == ["Bye!", "<|im_end|>"]


def test_message_text_is_never_special() -> None:
    segments = ChatMLTemplate().segments([{"role": "user", "content": "<|im_end|>"}])
    content = [s for s in segments if s.text == "<|im_end|>"]
    assert [s.special for s in content] == [False, True]


def test_get_chat_template() -> None:
    assert isinstance(get_chat_template("chatml"), ChatMLTemplate)
    assert isinstance(get_chat_template("Llama-3"), Llama3Template)
    template = Llama3Template()
    assert get_chat_template(template) is template
    with pytest.raises(ConfigError, match="did you mean 'chatml'"):
        get_chat_template("chatm")


def test_bad_conversations() -> None:
    with pytest.raises(DataError, match="no messages"):
        check_messages([])
    with pytest.raises(DataError, match="lacks the key 'content'") as err:
        check_messages([{"role": "user"}], where="x.jsonl")
    assert err.value.key == "messages[0].content"
    assert err.value.path == "x.jsonl"
    with pytest.raises(DataError, match="must be a string"):
        check_messages([{"role": "user", "content": 3}])
    with pytest.raises(DataError, match="list of messages"):
        check_messages("hello")
    with pytest.raises(DataError, match="invalid role"):
        check_messages([{"role": "", "content": "x"}])
    with pytest.raises(ConfigError, match="train_on"):
        ChatMLTemplate().segments(CONVERSATION, train_on="all")  # type: ignore[arg-type]


class _ByteTokenizer:
    """Bytes as ids 0..255; special tokens from 256 (a stand-in for any Tokenizer)."""

    def __init__(self, specials: tuple[str, ...]) -> None:
        self.special_tokens = {token: 256 + i for i, token in enumerate(specials)}
        self.calls: list[str] = []

    @property
    def vocab_size(self) -> int:
        return 256 + len(self.special_tokens)

    def encode(self, text: str) -> list[int]:
        self.calls.append(text)
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8")


def test_encode_joins_text_runs_and_looks_specials_up() -> None:
    template = ChatMLTemplate()
    tokenizer = _ByteTokenizer(template.special_tokens)
    messages = [{"role": "user", "content": "Hi <|im_end|>"}]
    ids = template.encode(tokenizer, messages, add_generation_prompt=True)
    start, end = tokenizer.special_tokens["<|im_start|>"], tokenizer.special_tokens["<|im_end|>"]
    # one encode call per run of text between two special tokens
    assert tokenizer.calls == ["user\nHi <|im_end|>", "\n", "assistant\n"]
    assert ids == [
        start,
        *b"user\nHi <|im_end|>",  # text that looks like a special token stays text
        end,
        *b"\n",
        start,
        *b"assistant\n",
    ]


def test_encode_needs_the_template_specials() -> None:
    tokenizer = _ByteTokenizer(("<|im_start|>",))
    with pytest.raises(CompatibilityError, match="<\\|im_end\\|>") as info:
        ChatMLTemplate().encode(tokenizer, [{"role": "user", "content": "x"}])
    assert "chatml template" in str(info.value)


def test_encode_text_wraps_refusals() -> None:
    class Refusing(_ByteTokenizer):
        def encode(self, text: str) -> list[int]:
            raise ValueError("special token text")

    assert encode_text(Refusing(()), "") == []
    with pytest.raises(DataError, match="refused"):
        encode_text(Refusing(()), "<|endoftext|>")


def test_special_token_id() -> None:
    tokenizer = _ByteTokenizer(("<|eot_id|>",))
    assert special_token_id(tokenizer, "<|eot_id|>") == 256
    with pytest.raises(CompatibilityError, match="<\\|eot_id\\|>"):
        special_token_id(_ByteTokenizer(()), "<|eot_id|>", needed_by="generation")
