"""One running request of the engine: its sampler, its text and when it finishes.

[`Row`][lego.serve.engine_rows.Row] holds what a request needs between two decode steps:
its logits processors (logit bias, presence and frequency penalties, temperature, top-p:
lego-generate's processor classes, applied to this row only), its own ``torch.Generator``,
the ids that end it, and the text machinery: lego-generate's
[`TextStreamDecoder`][lego.generate.TextStreamDecoder] for whole UTF-8 characters and a
hold-back of ``len(longest stop string) - 1`` characters, so a stop string is never sent,
even in part (the same rule as [`lego.generate.stream()`][lego.generate.stream], with
``StopStrings.cut()`` (lego-generate) to cut it).

Penalties count the *generated* tokens only, as OpenAI's API and vLLM define
``presence_penalty`` and ``frequency_penalty`` (lego-generate's ``generate()`` counts the
prompt too, as transformers does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lego.generate import (
    FrequencyPenalty,
    LogitBias,
    LogitsProcessorList,
    PresencePenalty,
    StopStrings,
    Temperature,
    TextStreamDecoder,
    TopP,
)
from lego.generate.decoding import check_scores
from lego.protocols import LogitsProcessor, Tokenizer
from lego.serve.engine_types import Finish, FinishReason, SamplingParams, TokenOutput

if TYPE_CHECKING:
    from lego.serve.engine import Request

__all__ = ["Row", "TokenScore"]

TokenScore = tuple[float, tuple[tuple[int, float], ...] | None]
"""A generated token's log-probability and its top alternatives (None when not asked)."""


class _BanFrom:
    """Forbid the ids from ``size`` on (ids the tokenizer cannot decode)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        out = scores.clone()  # (B, V)
        out[:, self.size :] = float("-inf")
        return out


def processors_for(params: SamplingParams, *, decodable: int | None) -> LogitsProcessorList:
    """The logits processors of one request, in transformers' order.

    Args:
        params: The request's sampling settings.
        decodable: Ban ids from this one on (a tokenizer smaller than the model), or None.

    Returns:
        Logit bias, presence and frequency penalties, then (when sampling) temperature and
        top-p; possibly empty.
    """
    out: list[LogitsProcessor] = []
    if params.logit_bias:
        out.append(LogitBias(bias=params.logit_bias))
    if params.presence_penalty:
        out.append(PresencePenalty(penalty=params.presence_penalty))
    if params.frequency_penalty:
        out.append(FrequencyPenalty(penalty=params.frequency_penalty))
    if decodable is not None:
        out.append(_BanFrom(decodable))
    if params.temperature > 0:
        if params.temperature != 1.0:
            out.append(Temperature(temperature=params.temperature))
        if params.top_p < 1.0:
            out.append(TopP(top_p=params.top_p))
    return LogitsProcessorList(out)


class Row:
    """The state of one request while it generates.

    Args:
        request: The request (its events go there).
        tokenizer: Decodes the generated ids.
        eos_ids: The model's / tokenizer's end-of-sequence ids (ignored with
            ``params.ignore_eos``; never decoded into the text).
        decodable: Ids from this one on are never generated, or None.
        device: Where the logits live (the generator is made there).
    """

    def __init__(
        self,
        request: Request,
        *,
        tokenizer: Tokenizer,
        eos_ids: Sequence[int],
        decodable: int | None,
        device: torch.device,
    ) -> None:
        params = request.params
        self.request = request
        self.params = params
        self.prompt_length = len(request.prompt_ids)
        self.generated: list[int] = []
        self.slot = -1
        self.processors = processors_for(params, decodable=decodable)
        self.greedy = params.temperature == 0
        self.plain = self.greedy and not self.processors
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is None:
                self.generator.seed()  # nondeterministic, as asked
            else:
                self.generator.manual_seed(params.seed)
        eos = () if params.ignore_eos else tuple(eos_ids)
        self.stop_ids = frozenset((*eos, *params.stop_token_ids))
        self.decoder = TextStreamDecoder(tokenizer, skip_ids=sorted({*eos_ids, *self.stop_ids}))
        self.stops = (
            StopStrings(tokenizer=tokenizer, stop_strings=params.stop) if params.stop else None
        )
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.pending = ""
        self._context = torch.empty((1, 0), dtype=torch.long, device=device)  # (1, n)

    # -- choosing -------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The position of the last generated token (the one the next step feeds)."""
        return self.prompt_length + len(self.generated) - 1

    def choose(self, logits: Tensor) -> int:
        """Pick this row's next token.

        Args:
            logits: The model's logits for this row, ``(1, V)``.

        Returns:
            The token id.

        Raises:
            ConfigError: The processors left no token (e.g. a ``logit_bias`` banning all).
            DataError: The logits hold NaN or ``+inf``.
        """
        scores = logits
        if self.processors or not self.greedy:
            scores = self.processors(self._context, logits.float())  # (1, V)
        check_scores(logits, scores, step=len(self.generated))
        if self.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores.float(), dim=-1)  # (1, V)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    # -- accepting ------------------------------------------------------------------------

    def accept(self, token: int, score: TokenScore | None) -> tuple[TokenOutput, Finish | None]:
        """Record the chosen token and say whether the request is done.

        Args:
            token: The chosen id.
            score: Its log-probability and top alternatives, when the request asked.

        Returns:
            The token's event and the ``Finish`` event (None to go on); the caller sends
            them (after it placed the row, so a client that sees a token sees it running).
        """
        self.generated.append(token)
        if self.processors:
            self._context = torch.tensor(
                [self.generated], dtype=torch.long, device=self._context.device
            )  # (1, n)
        logprob, top = (score[0], score[1]) if score is not None else (None, None)
        piece = self.decoder.push(token)
        self.pending += piece
        finish: FinishReason | None = None
        text = ""
        if token in self.stop_ids:
            finish = "stop"
        elif self.stops is not None:
            cut = self.stops.cut(self.pending)
            if len(cut) < len(self.pending):
                text, self.pending, finish = cut, "", "stop"
            else:
                safe = max(0, len(self.pending) - self.hold)
                text, self.pending = self.pending[:safe], self.pending[safe:]
        else:
            text, self.pending = self.pending, ""
        output = TokenOutput(token_id=token, text=text, logprob=logprob, top_logprobs=top)
        if finish is None and len(self.generated) >= self.params.max_tokens:
            finish = "length"
        return output, (self.finish(finish) if finish is not None else None)

    def finish(self, reason: FinishReason, error: str | None = None) -> Finish:
        """The ``Finish`` event of this row: whatever text is still held back, cut.

        Args:
            reason: ``"stop"``, ``"length"``, ``"cancelled"`` or ``"error"``.
            error: The message of an error.

        Returns:
            The event (not sent yet).
        """
        rest = self.pending + self.decoder.flush()
        self.pending = ""
        if self.stops is not None:
            rest = self.stops.cut(rest)
        return Finish(
            reason=reason,
            text=rest,
            prompt_tokens=self.prompt_length,
            completion_tokens=len(self.generated),
            error=error,
        )
