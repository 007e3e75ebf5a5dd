"""Request bodies: OpenAI's JSON fields validated into engine requests.

[`parse_chat()`][lego.serve.protocol.parse_chat] and
[`parse_completion()`][lego.serve.protocol.parse_completion] turn the JSON body of
``/v1/chat/completions`` and ``/v1/completions`` into prompt ids and one
``SamplingParams`` per choice; every wrong type or value is a 400
[`APIError`][lego.serve.errors.APIError] whose ``param`` names the field.

Field names and ranges follow OpenAI's API reference:

- ``max_tokens`` / ``max_completion_tokens`` (chat; the latter wins; default: the rest of
  the context), ``max_tokens`` (completions; default 16, 0 allowed); the prompt plus
  ``max_tokens`` must fit the context, else 400 ``context_length_exceeded`` naming the limit;
- ``temperature`` 0..2 (0: greedy), ``top_p`` in (0, 1], ``n`` 1..128, ``seed`` 0..2**63-1
  (choice ``i`` samples with ``seed + i``), ``presence_penalty`` and ``frequency_penalty``
  -2..2, ``logit_bias`` (token-id strings to -100..100), ``stop`` (a string or up to 4);
- chat ``logprobs`` (bool) + ``top_logprobs`` 0..20; completions ``logprobs`` 0..20
  (the chosen token and the top ``logprobs``) and ``echo``;
- ``stream`` and ``stream_options.include_usage``.

Unknown top-level fields are ignored, as vLLM does (OpenAI's own API rejects some of
them): clients such as lm-evaluation-harness send extra fields. Fields that would change
the result and are not implemented are refused with a 400 naming them: ``tools``,
``functions``, ``tool_choice`` (other than ``"none"``), ``response_format`` (other than
``{"type": "text"}``), ``suffix``, ``best_of`` above 1, non-text message parts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.requests import Request

from lego.protocols import DataError, LegoError, Tokenizer
from lego.protocols.chat import ChatTemplate, Message
from lego.serve.engine import SamplingParams
from lego.serve.errors import APIError, bad_request
from lego.serve.tokens import SpecialSplitter, encode_prompt

__all__ = [
    "ServedModel",
    "ChatRequest",
    "CompletionRequest",
    "read_json",
    "parse_chat",
    "parse_completion",
    "parse_messages",
    "check_model",
    "MAX_N",
    "MAX_STOP",
    "MAX_LOGPROBS",
    "DEFAULT_COMPLETION_TOKENS",
]

MAX_N: Final = 128
"""The most choices one request may ask for (OpenAI's limit)."""

MAX_STOP: Final = 4
"""The most stop strings (OpenAI's limit)."""

MAX_LOGPROBS: Final = 20
"""The most alternatives per token in ``top_logprobs`` / ``logprobs``."""

DEFAULT_COMPLETION_TOKENS: Final = 16
"""``/v1/completions``' default ``max_tokens`` (OpenAI's)."""

_MAX_SEED: Final = 2**63 - 1

_SYSTEM_ROLES: Final = {"developer": "system"}


@dataclass(frozen=True)
class ServedModel:
    """What the server knows about the model it serves.

    Attributes:
        name: The model id clients send as ``model`` and ``/v1/models`` lists.
        tokenizer: The model's tokenizer.
        vocab_size: The model's vocabulary size: valid token ids are below it.
        context_length: The most tokens (prompt + completion) one sequence may hold.
        chat_template: The template that renders chat messages, or None (then
            ``/v1/chat/completions`` answers 400).
        eos_token: The end-of-text special token's string, reported by
            ``/tokenizer_info`` (lm-evaluation-harness tokenizes it to find the EOS id).
        end_of_turn_id: The id of the chat template's end-of-turn token: chat requests
            stop on it (it ends the assistant's message), whatever the engine's EOS ids.
        splitter: Splits prompts at the tokenizer's special-token strings.
    """

    name: str
    tokenizer: Tokenizer
    vocab_size: int
    context_length: int
    chat_template: ChatTemplate | None = None
    eos_token: str | None = None
    end_of_turn_id: int | None = None
    splitter: SpecialSplitter = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "splitter", SpecialSplitter(self.tokenizer.special_tokens))


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` request.

    Attributes:
        prompt_ids: The rendered conversation's ids, generation prompt included.
        params: One ``SamplingParams`` per choice (``n`` of them).
        stream: Whether to answer with server-sent events.
        include_usage: ``stream_options.include_usage``: a last chunk with the usage.
        logprobs: Whether each choice carries ``logprobs.content``.
        top_logprobs: Alternatives per token (0..20).
    """

    prompt_ids: tuple[int, ...]
    params: tuple[SamplingParams, ...]
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class CompletionRequest:
    """A validated ``/v1/completions`` request.

    Attributes:
        prompts: The prompts' ids (one entry per prompt of a batched request).
        prompt_texts: The prompts as text (echoed; token-id prompts decoded).
        n: Choices per prompt; choice ``i * n + j`` is prompt ``i``'s ``j``-th.
        params: One ``SamplingParams`` per choice, in choice order.
        echo: Whether each choice's text (and log-probs) start with the prompt.
        logprobs: Alternatives per token in the legacy ``logprobs`` object, or None.
        stream: Whether to answer with server-sent events.
        include_usage: ``stream_options.include_usage``.
    """

    prompts: tuple[tuple[int, ...], ...]
    prompt_texts: tuple[str, ...]
    n: int
    params: tuple[SamplingParams, ...]
    echo: bool = False
    logprobs: int | None = None
    stream: bool = False
    include_usage: bool = False


async def read_json(request: Request, *, max_bytes: int) -> dict[str, Any]:
    """Read a request's body as one JSON object, at most ``max_bytes`` long.

    Args:
        request: The Starlette request.
        max_bytes: The size limit.

    Returns:
        The decoded object.

    Raises:
        APIError: 413 when the body is larger than ``max_bytes`` (checked on
            ``Content-Length`` first, then while reading); 400 when it is not UTF-8
            JSON, or not an object.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(size, max_bytes)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise bad_request("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise bad_request(f"the request body is not UTF-8 (byte {err.start})") from err
    except json.JSONDecodeError as err:
        raise bad_request(
            f"the request body is not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from err
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_kind(body)}")
    return body


def _too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        f"the request body has {size} bytes or more; this server accepts at most {limit}",
        code="request_too_large",
    )


def check_model(body: Mapping[str, Any], model: ServedModel, *, required: bool) -> None:
    """Check the ``model`` field against the served model's name.

    Args:
        body: The request body.
        model: The served model.
        required: Whether the field must be present (OpenAI's generation endpoints);
            ``/tokenize`` and ``/detokenize`` take it as optional.

    Raises:
        APIError: 400 when missing (and required) or not a string; 404 ``model_not_found``
            when it names another model.
    """
    name = body.get("model")
    if name is None:
        if required:
            raise bad_request(
                f"the request needs a 'model' field; this server serves {model.name!r}",
                "model",
            )
        return
    if not isinstance(name, str):
        raise bad_request(f"model must be a string, got {_kind(name)}", "model")
    if name != model.name:
        raise APIError(
            404,
            f"the model {name!r} does not exist; this server serves {model.name!r}",
            param="model",
            code="model_not_found",
        )


def parse_chat(body: Mapping[str, Any], model: ServedModel) -> ChatRequest:
    """Validate a ``/v1/chat/completions`` body.

    Args:
        body: The decoded JSON object.
        model: The served model.

    Returns:
        The request: rendered prompt ids and the sampling settings per choice.

    Raises:
        APIError: 400 naming the field at fault; 404 for another model's name.
    """
    check_model(body, model, required=True)
    _refuse_unsupported(body)
    if model.chat_template is None:
        raise bad_request(
            f"the model {model.name!r} has no chat template; use /v1/completions",
            "messages",
        )
    messages = parse_messages(body.get("messages"))
    try:
        prompt_ids = model.chat_template.encode(
            model.tokenizer, messages, add_generation_prompt=True
        )
    except LegoError as err:
        raise bad_request(err.message, _message_param(err)) from err
    logprobs = _bool(body, "logprobs", default=False)
    top = _int(body, "top_logprobs", default=None, low=0, high=MAX_LOGPROBS)
    if top is not None and not logprobs:
        raise bad_request("top_logprobs needs logprobs set to true", "top_logprobs")
    limit = _int(body, "max_completion_tokens", default=None, low=1)
    param = "max_completion_tokens"
    if limit is None:
        limit = _int(body, "max_tokens", default=None, low=1)
        param = "max_tokens"
    max_tokens = _fit(len(prompt_ids), limit, model, prompt_param="messages", param=param)
    stream, include_usage = _stream(body)
    params = _sampling(
        body,
        model,
        max_tokens=max_tokens,
        logprobs=(top or 0) if logprobs else None,
        prompt_logprobs=None,
        stop_token_ids=() if model.end_of_turn_id is None else (model.end_of_turn_id,),
    )
    return ChatRequest(
        prompt_ids=tuple(prompt_ids),
        params=params,
        stream=stream,
        include_usage=include_usage,
        logprobs=logprobs,
        top_logprobs=top or 0,
    )


def parse_completion(body: Mapping[str, Any], model: ServedModel) -> CompletionRequest:
    """Validate a ``/v1/completions`` body.

    Args:
        body: The decoded JSON object.
        model: The served model.

    Returns:
        The request: prompt ids and texts, and the sampling settings per choice.

    Raises:
        APIError: 400 naming the field at fault; 404 for another model's name.
    """
    check_model(body, model, required=True)
    _refuse_unsupported(body)
    prompts, texts = _prompts(body.get("prompt", _MISSING), model)
    echo = _bool(body, "echo", default=False)
    logprobs = _int(body, "logprobs", default=None, low=0, high=MAX_LOGPROBS)
    requested = _int(body, "max_tokens", default=DEFAULT_COMPLETION_TOKENS, low=0)
    assert requested is not None
    longest = max(len(p) for p in prompts)
    max_tokens = _fit(longest, requested, model, prompt_param="prompt", param="max_tokens")
    stream, include_usage = _stream(body)
    prompt_logprobs = logprobs if echo and logprobs is not None else None
    # max_tokens 0 without log-probs to score the prompt: nothing for the engine to do (the
    # settings are still validated)
    idle = max_tokens == 0 and prompt_logprobs is None
    per_prompt = _sampling(
        body,
        model,
        max_tokens=1 if idle else max_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )
    return CompletionRequest(
        prompts=tuple(tuple(p) for p in prompts),
        prompt_texts=tuple(texts),
        n=len(per_prompt),
        params=() if idle else tuple(p for _ in prompts for p in per_prompt),
        echo=echo,
        logprobs=logprobs,
        stream=stream,
        include_usage=include_usage,
    )


# -- fields ------------------------------------------------------------------------------

_MISSING: Final = object()


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _bool(body: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {_kind(value)}", name)
    return value


def _int(
    body: Mapping[str, Any],
    name: str,
    *,
    default: int | None,
    low: int | None = None,
    high: int | None = None,
) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"{name} must be an integer, got {_kind(value)}", name)
    _range(name, value, low, high)
    return value


def _float(body: Mapping[str, Any], name: str, *, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"{name} must be a number, got {_kind(value)}", name)
    _range(name, value, low, high)
    return float(value)


def _range(name: str, value: float, low: float | None, high: float | None) -> None:
    if low is not None and high is not None and not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}, got {value}", name)
    if low is not None and value < low:
        raise bad_request(f"{name} must be at least {low}, got {value}", name)
    if high is not None and value > high:
        raise bad_request(f"{name} must be at most {high}, got {value}", name)


def _stream(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = _bool(body, "stream", default=False)
    options = body.get("stream_options")
    if options is None or not stream:
        return stream, False
    if not isinstance(options, dict):
        raise bad_request(
            f"stream_options must be an object, got {_kind(options)}", "stream_options"
        )
    return stream, _bool(options, "include_usage", default=False)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"{name} (function calling) is not supported by this server", name)
    choice = body.get("tool_choice")
    if choice is not None and choice != "none":
        raise bad_request("tool_choice is not supported by this server", "tool_choice")
    if body.get("function_call") not in (None, "none"):
        raise bad_request("function_call is not supported by this server", "function_call")
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and response_format.get("type") == "text"
    ):
        raise bad_request(
            'response_format other than {"type": "text"} is not supported by this server',
            "response_format",
        )
    if body.get("suffix") is not None:
        raise bad_request("suffix (insertion) is not supported by this server", "suffix")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise bad_request("best_of is not supported by this server; use n", "best_of")


def _fit(
    prompt_len: int, requested: int | None, model: ServedModel, *, prompt_param: str, param: str
) -> int:
    """The completion budget: ``requested``, or the rest of the context when None."""
    limit = model.context_length
    if requested is None:
        if prompt_len >= limit:
            raise _too_long(limit, prompt_len, 1, prompt_param)
        return limit - prompt_len
    if prompt_len + requested > limit:
        raise _too_long(limit, prompt_len, requested, param if prompt_len < limit else prompt_param)
    return requested


def _too_long(limit: int, prompt_len: int, completion: int, param: str) -> APIError:
    return bad_request(
        f"this model's maximum context length is {limit} tokens, but {prompt_len + completion} "
        f"were requested ({prompt_len} in the prompt, {completion} for the completion); "
        "shorten the prompt or lower max_tokens",
        param,
        code="context_length_exceeded",
    )


def _sampling(
    body: Mapping[str, Any],
    model: ServedModel,
    *,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None,
    stop_token_ids: tuple[int, ...] = (),
) -> tuple[SamplingParams, ...]:
    """One ``SamplingParams`` per choice (``n``), seeds ``seed + i``."""
    n = _int(body, "n", default=1, low=1, high=MAX_N)
    assert n is not None
    seed = _int(body, "seed", default=None, low=0, high=_MAX_SEED)
    common = {
        "max_tokens": max_tokens,
        "temperature": _float(body, "temperature", default=1.0, low=0.0, high=2.0),
        "top_p": _top_p(body),
        "presence_penalty": _float(body, "presence_penalty", default=0.0, low=-2.0, high=2.0),
        "frequency_penalty": _float(body, "frequency_penalty", default=0.0, low=-2.0, high=2.0),
        "logit_bias": _logit_bias(body.get("logit_bias"), model.vocab_size),
        "stop": _stop(body.get("stop")),
        "stop_token_ids": stop_token_ids,
        "logprobs": logprobs,
        "prompt_logprobs": prompt_logprobs,
    }
    return tuple(
        SamplingParams(
            seed=None if seed is None else (seed + i) % (_MAX_SEED + 1),
            **common,  # type: ignore[arg-type]
        )
        for i in range(n)
    )


def _top_p(body: Mapping[str, Any]) -> float:
    top_p = _float(body, "top_p", default=1.0, low=0.0, high=1.0)
    if top_p == 0.0:
        raise bad_request(
            "top_p must be above 0 (at most 1); use temperature 0 for greedy decoding", "top_p"
        )
    return top_p


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request(
            f"stop must be a string or an array of strings, got {_kind(value)}", "stop"
        )
    if len(stops) > MAX_STOP:
        raise bad_request(f"stop takes at most {MAX_STOP} strings, got {len(stops)}", "stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", "stop")
    return tuple(stops)


def _logit_bias(value: object, vocab_size: int) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(
            f"logit_bias must be an object of token ids to numbers, got {_kind(value)}",
            "logit_bias",
        )
    out: dict[int, float] = {}
    for key, bias in value.items():
        token = key.strip() if isinstance(key, str) else ""
        if not token.isdigit() or int(token) >= vocab_size:
            raise bad_request(
                f"logit_bias key {key!r} is not a token id (0..{vocab_size - 1})", "logit_bias"
            )
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad_request(
                f"logit_bias[{key!r}] must be a number between -100 and 100, got {bias!r}",
                "logit_bias",
            )
        out[int(token)] = float(bias)
    return out


def parse_messages(value: object) -> list[Message]:
    """Validate OpenAI chat messages into ``{"role", "content"}`` messages.

    ``content`` may be a string or an array of text parts (joined; null for an assistant
    message); the
    ``developer`` role is rendered as ``system``.

    Args:
        value: The ``messages`` field.

    Returns:
        The messages.

    Raises:
        APIError: 400 naming the message and key at fault.
    """
    if not isinstance(value, list) or not value:
        raise bad_request(
            "messages must be a non-empty array of {role, content} objects"
            + ("" if value is None else f", got {_kind(value)}"),
            "messages",
        )
    out: list[Message] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{where} must be an object, got {_kind(message)}", where)
        role = message.get("role")
        if not isinstance(role, str):
            raise bad_request(f"{where}.role must be a string, got {_kind(role)}", f"{where}.role")
        out.append({"role": _SYSTEM_ROLES.get(role, role), "content": _content(message, where)})
    return out


def _content(message: Mapping[str, Any], where: str) -> str:
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant" and "content" in message:
            return ""  # an assistant turn that only called tools
        raise bad_request(
            f"{where} needs a 'content' (a string or an array of text parts)", f"{where}.content"
        )
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(
            f"{where}.content must be a string or an array of text parts, got {_kind(content)}",
            f"{where}.content",
        )
    texts: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else _kind(part)
            raise bad_request(
                f"{where}.content[{j}] is not a text part ({kind!r}); this server takes text only",
                f"{where}.content[{j}]",
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(
                f"{where}.content[{j}].text must be a string, got {_kind(text)}",
                f"{where}.content[{j}].text",
            )
        texts.append(text)
    return "".join(texts)


def _message_param(err: LegoError) -> str:
    """The field a rendering error names (``messages[0].role``), else ``messages``."""
    key = err.key if isinstance(err, DataError) else None
    return key if key and key.startswith("messages") else "messages"


def _prompts(value: object, model: ServedModel) -> tuple[list[list[int]], list[str]]:
    """The prompts' ids and texts (token-id prompts decoded)."""
    if value is _MISSING or value is None:
        raise bad_request("the request needs a 'prompt' field", "prompt")
    if isinstance(value, str):
        raw: list[object] = [value]
    elif isinstance(value, list) and value:
        raw = [value] if all(_is_token(t) for t in value) else list(value)
    else:
        raise bad_request(
            "prompt must be a string, an array of strings, an array of token ids or an "
            f"array of token-id arrays, got {_kind(value) if value != [] else 'an empty array'}",
            "prompt",
        )
    out: list[list[int]] = []
    texts: list[str] = []
    for i, prompt in enumerate(raw):
        where = "prompt" if len(raw) == 1 else f"prompt[{i}]"
        if isinstance(prompt, str):
            try:
                ids = encode_prompt(model.tokenizer, prompt, splitter=model.splitter)
            except LegoError as err:
                raise bad_request(err.message, where) from err
            text = prompt
        elif isinstance(prompt, list) and all(_is_token(t) for t in prompt):
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < model.vocab_size]
            if bad:
                raise bad_request(
                    f"{where} holds token id {bad[0]}, outside the vocabulary "
                    f"(0..{model.vocab_size - 1})",
                    where,
                )
            text = model.tokenizer.decode(ids)
        else:
            raise bad_request(
                f"{where} must be a string or an array of token ids, got {_kind(prompt)}", where
            )
        if not ids:
            raise bad_request(f"{where} is empty; give at least one token", where)
        out.append(ids)
        texts.append(text)
    return out, texts


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
