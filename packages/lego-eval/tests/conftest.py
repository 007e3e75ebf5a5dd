"""Toy causal LMs in plain torch whose log-probabilities are known in closed form.

- ``Bigram``: the logits at a position depend only on the token there, ``table[x_p]``, so
  ``-ln p(x_t)`` is ``-log_softmax(table[x_{t-1}])[x_t]`` whatever the window: a token scored
  twice or skipped changes the total.
- ``ContextLength``: ``table[x_p] + slope * (p + 1)``: the logits also depend on how many
  tokens the window holds up to ``p``, i.e. on the context the token was scored with, so the
  exact context of every token is checkable by hand.
- ``CausalMean``: the logits at ``p`` come from the mean embedding of ``x_0 .. x_p`` (every
  token of the context matters, as in a transformer); used for direct token-by-token oracles.

Each records the input shapes it saw and refuses an attention mask or a KV cache (the
perplexity code must need neither). Test modules cannot import conftest: the ``toys`` fixture
hands the classes out.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.protocols import ModelConfig

VOCAB = 11


class _Toy(nn.Module):
    def __init__(self, vocab: int = VOCAB, context_length: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab, context_length=context_length)
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=gen), requires_grad=False)
        self.slope = nn.Parameter(torch.randn(vocab, generator=gen) * 0.3, requires_grad=False)
        self.shapes: list[tuple[int, ...]] = []

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        assert attention_mask is None
        assert kv_cache is None
        assert position_ids is None
        assert input_ids.shape[1] <= self.config.context_length
        self.shapes.append(tuple(input_ids.shape))
        return self.logits(input_ids)

    def logits(self, ids: Tensor) -> Tensor:
        raise AssertionError("subclasses define logits")


class Bigram(_Toy):
    def logits(self, ids: Tensor) -> Tensor:
        return self.table[ids]  # (B, T, V)

    def expected_nll(self, seq: list[int], t: int, context: int) -> float:
        del context
        row = torch.log_softmax(self.table[seq[t - 1]].double(), -1)
        return -float(row[seq[t]])


class ContextLength(_Toy):
    def logits(self, ids: Tensor) -> Tensor:
        count = torch.arange(1, ids.shape[1] + 1, dtype=self.table.dtype)  # (T,)
        return self.table[ids] + count[None, :, None] * self.slope  # (B, T, V)

    def expected_nll(self, seq: list[int], t: int, context: int) -> float:
        """``-ln p(x_t)`` when ``x_t`` is predicted from ``context`` tokens before it."""
        row = self.table[seq[t - 1]].double() + context * self.slope.double()
        return -float(torch.log_softmax(row, -1)[seq[t]])


class CausalMean(_Toy):
    def __init__(self, vocab: int = VOCAB, context_length: int = 64, seed: int = 0) -> None:
        super().__init__(vocab, context_length, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        self.embed = nn.Parameter(torch.randn(vocab, 16, generator=gen), requires_grad=False)
        self.head = nn.Parameter(torch.randn(16, vocab, generator=gen), requires_grad=False)
        self.drop = nn.Dropout(0.5)

    def logits(self, ids: Tensor) -> Tensor:
        x = self.drop(self.embed[ids])  # (B, T, 16)
        count = torch.arange(1, ids.shape[1] + 1, dtype=x.dtype)[None, :, None]
        mean = x.cumsum(1) / count  # (B, T, 16): mean over x_0 .. x_p
        return 3.0 * mean @ self.head + self.table[ids]  # (B, T, V)


def expected_context(t: int, n: int, max_length: int, stride: int) -> int:
    """Tokens before target ``t`` that the windows feed (written out by hand, not from the
    code under test): the first window predicts ``1 .. min(L, N-1)`` from all tokens before
    them; window ``j >= 1`` predicts ``L+1+(j-1)s .. min(L+js, N-1)`` from the ``L`` tokens
    before its last target."""
    if t <= max_length:
        return t
    j = (t - max_length - 1) // stride + 1
    last = min(max_length + j * stride, n - 1)  # the window's last target
    return t - (last - max_length)


@pytest.fixture(scope="session")
def toys() -> SimpleNamespace:
    return SimpleNamespace(
        VOCAB=VOCAB,
        Bigram=Bigram,
        ContextLength=ContextLength,
        CausalMean=CausalMean,
        expected_context=expected_context,
    )
