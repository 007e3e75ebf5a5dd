from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lego.train import (
    TrainConfig,
    Trainer,
)

MakeTrainer = Callable[..., Trainer]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "fp16-mixed"])
def test_mixed_precision_modes_train(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig, precision: str
) -> None:
    trainer = make_trainer(base_config.replace(precision=precision, max_steps=8))
    state = trainer.fit()
    assert math.isfinite(state.metrics["loss"])
    if precision == "bf16-true":
        assert trainer.model.head.weight.dtype == torch.bfloat16
        assert trainer.optimizer.param_groups[0]["params"][0].dtype == torch.float32


@pytest.mark.parametrize("precision", ["bf16-true", "fp16-mixed"])
def test_resume_is_exact_in_reduced_precision(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig, precision: str
) -> None:
    config = base_config.replace(precision=precision, max_steps=6)
    full = make_trainer(config.replace(out_dir=base_config.out_dir + "f"))
    full.fit()
    make_trainer(config.replace(checkpoint_every=3, max_steps=6)).fit()
    middle = Path(config.out_dir) / "checkpoints" / "step-00000003"
    resumed = make_trainer(config.replace(out_dir=base_config.out_dir + "r", resume=str(middle)))
    resumed.fit()
    for a, b in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    if precision == "bf16-true":
        masters_a = full.masters.masters if full.masters else []
        masters_b = resumed.masters.masters if resumed.masters else []
        assert all(torch.equal(a, b) for a, b in zip(masters_a, masters_b, strict=True))


@pytest.mark.parametrize("precision", ["bf16-true", "fp16-mixed"])
def test_fsdp_refuses_master_weights_and_grad_scaling(
    make_trainer: MakeTrainer, base_config: TrainConfig, precision: str
) -> None:
    from lego.protocols import ConfigError

    with pytest.raises(ConfigError, match="bf16-mixed"):
        make_trainer(base_config.replace(strategy="fsdp", precision=precision))
