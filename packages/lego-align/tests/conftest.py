"""A toy causal LM for the unit tests (lego-arch is not a dependency): plain torch.nn.

``TinyLM`` embeds tokens, adds a learned embedding of ``position_ids``, averages each
position's prefix over the real tokens only (``attention_mask``), and projects to the
vocabulary: causal, padding-invariant when given the batch's position ids, and a
``lego.protocols.CausalLM``. ``hidden()`` returns the output head's input, for the
``HeadInputs`` path.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lego.protocols import ModelConfig

VOCAB = 13
WIDTH = 6


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._config = ModelConfig(vocab_size=VOCAB, context_length=32)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(32, WIDTH)
        self.mix = nn.Linear(WIDTH, WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=True)

    @property
    def config(self) -> ModelConfig:
        return self._config

    def hidden(
        self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None
    ) -> Tensor:
        t = input_ids.shape[1]
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = torch.arange(t).expand_as(input_ids)
        x = self.embed(input_ids) + self.positions(position_ids)  # (B, T, W)
        weights = mask.to(x.dtype)[..., None]  # (B, T, 1)
        prefix = (x * weights).cumsum(dim=1) / weights.cumsum(dim=1).clamp(min=1)  # (B, T, W)
        return torch.tanh(self.mix(prefix)) + x  # (B, T, W)

    def forward(
        self,
        input_ids: Tensor,
        /,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        kv_cache: Any = None,
    ) -> Tensor:
        logits: Tensor = self.lm_head(self.hidden(input_ids, attention_mask, position_ids))
        return logits  # (B, T, V)


@pytest.fixture
def tiny() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()
