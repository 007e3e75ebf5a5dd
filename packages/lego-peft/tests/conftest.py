"""Toy models for the unit tests (lego-arch is not installed here): plain torch.nn modules.

``TinyLM`` is a small causal LM shaped like the real ones (token embedding, blocks with
q/v projections, a biased norm and MLP, a final norm, an output head that may be tied),
with a ``config`` and ``new_kv_cache`` so it is a ``CachedCausalLM``. ``HFTinyLM`` adds
``hf_parameter_name`` (an ``HFNamedModel``): ``blocks.i`` is ``model.layers.i`` and the MLP's
``up`` projection is stored transposed, as GPT-2's ``Conv1D`` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.protocols import CompatibilityError, ModelConfig

VOCAB = 11
WIDTH = 8


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.v_proj = nn.Linear(WIDTH, WIDTH, bias=True)
        self.norm = nn.LayerNorm(WIDTH)
        self.up = nn.Linear(WIDTH, 2 * WIDTH)
        self.down = nn.Linear(2 * WIDTH, WIDTH)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.v_proj(x) * torch.sigmoid(self.q_proj(x))  # (B, T, W)
        return x + self.down(torch.relu(self.up(self.norm(x))))  # (B, T, W)


class TinyLM(nn.Module):
    def __init__(self, *, tied: bool = False) -> None:
        super().__init__()
        self._config = ModelConfig(vocab_size=VOCAB, context_length=32)
        self.token_embedding = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.final_norm = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)
        if tied:
            self.lm_head.weight = self.token_embedding.weight
        self.caches: list[tuple[int, int]] = []

    @property
    def config(self) -> ModelConfig:
        return self._config

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        x = self.token_embedding(input_ids)  # (B, T, W)
        for block in self.blocks:
            x = block(x)
        logits: Tensor = self.lm_head(self.final_norm(x))  # (B, T, V)
        return logits

    def new_kv_cache(
        self, batch_size: int, max_seq_len: int, *, dtype: Any = None, device: Any = None
    ) -> Any:
        self.caches.append((batch_size, max_seq_len))
        return ("cache", batch_size, max_seq_len)


BLOCK_NAMES = {
    "q_proj": "self_attn.q_proj",
    "v_proj": "self_attn.v_proj",
    "norm": "post_attention_layernorm",
    "up": "mlp.c_fc",
    "down": "mlp.down_proj",
}

HF_NAMES = {
    "token_embedding": "model.embed_tokens",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
}


class HFTinyLM(TinyLM):
    def hf_parameter_name(self, name: str, /) -> tuple[str, bool]:
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) == 4 and parts[2] in BLOCK_NAMES:
            transposed = parts[2] == "up" and parts[3] == "weight"
            return f"model.layers.{parts[1]}.{BLOCK_NAMES[parts[2]]}.{parts[3]}", transposed
        if parts[0] in HF_NAMES and len(parts) == 2:
            return f"{HF_NAMES[parts[0]]}.{parts[1]}", False
        raise CompatibilityError(f"no HF name for {name}", tensor=name)


@pytest.fixture
def make_tiny() -> Callable[..., TinyLM]:
    """Build a fresh toy model: ``make_tiny(tied=False, hf=False)`` (seeded)."""

    def make(*, tied: bool = False, hf: bool = False) -> TinyLM:
        torch.manual_seed(0)
        return HFTinyLM(tied=tied) if hf else TinyLM(tied=tied)

    return make


@pytest.fixture
def tiny() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


@pytest.fixture
def hf_tiny() -> HFTinyLM:
    torch.manual_seed(0)
    return HFTinyLM()


@pytest.fixture
def ids() -> Tensor:
    return torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(1))
