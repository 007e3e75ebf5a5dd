"""[`ModelRunner`][lego.generate.ModelRunner]: one prefill, then decode steps, on any causal LM.

The runner owns everything that grows while a batch is decoded, allocated once for the
whole generation (``max_seq_len`` = prompt plus new tokens): the model's KV cache (when the
model is a [`CachedCausalLM`][lego.protocols.CachedCausalLM] and ``use_cache`` is on), the
padding mask and the position ids of a left-padded batch. Each
[`forward()`][lego.generate.runner.ModelRunner.forward] feeds the next ``T`` tokens of every row and
returns their logits.

Two paths give the same tokens:

- cached: the prompt is run once (prefill), then each step runs only the new tokens
  against the cache, at their positions (a left-padded row's positions start after its
  padding);
- uncached (a plain [`CausalLM`][lego.protocols.CausalLM], or ``use_cache=False``): the runner
  keeps every token in a preallocated buffer and re-runs the whole prefix each step.

Speculative decoding rolls the runner back with [`crop()`][lego.generate.runner.ModelRunner.crop];
beam search reorders its rows with [`reorder()`][lego.generate.runner.ModelRunner.reorder];
rollouts prefill each prompt once for the several rows that share it with
[`prefill_shared()`][lego.generate.runner.ModelRunner.prefill_shared] (the prompt's cache rows
are copied to its rows with the cache's ``copy_rows``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lego.protocols import CausalLM, ConfigError, DataError, KVCache, check_int

__all__ = ["ModelRunner", "has_kv_cache"]


_UNCHECKED = ("size_asserts", "alignment_asserts")
"""Inductor's run-time checks of every tensor's sizes and alignment, off in the compiled step:
dynamo's guards already check the inputs, and a decode step is short enough to notice them."""


def _compiled(step: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``torch.compile(step, dynamic=True)``, compiled with the cache lengths symbolic.

    A KV cache is an ``nn.Module`` whose filled length is an ``int`` attribute; dynamo
    specializes such ints by default, which would recompile the step at every new length.
    The step is traced with ``allow_unspec_int_on_nn_module`` on (where this torch has it),
    so one graph serves every length.
    """
    from torch._inductor import config as inductor  # imported only when compiling

    options: dict[str, str | int | bool | Callable[..., Any]] = {
        name: False for name in _UNCHECKED if hasattr(inductor, name)
    }
    compiled = torch.compile(step, dynamic=True, options=options)
    config = torch._dynamo.config
    if not hasattr(config, "allow_unspec_int_on_nn_module"):
        return compiled

    def run(*args: Any) -> Tensor:
        with config.patch(allow_unspec_int_on_nn_module=True):
            out: Tensor = compiled(*args)
        return out

    return run


def has_kv_cache(model: CausalLM) -> bool:
    """Whether ``model`` can allocate its own KV cache (has a callable ``new_kv_cache``)."""
    return callable(getattr(model, "new_kv_cache", None))


class ModelRunner:
    """Feeds a batch of sequences through a causal LM, a few tokens at a time.

    Args:
        model: Any [`CausalLM`][lego.protocols.CausalLM] (in eval mode for generation).
        batch_size: Rows decoded together.
        max_seq_len: Room for every position (prompt plus new tokens, plus any
            speculative look-ahead).
        attention_mask: The prompt's padding mask, ``(B, P)``: 1 for real tokens, 0 for
            left padding; None (or all ones) means no padding.
        use_cache: Decode on the model's KV cache when it has one.
        compile: ``torch.compile`` the single-token decode step (cached path only).
        device: Where the buffers live (the input ids' device).

    Raises:
        ConfigError: A size below 1.
    """

    def __init__(
        self,
        *,
        model: CausalLM,
        batch_size: int,
        max_seq_len: int,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        compile: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        check_int("batch_size", batch_size, minimum=1, owner="ModelRunner")
        check_int("max_seq_len", max_seq_len, minimum=1, owner="ModelRunner")
        self.model = model
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.cached = bool(use_cache) and has_kv_cache(model)
        self.length = 0
        self._cache: KVCache | None = None
        if self.cached:
            new_kv_cache: Callable[..., KVCache] = getattr(model, "new_kv_cache")  # noqa: B009
            self._cache = new_kv_cache(batch_size, max_seq_len, device=self.device)
        self._tokens: Tensor | None = None
        if not self.cached:
            self._tokens = torch.zeros(
                (batch_size, max_seq_len), dtype=torch.long, device=self.device
            )  # (B, S_max)
        self._mask: Tensor | None = None
        self._positions: Tensor | None = None
        self._prompt_mask = attention_mask
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            self._mask = torch.ones(
                (batch_size, max_seq_len), dtype=torch.long, device=self.device
            )  # (B, S_max)
            self._positions = torch.zeros(
                (batch_size, max_seq_len), dtype=torch.long, device=self.device
            )  # (B, S_max)
        self._step: Callable[..., Tensor] = self._call_model
        if compile and self.cached:
            self._step = _compiled(self._call_model)

    # -- state ----------------------------------------------------------------------------

    @property
    def padded(self) -> bool:
        """Whether the batch has left padding (masks and positions are passed explicitly)."""
        return self._mask is not None

    @property
    def kv_cache(self) -> KVCache | None:
        """The model's cache on the cached path, else None."""
        return self._cache

    def _call_model(
        self, tokens: Tensor, mask: Tensor | None, positions: Tensor | None, cache: Any
    ) -> Tensor:
        return self.model(tokens, attention_mask=mask, position_ids=positions, kv_cache=cache)

    # -- feeding --------------------------------------------------------------------------

    def forward(self, tokens: Tensor) -> Tensor:
        """Feed the next tokens of every row and return their logits.

        The first call is the prefill (the prompt, with the padding mask given to the
        constructor); later calls are decode steps.

        Args:
            tokens: The next ids, shape ``(B, T)``.

        Returns:
            Logits for the ``T`` tokens, shape ``(B, T, vocab_size)``.

        Raises:
            DataError: The tokens do not fit in ``max_seq_len`` or have the wrong batch size.
        """
        b, t = int(tokens.shape[0]), int(tokens.shape[1])
        start, end = self.length, self.length + t
        if b != self.batch_size:
            raise DataError(
                f"ModelRunner: got {b} rows, the runner decodes {self.batch_size}",
                tensor="tokens",
            )
        if end > self.max_seq_len:
            raise DataError(
                f"ModelRunner: {start} positions + {t} new exceed max_seq_len {self.max_seq_len}",
                tensor="tokens",
                hint="allocate the runner with room for the prompt and every new token",
            )
        mask: Tensor | None = None
        positions: Tensor | None = None
        if self._mask is not None and self._positions is not None:
            if start == 0:
                self._prompt_positions(t)
            else:
                steps = torch.arange(1, t + 1, device=self.device)  # (T,)
                self._positions[:, start:end] = self._positions[:, start - 1 : start] + steps
            mask = self._mask[:, :end]  # (B, S)
        if self._cache is not None:
            if self._positions is not None:
                positions = self._positions[:, start:end]  # (B, T)
            step = self._step if t == 1 and start > 0 else self._call_model
            logits = step(tokens, mask, positions, self._cache)  # (B, T, V)
        else:
            assert self._tokens is not None
            self._tokens[:, start:end] = tokens
            if self._positions is not None:
                positions = self._positions[:, :end]  # (B, S)
            full = self._call_model(self._tokens[:, :end], mask, positions, None)  # (B, S, V)
            logits = full[:, start:end]  # (B, T, V)
        self.length = end
        return logits

    def _prompt_positions(self, t: int) -> None:
        """Fill the padding mask and position ids of the first ``t`` positions (the prompt)."""
        assert self._mask is not None
        assert self._positions is not None
        assert self._prompt_mask is not None
        prompt = self._prompt_mask.to(device=self.device, dtype=torch.long)  # (B, P)
        self._mask[:, : prompt.shape[1]] = prompt
        pos = (self._mask[:, :t].cumsum(dim=-1) - 1).clamp_min(0)  # (B, T)
        self._positions[:, :t] = pos.masked_fill(self._mask[:, :t] == 0, 1)

    def prefill_shared(self, tokens: Tensor, *, repeats: int) -> Tensor:
        """Prefill prompts that several consecutive rows share, running each prompt once.

        Rows ``i * repeats .. i * repeats + repeats - 1`` of the runner all hold prompt ``i``
        (prompt-major order, as the constructor's ``attention_mask`` must repeat it). On the
        cached path the ``B`` distinct prompts run once into a temporary cache of ``B`` rows,
        whose rows are then copied to the ``B * repeats`` rows with the cache's
        ``copy_rows`` (a cache without it: the repeated rows are run instead). Without a KV
        cache the prompt is stored repeated and the next step recomputes every row.

        Args:
            tokens: The distinct prompts, ``(B, P)`` with ``B * repeats == batch_size``.
            repeats: Rows per prompt, at least 1.

        Returns:
            Logits of the distinct prompts, ``(B, P, vocab_size)``: row ``i`` is what each
            of the ``repeats`` rows of prompt ``i`` would get.

        Raises:
            ConfigError: ``repeats`` below 1 or not dividing the batch, or the runner was
                already fed.
            DataError: The prompt does not fit in ``max_seq_len``.
        """
        check_int("repeats", repeats, minimum=1, owner="ModelRunner.prefill_shared()")
        b, t = int(tokens.shape[0]), int(tokens.shape[1])
        if b * repeats != self.batch_size or self.length != 0:
            raise ConfigError(
                f"ModelRunner.prefill_shared(): {b} prompts x {repeats} rows on a runner of "
                f"{self.batch_size} rows that holds {self.length} positions",
                key="repeats",
                hint="call it first, on a runner of (prompts x repeats) rows",
            )
        copy_rows = getattr(self._cache, "copy_rows", None)
        if repeats == 1 or (self._cache is not None and not callable(copy_rows)):
            every = tokens.repeat_interleave(repeats, dim=0)  # (B * n, P)
            return self.forward(every)[::repeats]  # (B, P, V)
        if t > self.max_seq_len:
            raise DataError(
                f"ModelRunner: a prompt of {t} positions exceeds max_seq_len {self.max_seq_len}",
                tensor="tokens",
            )
        mask: Tensor | None = None
        positions: Tensor | None = None
        if self._mask is not None and self._positions is not None:
            self._prompt_positions(t)
            mask = self._mask[::repeats, :t]  # (B, P): each prompt's first row
            positions = self._positions[::repeats, :t]  # (B, P)
        if self._cache is not None:
            new_kv_cache: Callable[..., KVCache] = getattr(self.model, "new_kv_cache")  # noqa: B009
            prompts = new_kv_cache(b, t, device=self.device)
            logits = self._call_model(tokens, mask, positions, prompts)  # (B, P, V)
            source_rows = torch.arange(b, device=self.device).repeat_interleave(repeats)
            rows = torch.arange(self.batch_size, device=self.device)  # (B * n,)
            self._cache.copy_rows(prompts, rows=rows, source_rows=source_rows)
        else:
            assert self._tokens is not None
            self._tokens[:, :t] = tokens.repeat_interleave(repeats, dim=0)  # (B * n, P)
            logits = self._call_model(tokens, mask, positions, None)  # (B, P, V)
        self.length = t
        return logits

    # -- rolling back and reordering ------------------------------------------------------

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected speculative tokens).

        Args:
            length: The new length, ``0 <= length <= self.length``.

        Raises:
            ConfigError: ``length`` out of range.
        """
        if isinstance(length, bool) or not isinstance(length, int):
            raise ConfigError("ModelRunner.crop() takes an int length", key="length")
        if not 0 <= length <= self.length:
            raise ConfigError(
                f"ModelRunner: cannot crop to {length} positions, it holds {self.length}",
                key="length",
            )
        if self._cache is not None:
            self._cache.crop(length)
        if self._mask is not None:
            self._mask[:, length:] = 1
        self.length = length

    def reorder(self, indices: Tensor) -> None:
        """Make row ``i`` a copy of old row ``indices[i]`` (beam search).

        Args:
            indices: Source rows, shape ``(B,)``, dtype long.
        """
        if self._cache is not None:
            self._cache.reorder(indices)
        if self._tokens is not None:
            self._tokens[:, : self.length] = self._tokens[:, : self.length].index_select(0, indices)
        if self._mask is not None:
            self._mask.copy_(self._mask.index_select(0, indices))
        if self._positions is not None:
            self._positions.copy_(self._positions.index_select(0, indices))
