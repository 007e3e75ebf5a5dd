from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lego.train import (
    Trainer,
    param_groups,
)

MakeTrainer = Callable[..., Trainer]


def test_no_decay_for_norms_biases_and_embeddings(tiny: Any) -> None:
    model = tiny.TinyLM()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    decayed = {id(p) for p in decay["params"]}  # type: ignore[attr-defined]
    assert id(model.embed.weight) not in decayed
    assert id(model.norm.weight) not in decayed
    assert id(model.blocks[0].mix.bias) not in decayed
    assert id(model.head.weight) in decayed
    assert id(model.blocks[0].mix.weight) in decayed
    assert no_decay["weight_decay"] == 0.0
