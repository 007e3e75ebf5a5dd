"""The trainers take the run's lock from a caller that already holds it (the legollm recipes).

A recipe locks ``out_dir`` before it reads the data and builds the trainer, so a second
process is refused before any long work; the trainer must then train under that lock
instead of taking it again (which would fail: the lock is the caller's own) and leave it
to the caller when it is done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lego.align import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer
from lego.protocols import ConfigError
from lego.protocols.locks import LOCK_FILE
from lego.train import TrainConfig
from lego.train.rundir import run_lock

SFT_ROWS = [
    {"prompt": "say hi.", "completion": "hi"},
    {"prompt": "say yes.", "completion": "yes"},
]
PAIRS = [
    {"prompt": "pick", "chosen": "aa", "rejected": "b"},
    {"prompt": "pick!", "chosen": "a", "rejected": "bb"},
]


def _train(out: Path) -> TrainConfig:
    return TrainConfig(out_dir=str(out), max_steps=2, progress="none", peak_flops=1e12)


def _trainer(kind: str, out: Path, chars: Any, kit: Any, lock: Any) -> Any:
    torch.manual_seed(0)
    common: dict[str, Any] = {
        "model": kit.WideLM(),
        "tokenizer": chars,
        "train": _train(out),
        "lock": lock,
    }
    if kind == "sft":
        config = SFTConfig(eos_token="<|im_end|>", batch_size=2, max_length=32)
        return SFTTrainer(train_data=SFT_ROWS, config=config, **common)
    if kind == "reward":
        return RewardTrainer(
            train_data=PAIRS, config=RewardConfig(batch_size=2, max_length=32), **common
        )
    return DPOTrainer(train_data=PAIRS, config=DPOConfig(batch_size=2, max_length=32), **common)


@pytest.mark.parametrize("kind", ["sft", "reward", "dpo"])
def test_a_trainer_trains_under_the_callers_lock(
    tmp_path: Path, chars: Any, kit: Any, kind: str
) -> None:
    out = tmp_path / "run"
    lock = run_lock(out).acquire()
    try:
        trainer = _trainer(kind, out, chars, kit, lock)
        state = trainer.fit()
        assert state.step == 2
        assert (out / LOCK_FILE).is_file()  # still the caller's: fit() did not release it
        with pytest.raises(ConfigError, match="another process"):
            run_lock(out).acquire()  # a second writer is still refused
    finally:
        lock.release()
    assert not (out / LOCK_FILE).exists()


def test_without_a_lock_fit_takes_and_releases_its_own(
    tmp_path: Path, chars: Any, kit: Any
) -> None:
    out = tmp_path / "run"
    trainer = _trainer("sft", out, chars, kit, None)
    trainer.fit()
    assert not (out / LOCK_FILE).exists()
