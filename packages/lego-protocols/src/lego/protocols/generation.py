"""Decoding contracts: logits processors, the composable pieces of every sampling strategy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor  # TYPE_CHECKING only: never imported at run time

__all__ = ["LogitsProcessor"]


@runtime_checkable
class LogitsProcessor(Protocol):
    """Rewrites next-token scores before sampling (temperature, top-k, penalties, ...).

    The signature is transformers' ``LogitsProcessor`` one, so processors written for
    either library plug into the other.
    """

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """Return new scores for the next token.

        Args:
            input_ids: Every token so far (prompt and generated), shape ``(B, T)``.
            scores: Next-token logits or log-probabilities, shape ``(B, vocab_size)``.
                Processors may modify it in place and return it.

        Returns:
            Scores of shape ``(B, vocab_size)``; ``-inf`` marks a forbidden token.
        """
        ...
