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


# -- precision: auto ----------------------------------------------------------------------


def test_auto_is_measured_and_recorded_in_the_checkpoint(
    make_trainer: MakeTrainer,
    tiny: Any,
    base_config: TrainConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lego.train.trainer as trainer_module
    from lego.train.precision import decide_precision

    asked: list[torch.device] = []

    def measured(model: torch.nn.Module, device: torch.device) -> Any:
        asked.append(device)
        return decide_precision(0.4, 0.1)  # bf16 four times faster

    monkeypatch.setattr(trainer_module, "choose_precision", measured)
    config = base_config.replace(precision="auto", max_steps=4, checkpoint_every=2)
    trainer = make_trainer(config)
    assert trainer.config.precision == "bf16-mixed"
    assert trainer.precision_reason is not None
    assert "4.00x" in trainer.precision_reason
    trainer.fit()
    assert asked == [torch.device("cpu")]
    saved = trainer.checkpoints.read_state(Path(config.out_dir) / "checkpoints" / "step-00000002")
    assert saved.precision == "bf16-mixed"

    # resumed, on a machine where fp32 would now win: the run keeps its precision
    monkeypatch.setattr(
        trainer_module, "choose_precision", lambda model, device: decide_precision(0.1, 0.4)
    )
    resumed = make_trainer(config.replace(max_steps=6, resume="auto"))
    assert resumed.config.precision == "bf16-mixed"
    assert "checkpoint" in (resumed.precision_reason or "")
    fresh = make_trainer(config.replace(out_dir=base_config.out_dir + "-fresh"))
    assert fresh.config.precision == "fp32"


def test_choose_precision_times_the_models_products_on_the_cpu(tiny: Any) -> None:
    from lego.train.precision import choose_precision, time_training_products

    choice = choose_precision(
        tiny.TinyLM(tiny.TinyConfig()), torch.device("cpu"), rows=32, seconds=0.05
    )
    assert choice.precision in ("fp32", "bf16-mixed")
    assert choice.fp32_seconds > 0
    assert choice.bf16_seconds > 0
    assert (choice.precision == "bf16-mixed") == (choice.speedup >= 1.05)
    fp32, bf16 = time_training_products([(8, 4096, 2)], torch.device("cpu"), rows=4, seconds=0)
    assert fp32 > 0
    assert bf16 > 0
    no_linears = choose_precision(torch.nn.LayerNorm(4), torch.device("cpu"))
    assert no_linears.precision == "fp32"
    assert "no linear layers" in no_linears.reason


def test_auto_is_a_known_precision_and_a_typo_is_not(base_config: TrainConfig) -> None:
    from lego.protocols import ConfigError

    assert base_config.replace(precision="auto").precision == "auto"
    with pytest.raises(ConfigError, match="precision"):
        base_config.replace(precision="autoo")
