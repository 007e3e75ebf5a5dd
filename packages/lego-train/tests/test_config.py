from __future__ import annotations

from collections.abc import Callable

import pytest

from lego.protocols import ConfigError
from lego.train import (
    TrainConfig,
    Trainer,
)

MakeTrainer = Callable[..., Trainer]


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig.from_dict({"max_step": 3})
    with pytest.raises(ConfigError, match="warmup"):
        TrainConfig.from_dict({"max_steps": 3, "schedule": {"warmup_steps": 10}})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig.from_dict({"optim": {"lr": 0.0}})
