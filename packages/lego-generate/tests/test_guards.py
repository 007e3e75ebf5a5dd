"""Faults caught before (or at) the step that would go wrong, with one clear error.

Ids outside the vocabulary, a logit_bias that bans everything, NaN logits, a tokenizer that
does not fit the model, a chat that outgrows the context (issue 17, items 9, 12 and 16).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from torch import Tensor

from lego.generate import (
    ChatSession,
    ConversationTrimmedWarning,
    GenerationConfig,
    generate,
    stream,
)
from lego.protocols import CompatibilityError, ConfigError, DataError

PROMPT = torch.tensor([[3, 1, 4, 1]])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eos_token_id": 40}, "eos_token_id 40 is outside the model's vocabulary of 40"),
        ({"eos_token_id": [1, 99]}, "eos_token_id 99 is outside"),
        ({"pad_token_id": 40}, "pad_token_id 40 is outside"),
        ({"logit_bias": {45: -1.0}}, "logit_bias 45 is outside"),
        ({"logit_bias": dict.fromkeys(range(40), float("-inf"))}, "bans every one of the 40"),
    ],
)
@pytest.mark.parametrize("beams", [1, 2])
def test_ids_are_checked_against_the_vocabulary_first(
    model: Any, options: dict[str, Any], match: str, beams: int
) -> None:
    model.calls.clear()
    with pytest.raises(ConfigError, match=match):
        generate(model, PROMPT, max_new_tokens=4, num_beams=beams, **options)
    assert model.calls == []  # refused before the model ran


def test_a_bias_of_plus_inf_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\+inf"):
        GenerationConfig(logit_bias={3: float("inf")})


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 0}])
def test_a_processor_that_bans_everything_is_a_clear_error(
    model: Any, sampling: dict[str, Any]
) -> None:
    def ban_all(input_ids: Tensor, scores: Tensor) -> Tensor:
        return torch.full_like(scores, float("-inf"))

    with pytest.raises(ConfigError, match="no token can be chosen at new token 0"):
        generate(model, PROMPT, max_new_tokens=4, logits_processor=[ban_all], **sampling)


@pytest.fixture
def nan_model(kit: Any) -> Any:
    model = kit.TinyLM().eval()
    with torch.no_grad():
        model.head[0, 0] = float("nan")
    return model


@pytest.mark.parametrize(
    "options", [{}, {"temperature": 1.0, "seed": 0}, {"num_beams": 2}, {"top_k": 5}]
)
def test_nan_logits_are_a_data_error_not_garbage(nan_model: Any, options: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="logits hold NaN or inf") as info:
        generate(nan_model, PROMPT, max_new_tokens=4, **options)
    assert "check_finite=True" in str(info.value)


def test_prompt_ids_outside_the_vocabulary_are_refused(model: Any) -> None:
    model.calls.clear()
    with pytest.raises(DataError, match="token id 97, outside the model's vocabulary of 40"):
        generate(model, torch.tensor([[1, 97, 2]]), max_new_tokens=2)
    assert model.calls == []


def test_seeds_up_to_64_bits(model: Any) -> None:
    out = generate(model, PROMPT, max_new_tokens=3, temperature=1.0, seed=2**64 - 1)
    assert out.shape == (1, 7)
    with pytest.raises(ConfigError, match="seed must be at most 18446744073709551615"):
        generate(model, PROMPT, max_new_tokens=3, temperature=1.0, seed=2**64)


class StrictBytes:
    """Bytes plus specials; decoding an id it does not have is an error (as real ones do)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size

    @property
    def vocab_size(self) -> int:
        return self.size

    @property
    def special_tokens(self) -> dict[str, int]:
        return {}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        bad = [i for i in ids if not 0 <= i < self.size]
        if bad:
            raise DataError(f"token id {bad[0]} is not in the vocabulary", key=str(bad[0]))
        return bytes(i % 256 for i in ids).decode("utf-8", errors="replace")


def test_a_tokenizer_larger_than_the_model_is_refused_up_front(model: Any) -> None:
    pieces = stream(model, StrictBytes(), [1, 2, 3], max_new_tokens=4)
    with pytest.raises(CompatibilityError, match="the tokenizer has 256 ids but the model's"):
        next(pieces)


class PrefersUndecodable(torch.nn.Module):
    """A padded vocabulary of 300 whose model prefers the 44 ids a 256-id tokenizer lacks."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    @property
    def config(self) -> Any:
        return self.inner.config

    def forward(self, input_ids: Tensor, /, **kwargs: Any) -> Tensor:
        logits = self.inner(input_ids)  # (B, T, 300)
        return logits + (torch.arange(300) >= 256).float() * 100.0


def test_ids_a_tokenizer_cannot_decode_are_never_generated(kit: Any) -> None:
    model = PrefersUndecodable(kit.TinyLM(kit.TinyConfig(vocab_size=300))).eval()
    free = generate(model, PROMPT, max_new_tokens=6)
    assert (free[0, 4:] >= 256).all()  # so a stream would fail at once without the check
    text = "".join(stream(model, StrictBytes(), PROMPT[0].tolist(), max_new_tokens=6))
    assert text  # every piece decoded


CHAT = {"<|im_start|>": 256, "<|im_end|>": 257}


class ChatBytes(StrictBytes):
    def __init__(self) -> None:
        super().__init__(258)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(CHAT)

    def decode(self, ids: Sequence[int]) -> str:
        inverse = {v: k for k, v in CHAT.items()}
        return "".join(inverse.get(i) or super(ChatBytes, self).decode([i]) for i in ids)


@pytest.fixture
def session(kit: Any) -> ChatSession:
    model = kit.TinyLM(kit.TinyConfig(vocab_size=258, context_length=64)).eval()  # 60 to fill
    return ChatSession(
        model=model,
        tokenizer=ChatBytes(),
        system_prompt="be brief",
        generation_config=GenerationConfig(max_new_tokens=4),
    )


def test_a_chat_that_outgrows_the_context_drops_the_oldest_turns(session: ChatSession) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        session.reply("first message")  # 50 prompt tokens: fits
    with pytest.warns(ConversationTrimmedWarning, match="dropped the oldest 2 messages"):
        session.reply("second message")  # 51 alone, over 80 with the first exchange
    roles = [m["role"] for m in session.messages]
    assert roles == ["system", "user", "assistant"]  # the system prompt always stays
    assert session.messages[1]["content"] == "second message"


def test_a_message_too_long_alone_is_refused_and_the_session_kept(session: ChatSession) -> None:
    session.reply("hi")
    before = list(session.messages)
    with pytest.raises(ConfigError, match="the message does not fit the model's context"):
        session.reply("x" * 100)
    assert session.messages == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversationTrimmedWarning)
        session.reply("hi again")  # still talking
    assert session.messages[-2] == {"role": "user", "content": "hi again"}
