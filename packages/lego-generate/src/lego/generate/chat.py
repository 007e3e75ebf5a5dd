"""Multi-turn chat on a model: a conversation rendered by a chat template, replies streamed.

[`ChatSession`][lego.generate.ChatSession] keeps the message list, renders it with a
[`ChatTemplate`][lego.protocols.chat.ChatTemplate] (ChatML, Llama 3) and the generation
prompt, streams the assistant's reply with [`stream()`][lego.generate.stream], stops on the
template's end-of-turn token, and appends the reply to the conversation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lego.generate.config import GenerationConfig
from lego.generate.streaming import stream
from lego.protocols import CausalLM, Tokenizer
from lego.protocols.chat import ChatTemplate, Message, get_chat_template, special_token_id

__all__ = ["ChatSession", "chat_prompt_ids"]


def chat_prompt_ids(
    tokenizer: Tokenizer, messages: list[Message], template: str | ChatTemplate = "chatml"
) -> list[int]:
    """Render a conversation plus the assistant header and encode it.

    Args:
        tokenizer: A tokenizer that registers the template's special tokens.
        messages: ``{"role", "content"}`` messages.
        template: A template name (``"chatml"``, ``"llama3"``) or a template.

    Returns:
        The prompt ids that make the model write the assistant's next message.

    Raises:
        CompatibilityError: The tokenizer lacks a special token of the template.
        DataError: An invalid conversation.
        ConfigError: An unknown template name.
    """
    chosen = get_chat_template(template)
    return chosen.encode(tokenizer, messages, add_generation_prompt=True)


class ChatSession:
    """A conversation with a model: send user messages, get streamed replies.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM].
        tokenizer: A tokenizer with the template's special tokens.
        template: A template name or [`ChatTemplate`][lego.protocols.chat.ChatTemplate].
        system_prompt: An optional system message put first.
        generation_config: Decoding settings for every reply (``eos_token_id`` gets the
            template's end-of-turn id added).

    Raises:
        CompatibilityError: The tokenizer lacks the template's end-of-turn token.
        ConfigError: An unknown template name.
    """

    def __init__(
        self,
        *,
        model: CausalLM,
        tokenizer: Tokenizer,
        template: str | ChatTemplate = "chatml",
        system_prompt: str | None = None,
        generation_config: GenerationConfig | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.template = get_chat_template(template)
        self.end_of_turn_id = special_token_id(
            tokenizer, self.template.end_of_turn, needed_by=f"the {self.template.name} template"
        )
        base = generation_config or GenerationConfig()
        eos = (*base.eos_ids, self.end_of_turn_id)
        self.config = GenerationConfig.from_options(base, eos_token_id=list(dict.fromkeys(eos)))
        self.messages: list[Message] = []
        if system_prompt:
            self.messages.append({"role": "system", "content": system_prompt})

    def send(self, text: str, **options: Any) -> Iterator[str]:
        """Add a user message and stream the assistant's reply.

        The reply is appended to ``messages`` once the stream is exhausted.

        Args:
            text: The user's message.
            **options: [`GenerationConfig`][lego.generate.GenerationConfig] fields for this
                reply only.

        Yields:
            Pieces of the reply (whole characters).
        """
        self.messages.append({"role": "user", "content": text})
        ids = chat_prompt_ids(self.tokenizer, self.messages, self.template)
        pieces: list[str] = []
        for piece in stream(
            self.model, self.tokenizer, ids, generation_config=self.config, **options
        ):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def reply(self, text: str, **options: Any) -> str:
        """Add a user message and return the whole reply (see ``send``)."""
        return "".join(self.send(text, **options))

    def reset(self) -> None:
        """Forget the conversation (a system prompt stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
