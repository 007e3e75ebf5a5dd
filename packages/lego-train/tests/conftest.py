from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lego.train import TrainConfig

HERE = Path(__file__).resolve().parent


def _tiny() -> Any:
    import importlib.util
    import sys

    name = "lego_train_tests_tiny"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "tiny.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def tiny() -> Any:
    """The tests' tiny model and batch source module."""
    return _tiny()


@pytest.fixture
def base_config(tmp_path: Path) -> TrainConfig:
    return TrainConfig(
        out_dir=str(tmp_path / "run"),
        max_steps=6,
        progress="none",
        peak_flops=1e12,
        optim={"lr": 1e-2, "min_lr": 1e-3, "weight_decay": 0.1},  # type: ignore[arg-type]
        schedule={"name": "cosine", "warmup_steps": 2},  # type: ignore[arg-type]
    )


@pytest.fixture
def make_trainer(tiny: Any) -> Any:
    """Build a Trainer on TinyLM (seeded) and a ListSource of the test stream."""
    from lego.train import Trainer

    def make(config: TrainConfig, *, batch: int = 4, **kw: Any) -> Trainer:
        import torch

        torch.manual_seed(0)
        model = kw.pop("model", None) or tiny.TinyLM()
        source = tiny.ListSource(
            tiny.make_tokens(), batch_size=batch, context=8, ignore_every=kw.pop("ignore", 0)
        )
        return Trainer(model=model, train_data=source, config=config, **kw)

    return make
