"""Multi-turn chat on a model: a conversation rendered by a chat template, replies streamed.

[`ChatSession`][lego.generate.ChatSession] keeps the message list, renders it with a
[`ChatTemplate`][lego.protocols.chat.ChatTemplate] (ChatML, Llama 3) and the generation
prompt, streams the assistant's reply with [`stream()`][lego.generate.stream], stops on the
template's end-of-turn token, and appends the reply to the conversation.

A conversation that outgrows the model's context keeps going: before each reply the oldest
exchanges (never the system prompt, never the new message) are dropped until the prompt and
``max_new_tokens`` fit, and a
[`ConversationTrimmedWarning`][lego.generate.chat.ConversationTrimmedWarning] says how many
messages went. A new message that does not fit even alone is refused with a
[`ConfigError`][lego.protocols.ConfigError], and the session stays as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from lego.generate.config import GenerationConfig
from lego.generate.streaming import check_tokenizer, stream
from lego.protocols import CausalLM, ConfigError, Tokenizer
from lego.protocols.chat import ChatTemplate, Message, get_chat_template, special_token_id

__all__ = ["ChatSession", "ConversationTrimmedWarning", "chat_prompt_ids"]


class ConversationTrimmedWarning(UserWarning):
    """The oldest messages of a chat were dropped so the conversation fits the context."""


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
        CompatibilityError: The tokenizer lacks the template's end-of-turn token, or has
            more ids than the model.
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
        check_tokenizer(model, tokenizer)
        base = generation_config or GenerationConfig()
        eos = (*base.eos_ids, self.end_of_turn_id)
        self.config = GenerationConfig.from_options(base, eos_token_id=list(dict.fromkeys(eos)))
        self.messages: list[Message] = []
        if system_prompt:
            self.messages.append({"role": "system", "content": system_prompt})

    def send(self, text: str, **options: Any) -> Iterator[str]:
        """Add a user message and stream the assistant's reply.

        The reply is appended to ``messages`` once the stream is exhausted. When the
        conversation no longer fits the model's context with ``max_new_tokens`` for the
        reply, its oldest exchanges are dropped first (with a
        [`ConversationTrimmedWarning`][lego.generate.chat.ConversationTrimmedWarning]). If
        the reply fails or is interrupted, the conversation is left as it was before.

        Args:
            text: The user's message.
            **options: [`GenerationConfig`][lego.generate.GenerationConfig] fields for this
                reply only.

        Yields:
            Pieces of the reply (whole characters).

        Raises:
            ConfigError: The message does not fit the context even without the earlier
                exchanges (and ``truncate_prompt`` is off), or bad options.
        """
        config = GenerationConfig.from_options(self.config, **options)
        before = list(self.messages)
        self.messages.append({"role": "user", "content": text})
        pieces: list[str] = []
        try:
            ids = self._fit(config)
            for piece in stream(self.model, self.tokenizer, ids, generation_config=config):
                pieces.append(piece)
                yield piece
        except BaseException:
            self.messages = before  # the session stays as it was before this message
            raise
        self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def _fit(self, config: GenerationConfig) -> list[int]:
        """The prompt ids, after dropping the oldest exchanges that do not fit the context."""
        context = int(self.model.config.context_length)
        room = context - config.max_new_tokens
        ids = chat_prompt_ids(self.tokenizer, self.messages, self.template)
        dropped = 0
        while len(ids) > room and room > 0:
            first = next(i for i, m in enumerate(self.messages) if m["role"] != "system")
            if first == len(self.messages) - 1:  # only the new message is left to drop
                if config.truncate_prompt:
                    break  # the engine keeps its last tokens, with a warning
                raise ConfigError(
                    f"the message does not fit the model's context: {len(ids)} tokens with "
                    f"the chat template{' and the system prompt' if first else ''}, "
                    f"{config.max_new_tokens} more for the reply, {context} in all",
                    key="message",
                    hint="send a shorter message, or lower max_new_tokens",
                )
            end = first + 1  # drop one exchange: this message and the replies after it
            while end < len(self.messages) - 1 and self.messages[end]["role"] != "user":
                end += 1
            dropped += end - first
            del self.messages[first:end]
            ids = chat_prompt_ids(self.tokenizer, self.messages, self.template)
        if dropped:
            warnings.warn(
                f"the conversation outgrew the model's context of {context} tokens "
                f"({config.max_new_tokens} kept for the reply): dropped the oldest {dropped} "
                f"message{'s' if dropped > 1 else ''}",
                ConversationTrimmedWarning,
                stacklevel=3,
            )
        return ids

    def reply(self, text: str, **options: Any) -> str:
        """Add a user message and return the whole reply (see ``send``)."""
        return "".join(self.send(text, **options))

    def reset(self) -> None:
        """Forget the conversation (a system prompt stays)."""
        self.messages = [m for m in self.messages if m["role"] == "system"]
