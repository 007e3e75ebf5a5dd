from __future__ import annotations

from collections.abc import Callable

import pytest

from lego.protocols import ConfigError
from lego.train import (
    Trainer,
)
from lego.train.yamlconfig import apply_overrides, parse_value

MakeTrainer = Callable[..., Trainer]


def test_overrides_parse_floats_and_nested_keys() -> None:
    data = apply_overrides(
        {"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "max_steps=7", "resume=latest"]
    )
    assert data == {"optim": {"lr": 3e-4}, "max_steps": 7, "resume": "latest"}
    assert parse_value("[0.9, 0.95]") == [0.9, 0.95]
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["max_steps"])
