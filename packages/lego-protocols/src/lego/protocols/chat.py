r"""Chat templates: conversations rendered as segments of text and special tokens.

A template turns a list of ``{"role", "content"}`` messages into a list of
[`Segment`][lego.protocols.chat.Segment]s: pieces of plain text, special tokens (``<|im_start|>``,
``<|eot_id|>``...) and, for each piece, whether its tokens are trained. Joining the segments'
text gives the exact string transformers' ``apply_chat_template`` renders for the same
template. [`ChatTemplate.encode()`][lego.protocols.chat.ChatTemplate.encode] turns a
conversation into ids with any [`Tokenizer`][lego.protocols.Tokenizer] (for generation), and
lego-data's ``encode_segments`` into ids and training labels; both look special tokens up in
the tokenizer's ``special_tokens``, so message text that merely *looks* like a special token
is never turned into one.

Two templates ship:

- [`ChatMLTemplate`][lego.protocols.chat.ChatMLTemplate] (``"chatml"``; Qwen, many fine-tunes)::

      <|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n
      <|im_start|>assistant\nHello!<|im_end|>\n

  generation prompt ``<|im_start|>assistant\n``; no beginning-of-text token.

- [`Llama3Template`][lego.protocols.chat.Llama3Template] (``"llama3"``; Meta's Llama 3 Instruct)::

      <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>
      <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>...

  message contents are stripped of surrounding whitespace (the reference template's
  ``| trim``); generation prompt ``<|start_header_id|>assistant<|end_header_id|>\n\n``.

Training labels: the content of assistant messages and the end-of-turn token that closes
them (``<|im_end|>`` / ``<|eot_id|>``) are trained, so the model learns to stop; role headers,
system and user turns, and the newline after ``<|im_end|>`` are masked. With
``train_on="last"`` only the final assistant message is trained (preference data, or
multi-turn data whose earlier answers came from another model).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypedDict

from lego.protocols.errors import CompatibilityError, ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    from lego.protocols.tokenizer import Tokenizer

__all__ = [
    "Message",
    "Segment",
    "TrainOn",
    "ChatTemplate",
    "ChatMLTemplate",
    "Llama3Template",
    "CHAT_TEMPLATES",
    "get_chat_template",
    "check_messages",
    "with_system_prompt",
    "special_token_id",
    "encode_text",
]

TrainOn = Literal["assistant", "last"]
"""Which assistant messages are trained: all of them, or only the last one."""

_TRAIN_ON: Final = ("assistant", "last")


class Message(TypedDict):
    """One chat message.

    Attributes:
        role: Who speaks: ``"system"``, ``"user"``, ``"assistant"`` (other roles such as
            ``"tool"`` are rendered but never trained).
        content: The text.
    """

    role: str
    content: str


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation.

    Attributes:
        text: The text; for a special segment, the special token's string.
        special: Whether ``text`` is one special token (encoded as its id, looked up in the
            tokenizer's ``special_tokens``) rather than text to tokenize.
        train: Whether the tokens of this piece are trained (kept in the labels).
    """

    text: str
    special: bool = False
    train: bool = False


def check_messages(messages: object, *, where: str | None = None) -> list[Message]:
    """Validate a conversation and return it as a list of plain messages.

    Args:
        messages: A sequence of mappings with string ``role`` and ``content``.
        where: Where the conversation came from (e.g. ``"data.jsonl"``), for errors.

    Returns:
        The messages, as fresh dictionaries.

    Raises:
        DataError: When the conversation is empty, not a list, or a message lacks a string
            ``role`` or ``content`` (naming the message and the key).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise DataError(
            f"a conversation must be a list of messages, got {type(messages).__name__}",
            path=where,
            key="messages",
        )
    if not messages:
        raise DataError("the conversation has no messages", path=where, key="messages")
    out: list[Message] = []
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise DataError(
                f"message {number} must be an object with 'role' and 'content', "
                f"got {type(message).__name__}",
                path=where,
                key=f"messages[{number}]",
            )
        for key in ("role", "content"):
            if key not in message:
                raise DataError(
                    f"message {number} lacks the key {key!r}",
                    path=where,
                    key=f"messages[{number}].{key}",
                    hint='every message needs {"role": ..., "content": ...}',
                )
            if not isinstance(message[key], str):
                raise DataError(
                    f"message {number}'s {key} must be a string, got {type(message[key]).__name__}",
                    path=where,
                    key=f"messages[{number}].{key}",
                )
        role = message["role"]
        if not role or role != role.strip() or "\n" in role:
            raise DataError(
                f"message {number} has an invalid role {role!r}",
                path=where,
                key=f"messages[{number}].role",
                hint="use a role such as 'system', 'user' or 'assistant'",
            )
        out.append({"role": role, "content": message["content"]})
    return out


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """Put a system message first, unless there is none to add or the conversation has one.

    Args:
        messages: A validated, non-empty conversation.
        system_prompt: The system message's content, or None.

    Returns:
        The conversation (a new list when a message was added).
    """
    if system_prompt is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


class ChatTemplate(ABC):
    """Renders conversations to segments; subclass it to add a template.

    Attributes:
        name: The registry name (e.g. ``"chatml"``).
        special_tokens: Every special-token string the template emits.
        end_of_turn: The special token that closes a turn (generation stops on it).
    """

    name: str
    special_tokens: tuple[str, ...]
    end_of_turn: str

    @abstractmethod
    def _message(self, message: Message, *, first: bool, train: bool) -> list[Segment]:
        """The segments of one message (``train``: whether its content is trained)."""

    @abstractmethod
    def _generation_prompt(self) -> list[Segment]:
        """The segments that open an assistant turn."""

    def _prefix(self) -> list[Segment]:
        """Segments before the first message (e.g. a beginning-of-text token)."""
        return []

    def segments(
        self,
        messages: Sequence[Mapping[str, object]],
        *,
        add_generation_prompt: bool = False,
        train_on: TrainOn = "assistant",
        train_from: int = 0,
    ) -> list[Segment]:
        """Render a conversation to segments.

        Args:
            messages: ``{"role", "content"}`` messages.
            add_generation_prompt: Append the header of an assistant turn, for generation.
            train_on: Train every assistant message, or only the last one.
            train_from: Train only assistant messages at this index or later (preference
                data: the prompt's own assistant turns stay masked).

        Returns:
            The segments, in order; their joined text is the rendered conversation.

        Raises:
            DataError: On an invalid conversation (see
                [`check_messages()`][lego.protocols.chat.check_messages]).
            ConfigError: On an unknown ``train_on``.
        """
        if train_on not in _TRAIN_ON:
            raise ConfigError(
                f"unknown train_on {train_on!r}",
                key="train_on",
                hint=did_you_mean(train_on, _TRAIN_ON),
            )
        checked = check_messages(messages)
        last_assistant = max(
            (i for i, m in enumerate(checked) if m["role"] == "assistant"), default=-1
        )
        out = self._prefix()
        for i, message in enumerate(checked):
            train = (
                message["role"] == "assistant"
                and i >= train_from
                and (train_on == "assistant" or i == last_assistant)
            )
            out += self._message(message, first=i == 0, train=train)
        if add_generation_prompt:
            out += self._generation_prompt()
        return out

    def render(
        self, messages: Sequence[Mapping[str, object]], *, add_generation_prompt: bool = False
    ) -> str:
        """Render a conversation to one string (as ``apply_chat_template(tokenize=False)``).

        Args:
            messages: ``{"role", "content"}`` messages.
            add_generation_prompt: Append the header of an assistant turn.

        Returns:
            The rendered text, special tokens written out.
        """
        return "".join(
            s.text for s in self.segments(messages, add_generation_prompt=add_generation_prompt)
        )

    def encode(
        self,
        tokenizer: Tokenizer,
        messages: Sequence[Mapping[str, object]],
        *,
        add_generation_prompt: bool = False,
    ) -> list[int]:
        """Render a conversation and encode it with a tokenizer (e.g. a generation prompt).

        Plain text between two special tokens is encoded in one ``tokenizer.encode`` call,
        as encoding the whole rendered string would; special segments become their ids from
        ``tokenizer.special_tokens``, so message text that looks like a special token stays
        text.

        Args:
            tokenizer: Any tokenizer that registers the template's special tokens.
            messages: ``{"role", "content"}`` messages.
            add_generation_prompt: Append the header of an assistant turn.

        Returns:
            The token ids.

        Raises:
            CompatibilityError: The tokenizer lacks one of the template's special tokens.
            DataError: On an invalid conversation, or text the tokenizer refuses.
        """
        ids: list[int] = []
        text: list[str] = []
        for segment in self.segments(messages, add_generation_prompt=add_generation_prompt):
            if not segment.special:
                text.append(segment.text)
                continue
            ids += encode_text(tokenizer, "".join(text))
            text.clear()
            ids.append(
                special_token_id(tokenizer, segment.text, needed_by=f"the {self.name} template")
            )
        ids += encode_text(tokenizer, "".join(text))
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ChatMLTemplate(ChatTemplate):
    r"""ChatML: ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message.

    The content is used as is (no stripping). Trained: assistant content and its
    ``<|im_end|>``; the newline after ``<|im_end|>`` is not.
    """

    name = "chatml"
    special_tokens = ("<|im_start|>", "<|im_end|>")
    end_of_turn = "<|im_end|>"

    def _message(self, message: Message, *, first: bool, train: bool) -> list[Segment]:
        return [
            Segment("<|im_start|>", special=True),
            Segment(message["role"] + "\n"),
            Segment(message["content"], train=train),
            Segment("<|im_end|>", special=True, train=train),
            Segment("\n"),
        ]

    def _generation_prompt(self) -> list[Segment]:
        return [Segment("<|im_start|>", special=True), Segment("assistant\n")]


class Llama3Template(ChatTemplate):
    r"""Llama 3 Instruct: ``<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>``.

    The conversation starts with ``<|begin_of_text|>``; contents are stripped of surrounding
    whitespace. Trained: assistant content and its ``<|eot_id|>``.
    """

    name = "llama3"
    special_tokens = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
    end_of_turn = "<|eot_id|>"

    def _prefix(self) -> list[Segment]:
        return [Segment("<|begin_of_text|>", special=True)]

    def _header(self, role: str) -> list[Segment]:
        return [
            Segment("<|start_header_id|>", special=True),
            Segment(role),
            Segment("<|end_header_id|>", special=True),
            Segment("\n\n"),
        ]

    def _message(self, message: Message, *, first: bool, train: bool) -> list[Segment]:
        return [
            *self._header(message["role"]),
            Segment(message["content"].strip(), train=train),
            Segment("<|eot_id|>", special=True, train=train),
        ]

    def _generation_prompt(self) -> list[Segment]:
        return self._header("assistant")


CHAT_TEMPLATES: Final[dict[str, type[ChatTemplate]]] = {
    "chatml": ChatMLTemplate,
    "llama3": Llama3Template,
}
"""Template names to classes (``"llama-3"`` is accepted as an alias of ``"llama3"``)."""

_ALIASES: Final = {"llama-3": "llama3", "llama_3": "llama3", "chat-ml": "chatml"}


def get_chat_template(template: str | ChatTemplate) -> ChatTemplate:
    """Return a template by name, or the template itself.

    Args:
        template: ``"chatml"``, ``"llama3"``, or a
            [`ChatTemplate`][lego.protocols.chat.ChatTemplate].

    Returns:
        The template.

    Raises:
        ConfigError: On an unknown name (suggesting the closest).
    """
    if isinstance(template, ChatTemplate):
        return template
    name = _ALIASES.get(template.lower(), template.lower())
    if name not in CHAT_TEMPLATES:
        raise ConfigError(
            f"unknown chat template {template!r}",
            key="template",
            hint=did_you_mean(template, CHAT_TEMPLATES),
        )
    return CHAT_TEMPLATES[name]()


def special_token_id(tokenizer: Tokenizer, token: str, *, needed_by: str = "this data") -> int:
    """Look a special token up in a tokenizer.

    Args:
        tokenizer: Any tokenizer.
        token: The special token's string, e.g. ``"<|im_end|>"``.
        needed_by: Who needs it, for the error message.

    Returns:
        Its id.

    Raises:
        CompatibilityError: When the tokenizer does not register it.
    """
    specials = tokenizer.special_tokens
    if token not in specials:
        known = ", ".join(sorted(specials)) or "none"
        raise CompatibilityError(
            f"the tokenizer has no special token {token!r}, which {needed_by} needs "
            f"(its special tokens: {known})",
            key=token,
            hint="use a tokenizer that registers it, or choose a template whose special "
            "tokens the tokenizer has",
        )
    return specials[token]


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """Encode plain text with a tokenizer; special-token strings in it stay text.

    Args:
        tokenizer: Any tokenizer.
        text: The text (empty text gives no ids).

    Returns:
        The token ids.

    Raises:
        DataError: When the tokenizer refuses the text (e.g. tiktoken on special-token text).
    """
    if not text:
        return []
    try:
        return list(tokenizer.encode(text))
    except ValueError as err:  # e.g. tiktoken refusing special-token text in a message
        raise DataError(
            f"the tokenizer refused the text {text[:40]!r}...: {err}",
            hint="remove special-token strings from the data, or configure the tokenizer "
            "to encode them as text",
        ) from err
