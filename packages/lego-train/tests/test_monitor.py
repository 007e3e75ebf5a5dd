from __future__ import annotations

import io
from collections.abc import Callable

from lego.train import (
    TrainConfig,
    Trainer,
)
from lego.train.monitor import format_step

MakeTrainer = Callable[..., Trainer]


def test_format_step_shows_loss_lr_throughput_and_mfu() -> None:
    text = format_step({"loss": 1.25, "lr": 3e-4, "tokens_per_s": 12345.0, "mfu": 0.5})
    assert text == "loss 1.2500  lr 3.00e-04  12,345 tok/s  mfu 50.0%"


def test_plain_progress_prints_a_line_per_logged_step(
    make_trainer: MakeTrainer, base_config: TrainConfig
) -> None:
    stream = io.StringIO()
    trainer = make_trainer(
        base_config.replace(max_steps=4, log_every=2, progress="plain"), console_stream=stream
    )
    trainer.fit()
    lines = stream.getvalue().splitlines()
    steps = [line for line in lines if line.startswith("  train: ")]
    assert [line.split()[1] for line in steps] == ["2", "4"]
    assert "of 4 steps" in steps[0]
    assert "loss " in steps[0]
    assert lines[-1].startswith("train: done, 4 steps in ")
