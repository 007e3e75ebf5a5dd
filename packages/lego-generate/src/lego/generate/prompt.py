"""Prompt checks: shapes, left padding, and fitting the model's context.

[`prepare_prompt()`][lego.generate.prompt.prepare_prompt] validates ``input_ids`` and the
padding mask, and makes sure the prompt plus the new tokens fit in ``context_length``: a
prompt that does not fit is an error, or, when asked, is cut from the left (its oldest
tokens go) with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from lego.protocols import ConfigError, DataError

__all__ = ["Prompt", "prepare_prompt", "PromptTruncatedWarning"]


class PromptTruncatedWarning(UserWarning):
    """A prompt was cut from the left to fit the model's context (``truncate_prompt=True``)."""


@dataclass(frozen=True)
class Prompt:
    """A validated prompt batch.

    Attributes:
        input_ids: The ids, ``(B, P)``, dtype long.
        attention_mask: The padding mask ``(B, P)`` (1 real, 0 left padding), or None when no
            row has padding.
        lengths: Real tokens per row, ``(B,)``.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    lengths: Tensor

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        """Prompt length ``P`` (padding included)."""
        return int(self.input_ids.shape[1])


def prepare_prompt(
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    context_length: int,
    max_new_tokens: int,
    truncate: bool = False,
    vocab_size: int | None = None,
) -> Prompt:
    """Validate a prompt batch and fit it to the context.

    Args:
        input_ids: Token ids, ``(B, P)`` (a 1-D ``(P,)`` tensor is taken as one row).
        attention_mask: 1 for real tokens, 0 for left padding, ``(B, P)``; None means none.
        context_length: The model's context length.
        max_new_tokens: Tokens to generate after the prompt.
        truncate: Cut a too-long prompt from the left (with a
            [`PromptTruncatedWarning`][lego.generate.prompt.PromptTruncatedWarning]) instead of
            raising.
        vocab_size: The model's vocabulary size: every id (padding too, the model embeds
            it) must be in ``[0, vocab_size)``; None skips the check.

    Returns:
        The validated [`Prompt`][lego.generate.prompt.Prompt].

    Raises:
        DataError: Wrong shape or dtype, an empty prompt (or an all-padding row), a mask that
            is not 0/1 or pads on the right, an id outside ``[0, vocab_size)``.
        ConfigError: The prompt plus ``max_new_tokens`` does not fit the context (without
            ``truncate``), or ``max_new_tokens`` alone does not.
    """
    if not isinstance(input_ids, Tensor):
        raise DataError(
            f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}",
            tensor="input_ids",
            hint="pass torch.tensor([ids]) (shape (batch, length))",
        )
    if input_ids.ndim == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.is_complex():
        raise DataError(
            f"input_ids must be a (batch, length) integer tensor, got shape "
            f"{tuple(input_ids.shape)} dtype {input_ids.dtype}",
            tensor="input_ids",
        )
    if input_ids.dtype == torch.bool:
        raise DataError("input_ids must hold token ids, got a bool tensor", tensor="input_ids")
    b, p = int(input_ids.shape[0]), int(input_ids.shape[1])
    if b == 0 or p == 0:
        raise DataError(
            f"the prompt is empty (input_ids has shape {tuple(input_ids.shape)})",
            tensor="input_ids",
            hint="give at least one token per row (e.g. the tokenizer's <|endoftext|> id)",
        )
    input_ids = input_ids.long()
    mask = _check_mask(attention_mask, b, p, input_ids.device)
    if vocab_size is not None:
        _check_ids(input_ids, vocab_size)
    lengths = mask.sum(dim=-1) if mask is not None else torch.full((b,), p, dtype=torch.long)
    if mask is not None and bool(mask.all()):
        mask = None
    room = context_length - max_new_tokens
    if room < 1:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"context of {context_length} tokens",
            key="max_new_tokens",
            hint=f"use max_new_tokens <= {context_length - 1}",
        )
    if p > room:
        if not truncate:
            raise ConfigError(
                f"the prompt ({p} tokens) plus max_new_tokens ({max_new_tokens}) is longer than "
                f"the model's context ({context_length} tokens)",
                key="input_ids",
                hint=f"shorten the prompt to at most {room} tokens, lower max_new_tokens, or "
                "pass truncate_prompt=True to keep only its last tokens",
            )
        warnings.warn(
            f"the prompt ({p} tokens) does not fit the context of {context_length} tokens with "
            f"{max_new_tokens} new ones: keeping its last {room} tokens",
            PromptTruncatedWarning,
            stacklevel=3,
        )
        input_ids = input_ids[:, p - room :]
        if mask is not None:
            mask = mask[:, p - room :]
            lengths = mask.sum(dim=-1)
            if bool((lengths == 0).any()):
                raise DataError(
                    "after left-truncation a row of the prompt holds only padding",
                    tensor="attention_mask",
                    hint="remove the extra padding before generating",
                )
            if bool(mask.all()):
                mask = None
        else:
            lengths = torch.full((b,), room, dtype=torch.long)
    return Prompt(input_ids=input_ids, attention_mask=mask, lengths=lengths)


def _check_mask(mask: Tensor | None, b: int, p: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    given: object = mask
    if not isinstance(given, Tensor) or tuple(mask.shape) != (b, p):
        shape = tuple(mask.shape) if isinstance(given, Tensor) else type(given).__name__
        raise DataError(
            f"attention_mask must have the shape of input_ids ({b}, {p}), got {shape}",
            tensor="attention_mask",
        )
    as_long = mask.to(device=device, dtype=torch.long)  # (B, P)
    if bool(((as_long != 0) & (as_long != 1)).any()):
        raise DataError(
            "attention_mask must hold only 0 (padding) and 1 (real token)",
            tensor="attention_mask",
        )
    empty = (as_long.sum(dim=-1) == 0).nonzero().flatten().tolist()
    if empty:
        raise DataError(
            f"prompt row(s) {empty} are empty (all padding)",
            tensor="attention_mask",
            hint="give every row at least one real token",
        )
    if p > 1 and bool((as_long[:, 1:] < as_long[:, :-1]).any()):
        raise DataError(
            "attention_mask pads on the right (or in the middle); generation needs left padding",
            tensor="attention_mask",
            hint="pad prompts on the left (tokenizer padding_side='left')",
        )
    return as_long


def _check_ids(input_ids: Tensor, vocab_size: int) -> None:
    """Every id (padding included: it is embedded too) in ``[0, vocab_size)``."""
    outside = (input_ids < 0) | (input_ids >= vocab_size)
    if bool(outside.any()):
        first = int(input_ids[outside][0])
        raise DataError(
            f"the prompt holds token id {first}, outside the model's vocabulary of "
            f"{vocab_size} ids",
            tensor="input_ids",
            hint="encode the prompt with the tokenizer the model was trained with",
        )
