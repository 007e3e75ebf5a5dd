from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lego.train import (
    Trainer,
    flops_per_token,
)

MakeTrainer = Callable[..., Trainer]


def test_flops_per_token_counts_params_and_attention(tiny: Any) -> None:
    model = tiny.TinyLM()
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    expected = 6 * n + 12 * c.n_layers * c.d_model * c.context_length
    assert flops_per_token(model) == expected
