"""Exact sliding-window perplexity and bits per byte of any causal LM.

A model with a context of ``L`` tokens cannot condition a token on more than ``L`` tokens
before it, so a long text is scored in windows. Here every token after the first (every
token, with a ``prefix_id``) is scored **exactly once**, with as much left context as the
window allows:

- The first window feeds ``x[0 : min(L, N-1)]`` and scores every token it can predict,
  ``x[1] .. x[min(L, N-1)]``.
- Each later window scores the next ``stride`` tokens (the last window fewer, up to the end):
  targets ``x[a] .. x[b-1]``, fed ``x[b-1-L : b-1]`` (exactly ``L`` tokens, ending just
  before the last target). Its first target sees ``L + a - b + 1 >= L - stride + 1`` tokens of
  context, the last one sees ``L``.

Windows never need padding (all of them are ``min(L, N-1)`` tokens long), so they are stacked
``batch_size`` at a time into one forward pass with no attention mask and no KV cache. The
sum of negative log-likelihoods (nats) gives:

    mean_nll = total_nats / num_tokens
    perplexity = exp(mean_nll)
    bits_per_byte = total_nats / (ln 2 x num_bytes)       (num_bytes: UTF-8 bytes of the text)

``stride = L - c + 1`` reproduces lm-evaluation-harness's ``get_rolling_token_windows`` with
``context_len = c`` (its ``loglikelihood_rolling`` uses ``c = 1``, i.e. ``stride = L``); with a
``prefix_id`` the first token is scored too, as the harness does with its end-of-text prefix.
``docs/bricks/eval.md`` compares this with the HF perplexity guide's recipe.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lego.protocols import ModelConfig
    >>> class Uniform(nn.Module):  # every next token is equally likely: perplexity = vocab
    ...     config = ModelConfig(vocab_size=8, context_length=4)
    ...     def forward(self, ids, *, attention_mask=None, position_ids=None, kv_cache=None):
    ...         return torch.zeros(*ids.shape, 8)  # (B, T, vocab_size)
    >>> result = perplexity(Uniform(), list(range(8)) * 3, max_length=4, stride=2)
    >>> result.num_tokens, round(result.perplexity, 6)
    (23, 8.0)
    >>> spans = [(w.start, w.score_from, w.end) for w in sliding_windows(8, max_length=4, stride=2)]
    >>> spans
    [(0, 1, 5), (2, 5, 7), (3, 7, 8)]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from lego.eval.scoring import (
    DEFAULT_CHUNK_SIZE,
    OutputHead,
    eval_mode,
    model_device,
    position_nll,
)
from lego.protocols import CausalLM, ConfigError, DataError, Tokenizer

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "PerplexityResult",
    "TokenSource",
    "Window",
    "perplexity",
    "sliding_windows",
    "split_perplexity",
    "text_perplexity",
]


class TokenSource(Protocol):
    """Anything that has a length and slices into token ids: a list, a 1-D tensor, a memmap."""

    def __len__(self) -> int:
        """The number of token ids."""
        ...

    def __getitem__(self, index: slice, /) -> Any:
        """The ids of a slice, as anything ``torch.as_tensor`` takes."""
        ...


@dataclass(frozen=True)
class Window:
    """One forward pass of the sliding window.

    The model is fed positions ``start .. end-2`` and the window scores the targets at
    positions ``score_from .. end-1``: target ``t`` is predicted from the logits at input
    index ``t - 1 - start``, conditioned on ``t - start`` tokens.

    Attributes:
        start: The first input position.
        score_from: The first scored target position (``> start``).
        end: One past the last scored target (the inputs stop at ``end - 2``).
    """

    start: int
    score_from: int
    end: int

    @property
    def input_length(self) -> int:
        """Tokens fed to the model, ``end - 1 - start``."""
        return self.end - 1 - self.start

    @property
    def num_scored(self) -> int:
        """Targets scored, ``end - score_from``."""
        return self.end - self.score_from


def sliding_windows(num_tokens: int, *, max_length: int, stride: int) -> list[Window]:
    """The windows that score positions ``1 .. num_tokens-1`` each exactly once.

    Args:
        num_tokens: The length ``N`` of the token sequence (at least 2).
        max_length: The most tokens fed to the model at once, ``L`` (at least 1).
        stride: Targets scored per window after the first, ``1 <= stride <= L``; every
            target then has at least ``L - stride + 1`` tokens of context (all of them when
            fewer are before it).

    Returns:
        The windows in order: the first scores ``1 .. min(L, N-1)``; each later one the next
        ``stride`` targets (the last one what remains), fed the ``L`` tokens before its last
        target.

    Raises:
        ConfigError: When ``max_length`` or ``stride`` is out of range.
        DataError: When ``num_tokens < 2``.

    Example:
        >>> windows = sliding_windows(6, max_length=3, stride=3)
        >>> spans = [(w.start, w.score_from, w.end) for w in windows]
        >>> spans
        [(0, 1, 4), (2, 4, 6)]
    """
    _check_window(max_length, stride)
    if num_tokens < 2:
        raise DataError(
            f"the sequence has {num_tokens} token(s); perplexity needs at least two "
            "(one to condition on and one to score)",
            hint="pass a longer text, or a prefix_id (e.g. the end-of-text id) so that the "
            "first token is scored too",
        )
    end = min(max_length + 1, num_tokens)
    windows = [Window(0, 1, end)]
    while end < num_tokens:
        score_from, end = end, min(end + stride, num_tokens)
        windows.append(Window(end - 1 - max_length, score_from, end))
    return windows


@dataclass(frozen=True)
class PerplexityResult:
    """What [`perplexity()`][lego.eval.perplexity.perplexity] measured.

    Attributes:
        total_nats: ``sum_t -ln p(x_t | context_t)`` over the scored tokens.
        num_tokens: How many tokens were scored (``N - 1``, or ``N`` with a prefix id).
        num_bytes: UTF-8 bytes of the text, when known (for bits per byte).
        max_length: The window length ``L`` used.
        stride: The stride used.
        num_windows: Forward-pass windows (rows) evaluated.
        token_nlls: Per scored token ``-ln p``, float64, shape ``(num_tokens,)``, in text
            order; only when asked for (``return_token_nlls=True``).
    """

    total_nats: float
    num_tokens: int
    num_bytes: int | None
    max_length: int
    stride: int
    num_windows: int
    token_nlls: Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def mean_nll(self) -> float:
        """Mean negative log-likelihood per token in nats, ``total_nats / num_tokens``."""
        return self.total_nats / self.num_tokens

    @property
    def perplexity(self) -> float:
        """``exp(mean_nll)``: the effective number of equally likely next tokens."""
        return math.exp(self.mean_nll)

    @property
    def bits_per_byte(self) -> float | None:
        """``total_nats / (ln 2 x num_bytes)``, comparable across tokenizers; None without bytes."""
        if not self.num_bytes:
            return None
        return self.total_nats / (math.log(2) * self.num_bytes)

    def to_dict(self) -> dict[str, Any]:
        """The measurements as JSON-compatible data (without ``token_nlls``)."""
        return {
            "total_nats": self.total_nats,
            "num_tokens": self.num_tokens,
            "mean_nll": self.mean_nll,
            "perplexity": self.perplexity,
            "num_bytes": self.num_bytes,
            "bits_per_byte": self.bits_per_byte,
            "max_length": self.max_length,
            "stride": self.stride,
            "num_windows": self.num_windows,
        }


def perplexity(
    model: CausalLM,
    token_ids: TokenSource,
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    prefix_id: int | None = None,
    num_bytes: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
    return_token_nlls: bool = False,
) -> PerplexityResult:
    """Perplexity of ``model`` on a token sequence, every token scored exactly once.

    See the module docstring for the windows;
    [`sliding_windows()`][lego.eval.perplexity.sliding_windows] lists them. Results are the
    same (to float rounding, about 1e-7 relative) for every ``batch_size`` and for all
    strides that give every token the same context (for instance any stride when
    ``N - 1 <= max_length``).

    Args:
        model: Any causal LM: ``model(ids)`` with ids ``(B, T)`` returns logits ``(B, T, V)``.
            An ``nn.Module`` is put in eval mode for the measurement and restored after.
        token_ids: The ids ``x_0 .. x_{N-1}``: a list, a 1-D tensor or a 1-D array (e.g. the
            memmap of a prepared split); only one batch of windows is materialized at a time.
        max_length: Tokens per forward pass ``L``; default and upper bound: the model's
            ``config.context_length``.
        stride: Targets scored per window after the first (``1 .. L``); default ``L // 2``
            (at least half a window of context), at least 1.
        batch_size: Windows per forward pass.
        prefix_id: A token (e.g. end-of-text) placed before ``x_0`` so that ``x_0`` is scored
            too; without it ``x_0`` is context only.
        num_bytes: UTF-8 bytes of the text the ids encode, for bits per byte.
        chunk_size: Logit rows cast to float32 at a time for the log-softmax.
        device: Where to run; default: the model's first parameter's device (else the CPU).
        return_token_nlls: Keep every token's ``-ln p`` in the result (float64, on the CPU).

    Returns:
        Total nats, token count, mean NLL, perplexity and, with ``num_bytes``, bits per byte.

    Raises:
        DataError: When fewer than two tokens (counting ``prefix_id``) are given, or an id
            is outside ``0 .. vocab_size-1``.
        ConfigError: When ``max_length``, ``stride``, ``batch_size``, ``chunk_size`` or
            ``num_bytes`` is out of range.
    """
    config_length = int(model.config.context_length)
    vocab_size = int(model.config.vocab_size)
    if max_length is None:
        max_length = config_length
    if max_length > config_length:
        raise ConfigError(
            f"max_length {max_length} exceeds the model's context_length {config_length}",
            key="max_length",
            hint=f"pass max_length <= {config_length}",
        )
    if stride is None:
        stride = max(1, max_length // 2)
    _check_window(max_length, stride)
    if batch_size < 1:
        raise ConfigError(
            f"batch_size must be at least 1, got {batch_size}",
            key="batch_size",
            hint="pass a positive number of windows per forward pass",
        )
    if num_bytes is not None and num_bytes < 0:
        raise ConfigError(f"num_bytes must be >= 0, got {num_bytes}", key="num_bytes")
    tokens = _Tokens(token_ids, prefix_id, vocab_size)
    windows = sliding_windows(len(tokens), max_length=max_length, stride=stride)
    run_device = model_device(model, device)
    total = torch.zeros((), dtype=torch.float64)
    kept: list[Tensor] = []
    with eval_mode(model), torch.inference_mode():
        head = OutputHead(model)
        for batch in _batches(windows, batch_size):
            nll = _score_batch(head, tokens, batch, run_device, chunk_size)
            total += nll.sum().cpu()
            if return_token_nlls:
                kept.append(nll.cpu())
    num_tokens = len(tokens) - 1
    return PerplexityResult(
        total_nats=float(total),
        num_tokens=num_tokens,
        num_bytes=num_bytes,
        max_length=max_length,
        stride=stride,
        num_windows=len(windows),
        token_nlls=torch.cat(kept) if return_token_nlls else None,
    )


def text_perplexity(
    model: CausalLM, tokenizer: Tokenizer, text: str, **options: Any
) -> PerplexityResult:
    """Perplexity and bits per byte of ``model`` on ``text``, encoded by ``tokenizer``.

    Args:
        model: Any causal LM (see [`perplexity()`][lego.eval.perplexity.perplexity]).
        tokenizer: Encodes ``text`` (as is: no special tokens added).
        text: The text; its UTF-8 byte count is the bits-per-byte denominator.
        **options: Passed to [`perplexity()`][lego.eval.perplexity.perplexity] (``max_length``,
            ``stride``, ``batch_size``, ``prefix_id``, ...).

    Returns:
        The result, with ``num_bytes = len(text.encode("utf-8"))``.

    Raises:
        DataError: When the text encodes to fewer than two tokens (counting ``prefix_id``).
    """
    ids = tokenizer.encode(text)
    count = len(ids) + (options.get("prefix_id") is not None)
    if count < 2:
        raise DataError(
            f"the text {text[:40]!r} encodes to {len(ids)} token(s); perplexity needs at "
            "least two (one to condition on and one to score)",
            hint="pass a longer text, or a prefix_id (e.g. the end-of-text id) so that the "
            "first token is scored too",
        )
    return perplexity(model, ids, num_bytes=len(text.encode("utf-8")), **options)


def split_perplexity(
    model: CausalLM, path: str | os.PathLike[str], split: str = "val", **options: Any
) -> PerplexityResult:
    """Perplexity of ``model`` on one split of a prepared dataset (lego-data's ``.bin`` files).

    The split's ids are memory-mapped, not read: only one batch of windows is in memory.
    Documents stay concatenated with their end-of-text ids, as training saw them.

    Args:
        model: Any causal LM (see [`perplexity()`][lego.eval.perplexity.perplexity]).
        path: The prepared-dataset directory (or its ``meta.json``).
        split: The split name, e.g. ``"val"``.
        **options: Passed to [`perplexity()`][lego.eval.perplexity.perplexity]; give
            ``num_bytes`` to get bits per byte.

    Returns:
        The result.

    Raises:
        DataError: When the split is missing or has fewer than two tokens.
        FormatError: When ``meta.json`` or the token file is damaged.
    """
    from lego.data.meta import open_split  # lego-data reads numpy: only when asked for

    return perplexity(model, open_split(path, split), **options)


class _Tokens:
    """``[prefix_id] + ids`` (or ``ids``) as checked long tensors, a slice at a time."""

    def __init__(self, ids: TokenSource, prefix_id: int | None, vocab_size: int) -> None:
        if isinstance(ids, Tensor) and ids.dim() != 1:
            raise DataError(
                f"token_ids must be 1-D, got shape {tuple(ids.shape)}",
                tensor="token_ids",
                hint="pass one sequence; concatenate documents (with end-of-text ids) first",
            )
        if prefix_id is not None and not 0 <= prefix_id < vocab_size:
            raise ConfigError(
                f"prefix_id {prefix_id} is outside the vocabulary 0..{vocab_size - 1}",
                key="prefix_id",
            )
        self.ids = ids
        self.prefix = prefix_id
        self.shift = 0 if prefix_id is None else 1
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return len(self.ids) + self.shift

    def slice(self, lo: int, hi: int) -> Tensor:
        """Positions ``lo .. hi-1`` of the (prefixed) sequence, dtype long, shape ``(hi-lo,)``."""
        raw = self.ids[max(lo - self.shift, 0) : hi - self.shift]
        # a copy of a list or an array slice (a read-only memmap must not be aliased)
        part = (raw if isinstance(raw, Tensor) else torch.tensor(raw)).to(torch.long)
        if lo == 0 and self.prefix is not None:
            prefix = torch.tensor([self.prefix], dtype=torch.long, device=part.device)
            part = torch.cat([prefix, part])
        if part.numel() and (int(part.min()) < 0 or int(part.max()) >= self.vocab_size):
            bad = part[(part < 0) | (part >= self.vocab_size)][0]
            raise DataError(
                f"token id {int(bad)} is outside the model's vocabulary 0..{self.vocab_size - 1}",
                tensor="token_ids",
                hint="encode the text with the model's own tokenizer",
            )
        return part


def _check_window(max_length: int, stride: int) -> None:
    if max_length < 1:
        raise ConfigError(f"max_length must be at least 1, got {max_length}", key="max_length")
    if not 1 <= stride <= max_length:
        raise ConfigError(
            f"stride must be between 1 and max_length ({max_length}), got {stride}",
            key="stride",
            hint="each window after the first scores `stride` new tokens; a stride above "
            "max_length would skip tokens",
        )


def _batches(windows: list[Window], size: int) -> Iterator[list[Window]]:
    for lo in range(0, len(windows), size):
        yield windows[lo : lo + size]


def _score_batch(
    head: OutputHead, tokens: _Tokens, batch: list[Window], device: torch.device, chunk_size: int
) -> Tensor:
    """``-ln p`` of every target of ``batch``'s windows, in order, float64, shape ``(M,)``.

    Only the scored positions' logits are computed when the model's output head allows it
    ([`OutputHead`][lego.eval.scoring.OutputHead]): a later window's context half never
    reaches the head.
    """
    length = batch[0].input_length
    rows = [tokens.slice(w.start, w.end) for w in batch]  # inputs and all targets
    ids = torch.stack(rows).to(device)  # (B, L + 1)
    inputs = ids[:, :-1]  # (B, L): every window of a batch has the same length
    positions, targets = [], []
    for b, w in enumerate(batch):
        # target t (absolute) is predicted at input index t - 1 - start
        index = torch.arange(w.score_from - 1 - w.start, length, device=device)
        positions.append(b * length + index)
        targets.append(ids[b, index + 1])
    logits = head.logits_at(inputs, torch.cat(positions))  # (M, V)
    nll, _ = position_nll(
        logits[None], torch.arange(logits.shape[0]), torch.cat(targets), chunk_size=chunk_size
    )
    return nll
