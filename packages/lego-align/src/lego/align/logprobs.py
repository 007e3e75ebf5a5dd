"""Sequence log-probabilities of completions given prompts, in TRL's batch layout.

Two steps, each usable alone:

1. [`build_preference_batch()`][lego.align.logprobs.build_preference_batch] (and
   [`build_completion_batch()`][lego.align.logprobs.build_completion_batch] for unpaired
   completions) turns token ids into padded tensors: ``prompt + completion`` per row, EOS
   appended to completions that lack it, ``[chosen; rejected]`` stacked on the batch
   dimension (TRL's ``DataCollatorForPreference`` layout), a completion mask, position ids,
   and truncation that cuts the prompt from the left, never the completion.
2. [`sequence_logprobs()`][lego.align.logprobs.sequence_logprobs] runs a model (any
   ``lego.protocols.CausalLM``, or any function with the same call signature) and sums
   ``log p(token | prefix)`` over the completion tokens of each row, with the log-softmax
   taken a chunk of positions at a time.

Memory. ``sequence_logprobs`` never materialises the ``(B, T, vocab)`` log-softmax in
float32. The ``CausalLM`` contract returns logits, so on that path the logits exist (in the
model's dtype); the log-probabilities are computed from them by an autograd function that
handles ``chunk_size`` positions at a time, saves only the logits it was given and one
log-sum-exp per position, and in the backward pass writes the gradient chunk by chunk into
one tensor of the logits' dtype. Peak extra memory: ``(B, chunk_size, vocab)`` in float32
(plus the logits' gradient, which any loss on the logits needs). A model or function that
returns [`HeadInputs`][lego.align.logprobs.HeadInputs] (its last hidden states and the
output head's weight) avoids the full logits entirely: each chunk's logits are computed,
reduced and dropped, and recomputed in the backward pass under ``torch.utils.checkpoint``,
so only ``(B, chunk_size, vocab)`` ever exists at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the universal alias
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable
from torch.utils.checkpoint import checkpoint

from lego.protocols import CausalLM, ConfigError, DataError, check_choice, check_int

__all__ = [
    "CompletionBatch",
    "build_completion_batch",
    "build_preference_batch",
    "HeadInputs",
    "SequenceLogprobs",
    "sequence_logprobs",
    "token_logprobs",
]

PaddingSide = Literal["right", "left"]
Overflow = Literal["drop", "error"]


# -- the batch --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompletionBatch:
    """Padded ``prompt + completion`` rows, ready for a model and `sequence_logprobs`.

    For a preference batch (`build_preference_batch`) the ``2 * P`` rows are the ``P``
    chosen rows then the ``P`` rejected rows of the kept pairs, in the same order (TRL's
    ``[chosen; rejected]`` layout); ``result.chunk(2)`` splits them.

    Attributes:
        input_ids: Token ids, ``(N, T)`` long; padding holds ``pad_id``.
        attention_mask: 1 for real tokens, 0 for padding, ``(N, T)`` long.
        completion_mask: 1 for completion tokens (EOS included), 0 for prompt and
            padding, ``(N, T)`` long.
        position_ids: ``(N, T)`` long: 0 at each row's first real token, counting up over
            real tokens (0 on padding), so left padding does not move positions (pass
            them to RoPE models).
        kept: Indices of the examples in the batch, in order (examples that did not fit
            ``max_length`` are left out when ``on_overflow="drop"``).
        truncated: Number of kept examples whose prompt was cut from the left.
        dropped: Number of examples left out because a completion alone did not fit.
        padding_side: ``"right"`` or ``"left"``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    completion_mask: Tensor
    position_ids: Tensor
    kept: tuple[int, ...]
    truncated: int
    dropped: int
    padding_side: PaddingSide


def build_preference_batch(
    examples: Sequence[Mapping[str, Sequence[int]]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_length: int | None = None,
    padding_side: PaddingSide = "right",
    pad_to_multiple_of: int | None = None,
    on_overflow: Overflow = "drop",
) -> CompletionBatch:
    """Lay out preference pairs as TRL does: ``[chosen; rejected]`` rows, padded.

    Each example holds ``prompt_ids``, ``chosen_ids`` and ``rejected_ids`` (TRL's tokenized
    column names). Row ``i`` is ``prompt + chosen`` of the ``i``-th kept pair and row
    ``P + i`` is ``prompt + rejected`` of the same pair.

    - EOS: ``eos_id`` is appended to each completion that does not already end with it
      (None appends nothing: the completions carry their own end-of-turn tokens).
    - Truncation: when ``len(prompt) + len(longest completion of the pair)`` exceeds
      ``max_length``, the prompt is cut from the left (its last tokens, next to the
      completion, stay) to the same length for both rows of the pair; completions are never
      cut, so their EOS is always trained. At least one prompt token stays (the first
      completion token needs a context); a pair whose completion does not fit beside it is
      dropped (``on_overflow="drop"``, counted in ``dropped``) or refused
      (``on_overflow="error"``). TRL's collator instead cuts the end of each row
      (``truncation_mode="keep_start"``), which can remove the EOS.
    - Padding: ``"right"`` (TRL's layout) puts ``pad_id`` after each row, ``"left"``
      before it; in both cases ``attention_mask`` is 0 there, ``completion_mask`` is 0
      there, and ``position_ids`` count real tokens only, so a model that uses the mask
      and the positions gives the same log-probabilities either way.

    Args:
        examples: Pairs with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (lists of
            token ids; the prompt and both completions non-empty).
        pad_id: The id written into padding (masked out everywhere).
        eos_id: The end-of-sequence id to append, or None.
        max_length: The longest row, or None for no limit (at least 2).
        padding_side: ``"right"`` or ``"left"``.
        pad_to_multiple_of: Round the padded length up to a multiple of this, or None.
        on_overflow: ``"drop"`` or ``"error"`` for a pair whose completion does not fit.

    Returns:
        The batch (``2 * len(result.kept)`` rows).

    Raises:
        ConfigError: A bad argument (named in the message).
        DataError: An example lacks a field, has an empty prompt or completion, a negative
            id, or (``on_overflow="error"``) a completion longer than ``max_length - 1``; or
            no example fits.

    Example:
        >>> batch = build_preference_batch(
        ...     [{"prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8, 9]}],
        ...     pad_id=0, eos_id=2)
        >>> batch.input_ids
        tensor([[5, 6, 7, 2, 0],
                [5, 6, 8, 9, 2]])
        >>> batch.completion_mask
        tensor([[0, 0, 1, 1, 0],
                [0, 0, 1, 1, 1]])
    """
    rows = [
        _fields(example, i, ("chosen_ids", "rejected_ids")) for i, example in enumerate(examples)
    ]
    return _build(
        rows,
        pad_id=pad_id,
        eos_id=eos_id,
        max_length=max_length,
        padding_side=padding_side,
        pad_to_multiple_of=pad_to_multiple_of,
        on_overflow=on_overflow,
    )


def build_completion_batch(
    examples: Sequence[Mapping[str, Sequence[int]]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_length: int | None = None,
    padding_side: PaddingSide = "right",
    pad_to_multiple_of: int | None = None,
    on_overflow: Overflow = "drop",
) -> CompletionBatch:
    """Lay out single completions (``prompt_ids`` + ``completion_ids``), one row each.

    The same rules as [`build_preference_batch()`][lego.align.logprobs.build_preference_batch]
    (EOS appended, prompt cut from the left, completion never cut, padding either side),
    for unpaired data such as KTO's desirable / undesirable completions.

    Args:
        examples: Examples with ``prompt_ids`` and ``completion_ids`` (non-empty).
        pad_id: The id written into padding.
        eos_id: The end-of-sequence id to append, or None.
        max_length: The longest row, or None for no limit (at least 2).
        padding_side: ``"right"`` or ``"left"``.
        pad_to_multiple_of: Round the padded length up to a multiple of this, or None.
        on_overflow: ``"drop"`` or ``"error"`` for a completion that does not fit.

    Returns:
        The batch (``len(result.kept)`` rows).

    Raises:
        ConfigError: A bad argument.
        DataError: A missing field, an empty prompt or completion, a negative id, an
            overflow with ``on_overflow="error"``, or no example that fits.

    Example:
        >>> batch = build_completion_batch(
        ...     [{"prompt_ids": [1, 2, 3, 4], "completion_ids": [5, 6]}],
        ...     pad_id=0, eos_id=9, max_length=5)
        >>> batch.input_ids, batch.truncated
        (tensor([[3, 4, 5, 6, 9]]), 1)
    """
    rows = [_fields(example, i, ("completion_ids",)) for i, example in enumerate(examples)]
    return _build(
        rows,
        pad_id=pad_id,
        eos_id=eos_id,
        max_length=max_length,
        padding_side=padding_side,
        pad_to_multiple_of=pad_to_multiple_of,
        on_overflow=on_overflow,
    )


_Row = tuple[int, list[int], dict[str, list[int]]]


def _fields(example: Mapping[str, Sequence[int]], index: int, names: tuple[str, ...]) -> _Row:
    """Read ``prompt_ids`` and the completion fields of one example as lists of ints."""
    if not isinstance(example, Mapping):
        raise DataError(
            f"example {index} is a {type(example).__name__}, not a mapping",
            hint=f"pass dicts with prompt_ids and {', '.join(names)}",
        )
    out: dict[str, list[int]] = {}
    for name in ("prompt_ids", *names):
        if name not in example:
            raise DataError(
                f"example {index} has no {name!r}",
                key=name,
                hint=f"each example needs prompt_ids and {', '.join(names)} (token id lists)",
            )
        try:
            ids = [int(token) for token in example[name]]
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"example {index}: {name} must be a sequence of token ids ({exc})", key=name
            ) from exc
        if not ids:
            what = "prompt" if name == "prompt_ids" else "completion"
            hint = (
                "start the prompt with a BOS token: the first completion token needs a context"
                if name == "prompt_ids"
                else "remove the example (an empty completion teaches nothing but EOS)"
            )
            raise DataError(f"example {index}: empty {what} ({name})", key=name, hint=hint)
        if min(ids) < 0:
            raise DataError(
                f"example {index}: {name} holds a negative token id ({min(ids)})", key=name
            )
        out[name] = ids
    prompt = out.pop("prompt_ids")
    return index, prompt, out


def _build(
    rows: list[_Row],
    *,
    pad_id: int,
    eos_id: int | None,
    max_length: int | None,
    padding_side: PaddingSide,
    pad_to_multiple_of: int | None,
    on_overflow: Overflow,
) -> CompletionBatch:
    """Truncate, append EOS, pad and stack (completion fields in the order given)."""
    check_int("pad_id", pad_id, minimum=0)
    if eos_id is not None:
        check_int("eos_id", eos_id, minimum=0, hint="pass a token id, or None to append nothing")
    if max_length is not None:
        check_int("max_length", max_length, minimum=2, hint="pass None for no limit, or >= 2")
    if pad_to_multiple_of is not None:
        check_int("pad_to_multiple_of", pad_to_multiple_of, minimum=1)
    side = check_choice("padding_side", padding_side, ("right", "left"))
    check_choice("on_overflow", on_overflow, ("drop", "error"))
    if not rows:
        raise DataError("no examples to batch", hint="pass at least one example")

    kept: list[int] = []
    prompts: list[list[int]] = []
    completions: list[list[list[int]]] = []
    truncated = dropped = 0
    for index, prompt, fields in rows:
        done = []
        for ids in fields.values():
            if eos_id is not None and ids[-1] != eos_id:
                ids = [*ids, eos_id]
            done.append(ids)
        longest = max(len(ids) for ids in done)
        if max_length is not None and len(prompt) + longest > max_length:
            room = max_length - longest
            if room < 1:
                if on_overflow == "error":
                    name = max(fields, key=lambda key: len(fields[key]))
                    raise DataError(
                        f"example {index}: {name} has {longest} tokens (EOS included), more "
                        f"than max_length - 1 = {max_length - 1}",
                        key=name,
                        hint="raise max_length, shorten the completion, or pass "
                        'on_overflow="drop" to leave such examples out (counted)',
                    )
                dropped += 1
                continue
            prompt = prompt[-room:]  # the prompt's end, next to the completion, stays
            truncated += 1
        kept.append(index)
        prompts.append(prompt)
        completions.append(done)
    if not kept:
        raise DataError(
            f"none of the {len(rows)} examples fits max_length={max_length} (each completion "
            "needs one prompt token before it)",
            key="max_length",
            hint="raise max_length",
        )

    # Rows field by field: all first completions (chosen), then all second ones (rejected).
    seqs = [
        (prompt, group[field])
        for field in range(len(completions[0]))
        for prompt, group in zip(prompts, completions, strict=True)
    ]
    width = max(len(prompt) + len(completion) for prompt, completion in seqs)
    if pad_to_multiple_of is not None:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n = len(seqs)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.long)
    for row, (prompt, completion) in enumerate(seqs):
        length = len(prompt) + len(completion)
        start = 0 if side == "right" else width - length
        input_ids[row, start : start + length] = torch.tensor(prompt + completion)
        attention_mask[row, start : start + length] = 1
        completion_mask[row, start + len(prompt) : start + length] = 1
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (N, T)
    return CompletionBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_mask=completion_mask,
        position_ids=position_ids,
        kept=tuple(kept),
        truncated=truncated,
        dropped=dropped,
        padding_side="right" if side == "right" else "left",
    )


# -- log-probabilities --------------------------------------------------------------------


class HeadInputs(NamedTuple):
    """What a model may return instead of logits: the output head's input and weights.

    With these, `sequence_logprobs` computes the logits a chunk of positions at a time
    (``hidden @ weight.T + bias``) and recomputes them in the backward pass, so the full
    ``(B, T, vocab)`` logits never exist.

    Attributes:
        hidden: The last hidden states (after the final norm), ``(B, T, d_model)``.
        weight: The output head's weight, ``(vocab, d_model)``.
        bias: The output head's bias, ``(vocab,)``, or None.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None


@dataclasses.dataclass(frozen=True)
class SequenceLogprobs:
    """Log-probabilities of the completion tokens, per token and per row.

    Attributes:
        token_logps: ``(N, T)``: ``log p(input_ids[:, t] | input_ids[:, :t])`` where ``t``
            is a completion token, 0 elsewhere (column 0 is always 0).
        sum: ``(N,)``: the sum over each row's completion tokens (DPO's sequence
            log-probability).
        count: ``(N,)`` long: the number of completion tokens scored in each row.
        mean: ``(N,)``: ``sum / max(count, 1)`` (SimPO's and ORPO's length-normalised
            log-probability).
    """

    token_logps: Tensor
    sum: Tensor
    count: Tensor
    mean: Tensor

    def chunk(self, parts: int = 2) -> tuple[SequenceLogprobs, ...]:
        """Split the rows into ``parts`` equal groups, e.g. ``chosen, rejected = lp.chunk()``.

        Args:
            parts: The number of groups; the row count must be a multiple of it.

        Returns:
            One `SequenceLogprobs` per group, rows in order.

        Raises:
            ConfigError: The rows do not split evenly.
        """
        rows = int(self.sum.shape[0])
        if parts < 1 or rows % parts:
            raise ConfigError(
                f"SequenceLogprobs.chunk: {rows} rows do not split into {parts} equal groups",
                key="parts",
            )
        fields = [
            t.chunk(parts, dim=0) for t in (self.token_logps, self.sum, self.count, self.mean)
        ]
        return tuple(SequenceLogprobs(*group) for group in zip(*fields, strict=True))


LogitsFn = Callable[..., Any]
"""Called as ``fn(input_ids, attention_mask=..., position_ids=...)`` (the ``CausalLM``
call); returns logits ``(B, T, vocab)`` or [`HeadInputs`][lego.align.logprobs.HeadInputs]."""


def sequence_logprobs(
    model_or_logits_fn: CausalLM | LogitsFn,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    position_ids: Tensor | None = None,
    chunk_size: int = 128,
) -> SequenceLogprobs:
    """Sum the log-probabilities of each row's completion tokens given what precedes them.

    Calls ``model_or_logits_fn(input_ids, attention_mask=attention_mask,
    position_ids=position_ids)`` once (the ``CausalLM`` contract), then computes
    ``log softmax(logits[:, t - 1])[input_ids[:, t]]`` for every position ``t`` where
    ``completion_mask`` and ``attention_mask`` are both 1, ``chunk_size`` positions at a
    time (see the module's docstring for what is kept in memory), in float32 (or the
    logits' dtype when wider). Gradients flow into the model's parameters (or into the
    logits / hidden states the function returned). Positions outside the completion never
    contribute, not even a NaN from a fully masked padding row.

    Args:
        model_or_logits_fn: A ``CausalLM``, or a function with its call signature that
            returns logits ``(B, T, vocab)`` or a `HeadInputs`.
        input_ids: ``(B, T)`` long.
        attention_mask: ``(B, T)``, 1 for real tokens (passed to the model).
        completion_mask: ``(B, T)``, 1 for the tokens to score; ``completion_mask[:, 0]``
            must be 0 (the first token has no context).
        position_ids: ``(B, T)`` passed to the model, or None (the model's default). Pass
            the batch's ``position_ids`` with left padding.
        chunk_size: Positions per chunk of the log-softmax (>= 1).

    Returns:
        Per-token and per-row log-probabilities (`SequenceLogprobs`).

    Raises:
        ConfigError: Mismatched shapes, a bad ``chunk_size``, or a model output that is not
            ``(B, T, vocab)`` logits or `HeadInputs`.
        DataError: ``completion_mask`` marks a token at position 0.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
        >>> lp = sequence_logprobs(lambda ids, **kw: logits, torch.tensor([[1, 2, 3]]),
        ...                        torch.ones(1, 3), torch.tensor([[0, 1, 1]]))
        >>> lp.sum, lp.count, lp.mean
        (tensor([-2.7726]), tensor([2]), tensor([-1.3863]))
    """
    _check_pair("input_ids", input_ids, "attention_mask", attention_mask)
    _check_pair("input_ids", input_ids, "completion_mask", completion_mask)
    if position_ids is not None:
        _check_pair("input_ids", input_ids, "position_ids", position_ids)
    check_int("chunk_size", chunk_size, minimum=1)
    if input_ids.shape[1] > 0 and bool(completion_mask[:, 0].any()):
        raise DataError(
            "completion_mask marks the first position of a row: that token has no context",
            tensor="completion_mask",
            hint="every row needs at least one prompt token (e.g. BOS) before its completion",
        )
    out = model_or_logits_fn(input_ids, attention_mask=attention_mask, position_ids=position_ids)
    scored = completion_mask.bool() & attention_mask.bool()  # (B, T)
    token_logps = token_logprobs(out, input_ids, scored, chunk_size=chunk_size)  # (B, T)
    total = token_logps.sum(dim=1)  # (B,)
    count = scored.sum(dim=1)  # (B,)
    mean = total / count.clamp(min=1).to(total.dtype)  # (B,)
    return SequenceLogprobs(token_logps=token_logps, sum=total, count=count, mean=mean)


def token_logprobs(
    logits_or_head: Tensor | HeadInputs,
    input_ids: Tensor,
    scored: Tensor,
    *,
    chunk_size: int = 128,
) -> Tensor:
    """``log p(input_ids[:, t] | input_ids[:, :t])`` at the scored positions, chunk by chunk.

    Args:
        logits_or_head: Logits ``(B, T, vocab)`` (position ``t`` predicts token ``t + 1``),
            or `HeadInputs` whose hidden states are ``(B, T, d_model)``.
        input_ids: ``(B, T)`` long.
        scored: ``(B, T)`` bool: the tokens to score (``scored[:, 0]`` is ignored: the
            first token has no context).
        chunk_size: Positions per chunk (>= 1).

    Returns:
        ``(B, T)`` log-probabilities, 0 where not scored, in float32 or wider.

    Raises:
        ConfigError: The logits / hidden states do not match ``input_ids``.

    Example:
        >>> import torch
        >>> logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
        >>> token_logprobs(logits, torch.tensor([[0, 1]]), torch.tensor([[False, True]])).exp()
        tensor([[1.0000, 0.2500]])
    """
    check_int("chunk_size", chunk_size, minimum=1)
    b, t = int(input_ids.shape[0]), int(input_ids.shape[1])
    if isinstance(logits_or_head, HeadInputs):
        hidden = logits_or_head.hidden
        if hidden.dim() != 3 or tuple(hidden.shape[:2]) != (b, t):
            raise ConfigError(
                f"HeadInputs.hidden has shape {tuple(hidden.shape)}, expected ({b}, {t}, d_model)",
                tensor="hidden",
            )
    elif isinstance(logits_or_head, Tensor):
        if logits_or_head.dim() != 3 or tuple(logits_or_head.shape[:2]) != (b, t):
            raise ConfigError(
                f"the model returned logits of shape {tuple(logits_or_head.shape)}, expected "
                f"({b}, {t}, vocab)",
                tensor="logits",
                hint="return logits (B, T, vocab) for input_ids (B, T), or HeadInputs",
            )
    else:
        raise ConfigError(
            f"the model returned a {type(logits_or_head).__name__}, not logits or HeadInputs",
            hint="pass a CausalLM (it returns logits) or a function returning logits / HeadInputs",
        )
    targets = input_ids[:, 1:]  # (B, T-1): position t-1 predicts token t
    mask = scored[:, 1:].bool()  # (B, T-1)
    columns = mask.any(dim=0).nonzero()
    lo, hi = (int(columns[0]), int(columns[-1]) + 1) if columns.numel() else (0, 0)
    if isinstance(logits_or_head, HeadInputs):
        shifted = _head_logprobs(logits_or_head, targets, mask, lo, hi, chunk_size)
    else:
        shifted = _GatherLogprobs.apply(  # type: ignore[no-untyped-call]
            logits_or_head, targets, mask, lo, hi, chunk_size
        )
    return F.pad(shifted, (1, 0))  # (B, T): column 0 scores nothing


def _check_pair(name_a: str, a: Tensor, name_b: str, b: object) -> None:
    if not isinstance(b, Tensor) or b.dim() != 2 or tuple(b.shape) != tuple(a.shape):
        shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
        raise ConfigError(
            f"{name_b} has shape {shape}, expected {name_a}'s {tuple(a.shape)} (B, T)",
            key=name_b,
            tensor=name_b,
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _GatherLogprobs(torch.autograd.Function):
    """Chunked ``log_softmax(logits)[target]`` that saves the logits and one LSE per position.

    Forward: for positions ``[lo, hi)`` a chunk at a time, ``logit[target] - logsumexp``.
    Backward: ``d/dlogits = g * (onehot(target) - softmax(logits))``, recomputing the
    softmax from the saved log-sum-exp, written chunk by chunk into a gradient of the
    logits' dtype. Unscored positions get exactly 0 (NaN logits there are ignored).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        logits: Tensor,
        targets: Tensor,
        mask: Tensor,
        lo: int,
        hi: int,
        chunk_size: int,
    ) -> Tensor:
        dtype = _compute_dtype(logits.dtype)
        b, span = int(targets.shape[0]), int(targets.shape[1])
        out = torch.zeros((b, span), dtype=dtype, device=logits.device)  # (B, T-1)
        lse = torch.zeros((b, span), dtype=dtype, device=logits.device)  # (B, T-1)
        for start in range(lo, hi, chunk_size):
            end = min(start + chunk_size, hi)
            block = logits[:, start:end].to(dtype)  # (B, c, V)
            block_lse = torch.logsumexp(block, dim=-1)  # (B, c)
            picked = block.gather(-1, targets[:, start:end, None]).squeeze(-1)  # (B, c)
            keep = mask[:, start:end]
            out[:, start:end] = torch.where(keep, picked - block_lse, 0.0)
            lse[:, start:end] = block_lse
            del block
        ctx.save_for_backward(logits, targets, mask, lse)
        ctx.span = (lo, hi, chunk_size)  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None, None]:
        logits, targets, mask, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        lo, hi, chunk_size = ctx.span
        dtype = lse.dtype
        grad = torch.zeros_like(logits)  # (B, T, V), the logits' dtype
        for start in range(lo, hi, chunk_size):
            end = min(start + chunk_size, hi)
            keep = mask[:, start:end, None]  # (B, c, 1)
            g = torch.where(keep, grad_out[:, start:end, None].to(dtype), 0.0)  # (B, c, 1)
            block = logits[:, start:end].to(dtype)  # (B, c, V)
            probs = torch.exp(block - lse[:, start:end, None])  # softmax, (B, c, V)
            del block
            probs.mul_(-g).scatter_add_(-1, targets[:, start:end, None], g)
            grad[:, start:end] = probs.masked_fill_(~keep, 0.0)  # NaN logits there: still 0
            del probs
        return grad, None, None, None, None, None


def _head_chunk(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, keep: Tensor
) -> Tensor:
    """Log-probabilities of one chunk from the head's input: ``(B, c, D) -> (B, c)``."""
    hidden = torch.where(keep[..., None], hidden, 0.0)  # padding (maybe NaN) never reaches it
    logits = F.linear(hidden, weight, bias)  # (B, c, V)
    logits = logits.to(_compute_dtype(logits.dtype))
    picked = logits.gather(-1, targets[..., None]).squeeze(-1)  # (B, c)
    return torch.where(keep, picked - torch.logsumexp(logits, dim=-1), 0.0)


def _head_logprobs(
    head: HeadInputs, targets: Tensor, mask: Tensor, lo: int, hi: int, chunk_size: int
) -> Tensor:
    """Chunked log-probabilities from hidden states, each chunk recomputed in backward."""
    hidden, weight, bias = head
    b = int(targets.shape[0])
    dtype = _compute_dtype(torch.promote_types(hidden.dtype, weight.dtype))
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    parts = [torch.zeros((b, lo), dtype=dtype, device=hidden.device)]
    for start in range(lo, hi, chunk_size):
        end = min(start + chunk_size, hi)
        args = (hidden[:, start:end], weight, bias, targets[:, start:end], mask[:, start:end])
        if needs_grad:
            part = checkpoint(_head_chunk, *args, use_reentrant=False)
        else:
            part = _head_chunk(*args)
        parts.append(part.to(dtype))
    parts.append(torch.zeros((b, int(targets.shape[1]) - hi), dtype=dtype, device=hidden.device))
    out = torch.cat(parts, dim=1)  # (B, T-1)
    if hi == lo and needs_grad:
        out = out + 0.0 * hidden.sum()  # nothing scored: still part of the graph
    return out
