"""The engine's values: a request's sampling settings and the events it streams back.

Import them from [`lego.serve.engine`][lego.serve.engine], which re-exports them. A request
yields, in order: one [`PromptLogprobs`][lego.serve.engine_types.PromptLogprobs] when it
asked for ``prompt_logprobs``, one [`TokenOutput`][lego.serve.engine_types.TokenOutput] per
generated token, and exactly one [`Finish`][lego.serve.engine_types.Finish] last. Joining
the ``text`` of every ``TokenOutput`` and of the ``Finish`` gives the completion (without
end-of-sequence tokens and cut before a stop string).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from lego.generate import LogitBias
from lego.protocols import ConfigError, LegoError, check_float, check_int

__all__ = [
    "SamplingParams",
    "PromptLogprobs",
    "TokenOutput",
    "Finish",
    "FinishReason",
    "Event",
    "EngineFull",
]

_OWNER = "SamplingParams"

FinishReason = Literal["stop", "length", "cancelled", "error"]
"""Why a request ended: a stop condition, its length limit, cancelled, or an error."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and what it reports, validated on creation.

    The fields mean what OpenAI's and vLLM's fields of the same names mean.

    Attributes:
        max_tokens: Tokens to generate at most (0 only with ``prompt_logprobs``: score the
            prompt and stop).
        temperature: Sampling temperature; 0 means greedy (argmax after the penalties and
            the logit bias).
        top_p: Nucleus mass in ``(0, 1]`` (1: off).
        seed: Seed of the request's own ``torch.Generator``: the same seed gives the same
            tokens whatever else runs in the batch; None draws a fresh random seed.
        presence_penalty: Subtracted from the logits of every token already generated.
        frequency_penalty: Subtracted once per earlier occurrence in the generated tokens.
        logit_bias: Token id to a bias added to its logit (``-inf`` bans it).
        stop: Texts that end the request; never part of the returned text.
        stop_token_ids: Ids that end the request besides the end-of-sequence ids.
        ignore_eos: Go on past the end-of-sequence ids (``stop_token_ids`` still stop).
        logprobs: None for no log-probabilities; ``k >= 0`` reports the chosen token's and
            the ``k`` most likely ones' (log-softmax of the model's raw logits).
        prompt_logprobs: The same for every prompt token (the first has none).

    Raises:
        ConfigError: A value out of range, naming the field.

    Example:
        >>> SamplingParams(max_tokens=16, temperature=0.7, top_p=0.9, seed=1).temperature
        0.7
        >>> SamplingParams(max_tokens=0)
        Traceback (most recent call last):
        ...
        lego.protocols.errors.ConfigError: SamplingParams: max_tokens=0 generates nothing ...
          where: key 'max_tokens'
          what to do: ask for at least 1 token, or set prompt_logprobs to score the prompt
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        check_int("max_tokens", self.max_tokens, minimum=0, owner=_OWNER)
        if self.max_tokens == 0 and self.prompt_logprobs is None:
            raise ConfigError(
                f"{_OWNER}: max_tokens=0 generates nothing and prompt_logprobs is not set",
                key="max_tokens",
                hint="ask for at least 1 token, or set prompt_logprobs to score the prompt",
            )
        check_float(
            "temperature",
            self.temperature,
            low=0.0,
            owner=_OWNER,
            hint="use temperature >= 0 (0 means greedy)",
        )
        check_float(
            "top_p",
            self.top_p,
            low=0.0,
            high=1.0,
            low_open=True,
            owner=_OWNER,
            hint="top_p is a probability mass in (0, 1]; 1 turns it off",
        )
        if self.seed is not None:
            check_int("seed", self.seed, minimum=0, maximum=2**64 - 1, owner=_OWNER)
        check_float("presence_penalty", self.presence_penalty, owner=_OWNER)
        check_float("frequency_penalty", self.frequency_penalty, owner=_OWNER)
        if self.logit_bias:
            LogitBias(bias=self.logit_bias)  # validates ids and values
        stop: object = self.stop
        if not isinstance(stop, tuple) or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError(
                f"{_OWNER}: stop must be a tuple of non-empty strings, got {self.stop!r}",
                key="stop",
                hint='pass e.g. stop=("\\n\\n",)',
            )
        for token in self.stop_token_ids:
            check_int("stop_token_ids", token, minimum=0, owner=_OWNER)
        if not isinstance(self.ignore_eos, bool):
            raise ConfigError(
                f"{_OWNER}: ignore_eos must be a bool, got {self.ignore_eos!r}", key="ignore_eos"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, minimum=0, owner=_OWNER)


@dataclass(frozen=True)
class PromptLogprobs:
    """The log-probabilities of the prompt tokens (the first event, when asked).

    Attributes:
        token_ids: The prompt.
        logprobs: Each token's log-probability given the tokens before it; None for the
            first (no context).
        top_logprobs: For each token, the ``prompt_logprobs`` most likely ``(id, logprob)``
            pairs at its position, most likely first; None for the first token.
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float | None, ...]
    top_logprobs: tuple[tuple[tuple[int, float], ...] | None, ...]


@dataclass(frozen=True)
class TokenOutput:
    """One generated token.

    Attributes:
        token_id: The id.
        text: The new text it completes: whole UTF-8 characters only, ``""`` while a
            multi-byte character or a possible stop string is held back, never an
            end-of-sequence token or a stop string.
        logprob: Its log-probability (log-softmax of the raw logits), or None when the
            request did not ask.
        top_logprobs: The ``logprobs`` most likely ``(id, logprob)`` pairs at this step, most
            likely first, or None when the request did not ask.
    """

    token_id: int
    text: str
    logprob: float | None
    top_logprobs: tuple[tuple[int, float], ...] | None


@dataclass(frozen=True)
class Finish:
    """The last event of a request.

    Attributes:
        reason: ``"stop"`` (an end-of-sequence id, a stop id or a stop string),
            ``"length"`` (``max_tokens``), ``"cancelled"``
            (``Request.cancel()``, ``Engine.close()``, a time-out) or ``"error"``.
        text: Text still held back at the end (already cut before a stop string).
        prompt_tokens: Tokens in the prompt.
        completion_tokens: Tokens generated (an end-of-sequence or stop id included).
        error: What went wrong, for ``"error"`` (and why a request was cancelled, when the
            engine cancelled it).
    """

    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


Event = PromptLogprobs | TokenOutput | Finish
"""What a request yields."""


class EngineFull(LegoError):  # noqa: N818 - the name HTTP servers and clients know (interfaces.md)
    """The engine cannot take the request now: its queue is full, or it is closed.

    An HTTP server answers 503 with a ``Retry-After`` header.
    """
