"""Response bodies in OpenAI's shapes: completions, chunks, usage and log-probabilities.

Two log-probability formats exist, one per endpoint:

- chat (``/v1/chat/completions``): ``logprobs.content`` is a list with one entry per
  generated token, ``{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
  "bytes"}, ...]}``, the ``top_logprobs`` most likely first;
- legacy (``/v1/completions``): ``logprobs`` is ``{"tokens", "token_logprobs",
  "top_logprobs", "text_offset"}``, four parallel lists; each ``top_logprobs`` entry is a
  dictionary from token text to log-probability holding the ``logprobs`` most likely tokens
  and the chosen one (OpenAI's and vLLM's rule). With ``echo`` the prompt's tokens come
  first; the first prompt token has no log-probability (``null``), having no context.
  ``text_offset`` is each token's character offset into the choice's ``text``.

Token texts are ``tokenizer.decode([id])``; ``bytes`` is that text's UTF-8 encoding. Every
generated token the engine reports is listed, stop-string tokens and end-of-sequence ids
included, although the returned text leaves them out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lego.protocols import Tokenizer
from lego.serve.engine import Finish, PromptLogprobs, TokenOutput
from lego.serve.errors import SERVER_ERROR, APIError
from lego.serve.tokens import token_text

__all__ = [
    "Choice",
    "new_id",
    "now",
    "finish_reason",
    "usage",
    "chat_logprobs",
    "legacy_logprobs",
    "check_finished",
    "LOGPROB_FLOOR",
]

JSON = dict[str, Any]


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-3f2a...`` (OpenAI's prefixes).

    Args:
        prefix: ``"chatcmpl"`` or ``"cmpl"``.

    Returns:
        The id.

    Example:
        >>> new_id("cmpl").startswith("cmpl-")
        True
    """
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """The Unix time in whole seconds (the ``created`` field)."""
    return int(time.time())


def finish_reason(finish: Finish) -> str:
    """OpenAI's ``finish_reason`` for an engine ``Finish``.

    ``"stop"`` and ``"length"`` pass through; a cancelled request (time limit, engine shut
    down) reports ``"length"``: its output was cut by a limit, as by ``max_tokens``.

    Args:
        finish: The engine's last event (never ``"error"``: see ``check_finished``).

    Returns:
        ``"stop"`` or ``"length"``.
    """
    return "stop" if finish.reason == "stop" else "length"


def check_finished(finish: Finish) -> None:
    """Fail the HTTP request when the engine failed the sequence.

    Args:
        finish: The engine's last event.

    Raises:
        APIError: 500 ``server_error`` for ``reason == "error"`` (the engine's message, no
            traceback).
    """
    if finish.reason == "error":
        raise APIError(
            500,
            f"generation failed: {finish.error or 'the engine reported an error'}",
            type=SERVER_ERROR,
            code="generation_failed",
        )


def usage(prompt_tokens: int, completion_tokens: int) -> JSON:
    """OpenAI's ``usage`` object.

    Args:
        prompt_tokens: Prompt tokens (each distinct prompt counted once).
        completion_tokens: Generated tokens over every choice.

    Returns:
        ``{"prompt_tokens", "completion_tokens", "total_tokens"}``.

    Example:
        >>> usage(5, 7)
        {'prompt_tokens': 5, 'completion_tokens': 7, 'total_tokens': 12}
    """
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> JSON:
    text = token_text(tokenizer, token_id)
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer: Tokenizer, tokens: Sequence[TokenOutput]) -> JSON:
    """The chat format's ``logprobs`` object for some generated tokens.

    Args:
        tokenizer: Decodes token ids to text.
        tokens: Engine events that carry log-probabilities.

    Returns:
        ``{"content": [...], "refusal": None}``.
    """
    content = []
    for token in tokens:
        entry = _chat_entry(tokenizer, token.token_id, _value(token.logprob))
        entry["top_logprobs"] = [
            _chat_entry(tokenizer, i, lp) for i, lp in token.top_logprobs or ()
        ]
        content.append(entry)
    return {"content": content, "refusal": None}


LOGPROB_FLOOR = -9999.0
"""Log-probabilities below it (``-inf``: a banned token) are reported as it: JSON has no
infinity (vLLM's convention)."""


def _finite(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR


def _value(logprob: float | None) -> float:
    return LOGPROB_FLOOR if logprob is None else _finite(logprob)


def _top_dict(
    tokenizer: Tokenizer, chosen: int, logprob: float | None, top: Sequence[tuple[int, float]]
) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, lp in top:
        out.setdefault(token_text(tokenizer, i), _finite(lp))
    if logprob is not None:
        out.setdefault(token_text(tokenizer, chosen), _finite(logprob))
    return out


def legacy_logprobs(
    tokenizer: Tokenizer,
    *,
    prompt: PromptLogprobs | None,
    tokens: Sequence[TokenOutput],
    offset: int = 0,
) -> JSON:
    """The legacy (``/v1/completions``) ``logprobs`` object.

    Args:
        tokenizer: Decodes token ids to text.
        prompt: The prompt's log-probabilities (``echo``), or None.
        tokens: Generated tokens with log-probabilities.
        offset: The character offset of the first token in the choice's text.

    Returns:
        ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``.
    """
    texts: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if prompt is not None:
        for i, token in enumerate(prompt.token_ids):
            texts.append(token_text(tokenizer, token))
            value = prompt.logprobs[i]
            values.append(None if value is None else _finite(value))
            top = prompt.top_logprobs[i]
            tops.append(
                None if top is None else _top_dict(tokenizer, token, prompt.logprobs[i], top)
            )
    for output in tokens:
        texts.append(token_text(tokenizer, output.token_id))
        values.append(None if output.logprob is None else _finite(output.logprob))
        tops.append(
            _top_dict(tokenizer, output.token_id, output.logprob, output.top_logprobs or ())
        )
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": values,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


@dataclass
class Choice:
    """What one choice has received from the engine so far.

    Attributes:
        index: The choice's index in the response.
        text: The text pieces received.
        tokens: Generated tokens with log-probabilities (kept only when asked).
        prompt: The prompt's log-probabilities, when asked.
        finish: The last event, once received.
        keep_tokens: Whether to keep ``tokens``.
    """

    index: int
    keep_tokens: bool = False
    text: list[str] = field(default_factory=list)
    tokens: list[TokenOutput] = field(default_factory=list)
    prompt: PromptLogprobs | None = None
    finish: Finish | None = None

    def add(self, event: PromptLogprobs | TokenOutput | Finish) -> str:
        """Record an event.

        Args:
            event: The engine's next event for this choice.

        Returns:
            The new text it brings (``""`` for none).
        """
        if isinstance(event, PromptLogprobs):
            self.prompt = event
            return ""
        if isinstance(event, TokenOutput):
            if self.keep_tokens:
                self.tokens.append(event)
            self.text.append(event.text)
            return event.text
        self.finish = event
        self.text.append(event.text)
        return event.text

    @property
    def completion(self) -> str:
        """The text received so far, joined."""
        return "".join(self.text)

    @property
    def completion_tokens(self) -> int:
        """Generated tokens (from the ``Finish``; 0 before it)."""
        return 0 if self.finish is None else self.finish.completion_tokens
