"""Streaming text: whole UTF-8 characters only; stop strings; chat."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lego.generate import (
    ChatSession,
    GenerationConfig,
    StopStrings,
    TextStreamDecoder,
    chat_prompt_ids,
    generate,
    stream,
)
from lego.protocols import CompatibilityError, ConfigError


@given(st.text(max_size=30))
def test_stream_decoder_never_splits_characters(kit: Any, text: str) -> None:
    for tokenizer in (kit.ByteTokenizer(), kit.BytesTokenizer()):
        decoder = TextStreamDecoder(tokenizer)
        pieces = [decoder.push(b) for b in text.encode("utf-8")] + [decoder.flush()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in piece for piece in pieces)


def test_stream_decoder_skips_ids(kit: Any) -> None:
    decoder = TextStreamDecoder(kit.ByteTokenizer(), skip_ids=[0])
    assert decoder.push(0) == ""
    assert decoder.push(ord("a")) == "a"


@pytest.fixture
def byte_model(kit: Any) -> Any:
    """A tiny model whose vocabulary is the byte tokenizer's (a stream compares them)."""
    return kit.TinyLM(kit.TinyConfig(vocab_size=256)).eval()


def test_stream_reassembles_generate(byte_model: Any, kit: Any) -> None:
    model = byte_model
    tokenizer = kit.ByteTokenizer()
    prompt = [3, 1, 4, 1]
    full = generate(model, torch.tensor([prompt]), max_new_tokens=15)
    text = "".join(stream(model, tokenizer, prompt, max_new_tokens=15))
    assert text == tokenizer.decode(full[0, 4:].tolist())


def test_stream_stops_before_a_stop_string(byte_model: Any, kit: Any) -> None:
    model = byte_model
    tokenizer = kit.ByteTokenizer()
    full = tokenizer.decode(
        generate(model, torch.tensor([[3, 1, 4, 1]]), max_new_tokens=15)[0, 4:].tolist()
    )
    stop = full[5:7]
    text = "".join(stream(model, tokenizer, [3, 1, 4, 1], max_new_tokens=15, stop_strings=[stop]))
    assert text == full[: full.index(stop)]


def test_stop_strings_finish_generate(model: Any, kit: Any) -> None:
    tokenizer = kit.ByteTokenizer()
    ids = torch.tensor([[3, 1, 4, 1]])
    free = generate(model, ids, max_new_tokens=15)
    stop = tokenizer.decode(free[0, 8:10].tolist())
    out = generate(model, ids, max_new_tokens=15, stop_strings=stop, tokenizer=tokenizer)
    assert stop in tokenizer.decode(out[0, 4:].tolist())
    assert out.shape[1] <= 10


def test_stop_strings_helper(kit: Any) -> None:
    stops = StopStrings(tokenizer=kit.ByteTokenizer(), stop_strings=["ab"])
    assert stops.hit(list(b"xxab"))
    assert not stops.hit(list(b"xxa"))
    assert stops.cut("12ab34") == "12"
    with pytest.raises(ConfigError):
        StopStrings(tokenizer=kit.ByteTokenizer(), stop_strings=[""])


def test_stream_refuses_beams_and_batches(model: Any, kit: Any) -> None:
    with pytest.raises(ConfigError, match="beam"):
        list(stream(model, kit.ByteTokenizer(), [1, 2], num_beams=2))
    with pytest.raises(ConfigError, match="one sequence"):
        list(stream(model, kit.ByteTokenizer(), torch.ones(2, 2, dtype=torch.long)))


CHAT = {"<|im_start|>": 256, "<|im_end|>": 257}


def test_chat_prompt_ids_renders_chatml(kit: Any) -> None:
    tokenizer = kit.ByteTokenizer(CHAT)
    ids = chat_prompt_ids(tokenizer, [{"role": "user", "content": "hi"}])
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_session_keeps_the_conversation(kit: Any) -> None:
    model = kit.TinyLM(kit.TinyConfig(vocab_size=258, context_length=128)).eval()
    session = ChatSession(
        model=model,
        tokenizer=kit.ByteTokenizer(CHAT),
        system_prompt="be brief",
        generation_config=GenerationConfig(max_new_tokens=4),
    )
    assert session.config.eos_ids == (257,)
    reply = session.reply("hi")
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    assert session.messages[-1]["content"] == reply
    session.reset()
    assert [m["role"] for m in session.messages] == ["system"]


def test_chat_session_needs_the_template_tokens(model: Any, kit: Any) -> None:
    with pytest.raises(CompatibilityError, match="<\\|im_end\\|>"):
        ChatSession(model=model, tokenizer=kit.ByteTokenizer())
