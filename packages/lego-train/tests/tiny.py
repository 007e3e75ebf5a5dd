"""A tiny causal LM and an in-memory batch source for lego-train's tests (torch only).

Loaded by conftest.py and by the subprocess scripts of the resume and torchrun tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent


@dataclass
class TinyConfig:
    vocab_size: int = 32
    context_length: int = 8
    d_model: int = 16
    n_layers: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class TinyBlock(nn.Module):
    def __init__(self, d: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.mix = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix(self.norm(x))  # (B, T, d)
        # causal mixing: running mean over previous positions
        csum = torch.cumsum(h, dim=1)  # (B, T, d)
        count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1)
        return x + self.dropout(torch.tanh(csum / count))


class TinyLM(nn.Module):
    """Embedding, a few causal mixing blocks, a final norm and a tied head."""

    def __init__(self, config: TinyConfig | None = None, *, dropout: float = 0.0) -> None:
        super().__init__()
        self._config = config or TinyConfig()
        c = self._config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.blocks = nn.ModuleList(TinyBlock(c.d_model, dropout) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    @property
    def config(self) -> TinyConfig:
        return self._config

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: Any = None,
    ) -> torch.Tensor:
        x = self.embed(input_ids)  # (B, T, d)
        for block in self.blocks:
            x = block(x)  # (B, T, d)
        return self.head(self.norm(x))  # (B, T, V)


class ListSource:
    """A BatchSource over a fixed token stream: batches of windows, exact position state."""

    def __init__(
        self,
        tokens: torch.Tensor,
        *,
        batch_size: int,
        context: int,
        rank: int = 0,
        world_size: int = 1,
        ignore_every: int = 0,
    ) -> None:
        self.tokens = tokens
        self.batch_size = batch_size
        self.context = context
        self.rank = rank
        self.world_size = world_size
        self.ignore_every = ignore_every
        n_windows = (len(tokens) - 1) // context
        self.n_batches = n_windows // (batch_size * world_size)
        self.position = 0
        self.epoch = 0

    def _batch(self, index: int) -> dict[str, torch.Tensor]:
        rows = []
        for r in range(self.batch_size):
            window = (index * self.world_size + self.rank) * self.batch_size + r
            # rows of one global batch are contiguous across ranks: rank 0 gets the first
            # half, rank 1 the second, like one process with world_size * batch_size rows
            window = index * self.batch_size * self.world_size + self.rank * self.batch_size + r
            rows.append(window)
        starts = torch.tensor(rows) * self.context
        offsets = torch.arange(self.context + 1)
        chunk = self.tokens[starts[:, None] + offsets[None, :]]  # (B, T + 1)
        labels = chunk[:, 1:].clone()
        if self.ignore_every:
            labels[:, :: self.ignore_every] = -100
        return {"input_ids": chunk[:, :-1].clone(), "labels": labels}

    def __iter__(self) -> Any:
        while self.position < self.n_batches:
            index = self.position
            self.position += 1
            yield self._batch(index)
        self.position = 0
        self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


def make_tokens(n: int = 4096, vocab: int = 32, seed: int = 0) -> torch.Tensor:
    """A learnable stream: a noisy repeating pattern."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 7 + (torch.arange(n) // 7) % 3
    noise = torch.randint(0, vocab, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.8
    return torch.where(keep, base % vocab, noise)
