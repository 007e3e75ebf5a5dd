"""Sampling warpers: temperature, top-k, top-p (nucleus) and min-p.

Each is a [`LogitsProcessor`][lego.protocols.LogitsProcessor]: ``(input_ids, scores) ->
scores`` with ``scores`` of shape ``(B, vocab_size)``; a removed token gets ``-inf`` (or the
processor's ``filter_value``). The arithmetic is transformers' (same thresholds, same
tie-breaking), so a warper here and its transformers namesake give equal scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lego.protocols import check_float, check_int

__all__ = ["Temperature", "TopK", "TopP", "MinP"]

_NEG_INF = float("-inf")


class Temperature:
    """Divide the scores by a temperature: above 1 flattens the distribution, below sharpens.

    Temperature 0 means greedy decoding; it is handled by the sampler (see
    [`GenerationConfig`][lego.generate.GenerationConfig]), never by dividing by zero.

    Args:
        temperature: A positive number.

    Raises:
        ConfigError: ``temperature <= 0`` or not finite.
    """

    def __init__(self, *, temperature: float) -> None:
        self.temperature = check_float(
            "temperature",
            temperature,
            owner="Temperature",
            low=0.0,
            low_open=True,
            hint="use a positive temperature (0 means greedy: do not add a Temperature warper)",
        )

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Return ``scores / temperature``, shape ``(B, vocab_size)``."""
        return scores / self.temperature

    def __repr__(self) -> str:
        return f"Temperature(temperature={self.temperature})"


class TopK:
    """Keep the ``top_k`` highest scores of each row (ties with the k-th are kept too).

    Args:
        top_k: How many tokens to keep, at least 1 (more than the vocabulary keeps all).
        filter_value: The score of a removed token.
        min_tokens_to_keep: Keep at least this many tokens (``top_k`` is raised to it).

    Raises:
        ConfigError: ``top_k < 1`` or ``min_tokens_to_keep < 1``.
    """

    def __init__(
        self, *, top_k: int, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1
    ) -> None:
        check_int("top_k", top_k, minimum=1, owner="TopK")
        check_int("min_tokens_to_keep", min_tokens_to_keep, minimum=1, owner="TopK")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Mask every score below the row's k-th largest; ``(B, V) -> (B, V)``."""
        k = min(self.top_k, int(scores.shape[-1]))
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1)
        return scores.masked_fill(scores < kth, self.filter_value)  # (B, V)

    def __repr__(self) -> str:
        return f"TopK(top_k={self.top_k})"


class TopP:
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``.

    Tokens are sorted by ascending score; those whose cumulative probability stays at or
    below ``1 - top_p`` are removed (the most probable token always stays).

    Args:
        top_p: The probability mass to keep, in ``(0, 1]`` (1 keeps everything).
        filter_value: The score of a removed token.
        min_tokens_to_keep: Keep at least this many tokens.

    Raises:
        ConfigError: ``top_p`` outside ``(0, 1]`` or ``min_tokens_to_keep < 1``.
    """

    def __init__(
        self, *, top_p: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1
    ) -> None:
        self.top_p = check_float(
            "top_p",
            top_p,
            owner="TopP",
            low=0.0,
            high=1.0,
            low_open=True,
            hint="top_p is a probability mass in (0, 1]; 1 disables it",
        )
        self.min_tokens_to_keep = check_int(
            "min_tokens_to_keep", min_tokens_to_keep, minimum=1, owner="TopP"
        )
        self.filter_value = filter_value

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Mask the low-probability tail; ``(B, V) -> (B, V)``."""
        ascending, order = torch.sort(scores, dim=-1, descending=False)  # (B, V) each
        mass = ascending.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        drop_sorted = mass <= (1 - self.top_p)  # (B, V)
        drop_sorted[..., -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V) in vocabulary order
        return scores.masked_fill(drop, self.filter_value)  # (B, V)

    def __repr__(self) -> str:
        return f"TopP(top_p={self.top_p})"


class MinP:
    """Keep the tokens whose probability is at least ``min_p`` times the top probability.

    Args:
        min_p: The relative threshold, in ``[0, 1]`` (0 keeps everything).
        filter_value: The score of a removed token.
        min_tokens_to_keep: Keep at least this many of the most probable tokens.

    Raises:
        ConfigError: ``min_p`` outside ``[0, 1]`` or ``min_tokens_to_keep < 1``.
    """

    def __init__(
        self, *, min_p: float, filter_value: float = _NEG_INF, min_tokens_to_keep: int = 1
    ) -> None:
        self.min_p = check_float(
            "min_p",
            min_p,
            owner="MinP",
            low=0.0,
            high=1.0,
            hint="min_p is a fraction of the top token's probability, in [0, 1]",
        )
        self.min_tokens_to_keep = check_int(
            "min_tokens_to_keep", min_tokens_to_keep, minimum=1, owner="MinP"
        )
        self.filter_value = filter_value

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Mask the tokens below the scaled threshold; ``(B, V) -> (B, V)``."""
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        threshold = self.min_p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
        drop = probs < threshold  # (B, V)
        keep = torch.topk(probs, min(self.min_tokens_to_keep, int(probs.shape[-1])), dim=-1)
        drop.scatter_(-1, keep.indices, False)
        return scores.masked_fill(drop, self.filter_value)  # (B, V)

    def __repr__(self) -> str:
        return f"MinP(min_p={self.min_p})"
