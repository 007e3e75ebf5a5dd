from __future__ import annotations

import io
from collections.abc import Callable

from lego.train import (
    Trainer,
)
from lego.train.monitor import Console

MakeTrainer = Callable[..., Trainer]


def test_rich_console_shows_step_loss_lr_and_throughput() -> None:
    stream = io.StringIO()
    console = Console(mode="rich", max_steps=10, stream=stream)
    console.step(5, {"loss": 1.25, "lr": 3e-4, "tokens_per_s": 12345.0, "mfu": 0.5})
    console.message("hello")
    console.close()
    text = stream.getvalue()
    assert "loss 1.2500" in text
    assert "12,345 tok/s" in text
    assert "hello" in text
    assert "mfu 50.0%" in text


def test_plain_console_prints_lines_with_eta() -> None:
    stream = io.StringIO()
    console = Console(mode="plain", max_steps=10, stream=stream)
    console.step(1, {"loss": 2.0, "lr": 1e-3, "tokens_per_s": 10.0})
    assert stream.getvalue().startswith("step 1/10  loss 2.0000  lr 1.00e-03")
