"""Penalties and constraints: repetition, presence, frequency, n-gram blocking, logit bias.

Each is a [`LogitsProcessor`][lego.protocols.LogitsProcessor] that reads the tokens so far,
``input_ids`` of shape ``(B, T)`` (prompt and generated tokens, as transformers passes them),
and rewrites the next-token ``scores`` of shape ``(B, vocab_size)``. Ids at or beyond
``vocab_size`` in ``input_ids`` (an embedding larger than the head) are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lego.protocols import ConfigError, check_float, check_int

__all__ = [
    "RepetitionPenalty",
    "PresencePenalty",
    "FrequencyPenalty",
    "NoRepeatNGram",
    "LogitBias",
]


def _seen(input_ids: Tensor, vocab_size: int) -> Tensor:
    """Which tokens occur in each row: bool ``(B, vocab_size)``."""
    ids = input_ids.clamp(min=0, max=vocab_size)  # (B, T); beyond the vocab -> spare column
    seen = torch.zeros(
        (ids.shape[0], vocab_size + 1), dtype=torch.bool, device=ids.device
    )  # (B, V + 1)
    seen.scatter_(1, ids, True)
    return seen[:, :vocab_size]  # (B, V)


def _counts(input_ids: Tensor, vocab_size: int, dtype: torch.dtype) -> Tensor:
    """How often each token occurs in each row: ``(B, vocab_size)`` in ``dtype``."""
    ids = input_ids.clamp(min=0, max=vocab_size)  # (B, T)
    counts = torch.zeros((ids.shape[0], vocab_size + 1), dtype=dtype, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones(ids.shape, dtype=dtype, device=ids.device))
    return counts[:, :vocab_size]  # (B, V)


class RepetitionPenalty:
    """Penalize every token already present (CTRL's repetition penalty, as transformers).

    A seen token's positive score is divided by ``penalty`` and its negative score
    multiplied by it, so ``penalty > 1`` discourages repeats and ``penalty < 1`` favours them.

    Args:
        penalty: A positive number (1 changes nothing).

    Raises:
        ConfigError: ``penalty <= 0``.
    """

    def __init__(self, *, penalty: float) -> None:
        self.penalty = check_float(
            "repetition_penalty",
            penalty,
            owner="RepetitionPenalty",
            low=0.0,
            low_open=True,
            hint="use a positive penalty: > 1 discourages repeats, 1 disables it",
        )

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Penalize the scores of the tokens in ``input_ids``; ``(B, V) -> (B, V)``."""
        seen = _seen(input_ids, int(scores.shape[-1]))  # (B, V)
        penalized = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalized, scores)  # (B, V)

    def __repr__(self) -> str:
        return f"RepetitionPenalty(penalty={self.penalty})"


class PresencePenalty:
    """Subtract a fixed amount from every token already present (OpenAI's presence penalty).

    Args:
        penalty: Subtracted once per seen token; negative values favour repeats.

    Raises:
        ConfigError: ``penalty`` is not a finite number.
    """

    def __init__(self, *, penalty: float) -> None:
        self.penalty = check_float("presence_penalty", penalty, owner="PresencePenalty")

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Return ``scores - penalty * seen``; ``(B, V) -> (B, V)``."""
        seen = _seen(input_ids, int(scores.shape[-1]))  # (B, V)
        return scores - self.penalty * seen.to(scores.dtype)  # (B, V)

    def __repr__(self) -> str:
        return f"PresencePenalty(penalty={self.penalty})"


class FrequencyPenalty:
    """Subtract an amount proportional to how often a token occurred (OpenAI's penalty).

    Args:
        penalty: Subtracted per occurrence; negative values favour repeats.

    Raises:
        ConfigError: ``penalty`` is not a finite number.
    """

    def __init__(self, *, penalty: float) -> None:
        self.penalty = check_float("frequency_penalty", penalty, owner="FrequencyPenalty")

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Return ``scores - penalty * count``; ``(B, V) -> (B, V)``."""
        counts = _counts(input_ids, int(scores.shape[-1]), scores.dtype)  # (B, V)
        return scores - self.penalty * counts  # (B, V)

    def __repr__(self) -> str:
        return f"FrequencyPenalty(penalty={self.penalty})"


class NoRepeatNGram:
    """Forbid any token that would repeat an n-gram already present in the row.

    With ``ngram_size = n`` the last ``n - 1`` tokens are compared with every earlier window
    of ``n - 1`` tokens; the token that followed each matching window is banned.

    Args:
        ngram_size: The n-gram length, at least 1 (1 bans every token already present).

    Raises:
        ConfigError: ``ngram_size < 1``.
    """

    def __init__(self, *, ngram_size: int) -> None:
        self.ngram_size = check_int(
            "no_repeat_ngram_size", ngram_size, minimum=1, owner="NoRepeatNGram"
        )

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Set the banned tokens' scores to ``-inf``; ``(B, V) -> (B, V)``."""
        n = self.ngram_size
        length = int(input_ids.shape[-1])
        if length < n:
            return scores
        vocab = int(scores.shape[-1])
        windows = input_ids.unfold(1, n, 1)  # (B, L - n + 1, n)
        suffix = input_ids[:, length - n + 1 :]  # (B, n - 1)
        hit = (windows[..., : n - 1] == suffix[:, None, :]).all(dim=-1)  # (B, L - n + 1)
        follower = windows[..., -1].clamp(min=0, max=vocab)  # (B, L - n + 1)
        target = torch.where(hit, follower, torch.full_like(follower, vocab))  # (B, L - n + 1)
        banned = torch.zeros((scores.shape[0], vocab + 1), dtype=torch.bool, device=scores.device)
        banned.scatter_(1, target, True)
        return scores.masked_fill(banned[:, :vocab], float("-inf"))  # (B, V)

    def __repr__(self) -> str:
        return f"NoRepeatNGram(ngram_size={self.ngram_size})"


class LogitBias:
    """Add a fixed bias to chosen tokens (OpenAI's ``logit_bias``; ``-inf`` bans a token).

    Args:
        bias: Token id to the number added to its score.

    Raises:
        ConfigError: An id is not a non-negative int, or a bias is NaN or ``+inf``.
    """

    def __init__(self, *, bias: Mapping[int, float]) -> None:
        if not isinstance(bias, Mapping):
            raise ConfigError(
                f"LogitBias: bias must be a mapping of token id to bias, got {type(bias).__name__}",
                key="logit_bias",
                hint="pass e.g. {50256: -100.0}",
            )
        ids: list[int] = []
        values: list[float] = []
        items: list[tuple[object, object]] = list(bias.items())
        for token_id, value in items:
            token = check_int("logit_bias token id", token_id, minimum=0, owner="LogitBias")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(
                    f"LogitBias: the bias of token {token_id} must be a number, got {value!r}",
                    key=f"logit_bias[{token_id}]",
                )
            if value == float("inf"):
                raise ConfigError(
                    f"LogitBias: the bias of token {token_id} is +inf, which makes every "
                    "probability NaN",
                    key=f"logit_bias[{token_id}]",
                    hint="use a large finite bias (e.g. 100) to force a token; -inf bans one",
                )
            ids.append(token)
            values.append(float(value))
        self.bias = dict(zip(ids, values, strict=True))
        self._ids = ids
        self._values = values
        self._cache: tuple[torch.device, torch.dtype, Tensor, Tensor] | None = None

    def _tensors(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[:2] != (scores.device, scores.dtype):
            ids = torch.tensor(self._ids, dtype=torch.long, device=scores.device)
            values = torch.tensor(self._values, dtype=scores.dtype, device=scores.device)
            self._cache = (scores.device, scores.dtype, ids, values)
        return self._cache[2], self._cache[3]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Return the scores with the biases added; ``(B, V) -> (B, V)``.

        Raises:
            ConfigError: A biased id is not below ``vocab_size``.
        """
        if not self._ids:
            return scores
        vocab = int(scores.shape[-1])
        too_big = [i for i in self._ids if i >= vocab]
        if too_big:
            raise ConfigError(
                f"LogitBias: token id(s) {too_big} are outside the vocabulary of {vocab}",
                key="logit_bias",
                hint=f"bias ids in [0, {vocab})",
            )
        ids, values = self._tensors(scores)
        out = scores.clone()  # (B, V)
        out[:, ids] += values
        return out

    def __repr__(self) -> str:
        return f"LogitBias(bias={self.bias})"
