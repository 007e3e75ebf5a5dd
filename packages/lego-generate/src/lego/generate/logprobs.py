"""Per-token log-probabilities: the chosen token's and the most likely alternatives'.

[`chosen_logprobs()`][lego.generate.chosen_logprobs] turns one step's logits (or the scores
after the logits processors) into the log-probability of the token each row chose, plus the
``top`` most likely tokens and their log-probabilities, as OpenAI's ``logprobs`` /
``top_logprobs`` report them. The normalisation (``log_softmax``) always runs in float32,
whatever the logits' dtype, so bf16 models give the same numbers as a float32 recomputation
of the same logits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lego.protocols import ConfigError, check_int

__all__ = ["TokenLogprobs", "chosen_logprobs", "gather_logprobs"]


class TokenLogprobs(NamedTuple):
    """The log-probabilities of one step, for every row.

    Attributes:
        logprob: ``(B,)`` float32: log-probability of the token each row chose.
        top_ids: ``(B, k)`` long: the ``k`` most likely tokens, most likely first
            (``(B, 0)`` when ``top=0``).
        top_logprobs: ``(B, k)`` float32: their log-probabilities, in the same order.
    """

    logprob: Tensor
    top_ids: Tensor
    top_logprobs: Tensor


def chosen_logprobs(logits: Tensor, tokens: Tensor, *, top: int = 0) -> TokenLogprobs:
    """Log-probabilities of the chosen tokens (and the ``top`` most likely) under ``logits``.

    Args:
        logits: One step's logits (or processed scores), ``(B, V)``, any float dtype;
            ``-inf`` entries (tokens a processor removed) get log-probability ``-inf``.
        tokens: The chosen token of every row, ``(B,)``, an integer dtype, in ``[0, V)``.
        top: How many of the most likely tokens to report besides the chosen one
            (``0 <= top <= V``).

    Returns:
        A [`TokenLogprobs`][lego.generate.logprobs.TokenLogprobs]: ``logprob`` ``(B,)``
        float32, ``top_ids`` ``(B, top)`` long, ``top_logprobs`` ``(B, top)`` float32.

    Raises:
        ConfigError: ``logits`` is not a 2-D float tensor, ``tokens`` not ``(B,)`` integer
            ids in range, or ``top`` not an int in ``[0, V]``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
        >>> out = chosen_logprobs(logits, torch.tensor([2, 1]), top=2)
        >>> rounded = [round(x, 4) for x in out.logprob.tolist()]
        >>> rounded
        [-1.4076, -1.0986]
        >>> out.top_ids[0].tolist(), out.top_logprobs.shape
        ([0, 2], torch.Size([2, 2]))
    """
    _check(logits, tokens)
    vocab = int(logits.shape[1])
    check_int("top", top, minimum=0, maximum=vocab, owner="chosen_logprobs()")
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V) float32
    index = tokens.to(device=logits.device, dtype=torch.long)  # (B,)
    chosen = log_probs.gather(-1, index[:, None]).squeeze(-1)  # (B,)
    if top == 0:
        b = int(logits.shape[0])
        return TokenLogprobs(
            chosen,
            torch.empty((b, 0), dtype=torch.long, device=logits.device),
            torch.empty((b, 0), dtype=torch.float32, device=logits.device),
        )
    values, ids = log_probs.topk(top, dim=-1)  # (B, top) each, sorted: most likely first
    return TokenLogprobs(chosen, ids, values)


def gather_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """The chosen tokens' log-probabilities only, without the checks (the decode loop's).

    Args:
        logits: ``(B, V)``, any float dtype.
        tokens: ``(B,)`` long ids in ``[0, V)`` (not checked).

    Returns:
        ``(B,)`` float32, as ``chosen_logprobs(logits, tokens).logprob``.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, V) float32
    return log_probs.gather(-1, tokens.long()[:, None]).squeeze(-1)  # (B,)


def _check(logits: object, tokens: object) -> None:
    """Validate the shapes and dtypes of ``chosen_logprobs``' tensors.

    Raises:
        ConfigError: naming ``logits`` or ``tokens``.
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.dtype.is_floating_point:
        got = (
            f"shape {tuple(logits.shape)}, dtype {logits.dtype}"
            if isinstance(logits, Tensor)
            else type(logits).__name__
        )
        raise ConfigError(
            f"chosen_logprobs() takes one step's logits (B, V) as floats, got {got}",
            key="logits",
            hint="pass logits[:, -1] of the model's (B, T, V) output",
        )
    b, vocab = int(logits.shape[0]), int(logits.shape[1])
    if (
        not isinstance(tokens, Tensor)
        or tuple(tokens.shape) != (b,)
        or tokens.dtype.is_floating_point
        or tokens.dtype.is_complex
        or tokens.dtype == torch.bool
    ):
        got = (
            f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}"
            if isinstance(tokens, Tensor)
            else type(tokens).__name__
        )
        raise ConfigError(
            f"chosen_logprobs() takes one chosen id per row, ({b},) integers, got {got}",
            key="tokens",
            hint="pass the (B,) long tensor of the tokens chosen at this step",
        )
    if b and bool(((tokens < 0) | (tokens >= vocab)).any()):
        raise ConfigError(
            f"chosen_logprobs(): token ids must lie in [0, {vocab}), got {tokens.tolist()}",
            key="tokens",
            hint="the logits' last dimension is the vocabulary the ids index",
        )
