from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lego.protocols import CompatibilityError, ConfigError, FormatError
from lego.train import (
    TrainConfig,
    Trainer,
)

MakeTrainer = Callable[..., Trainer]


def test_resume_in_process_matches_uninterrupted(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    full = make_trainer(base_config.replace(max_steps=6, out_dir=base_config.out_dir + "f"))
    full.fit()
    part = make_trainer(base_config.replace(max_steps=6, checkpoint_every=3))
    part.fit()
    resumed = make_trainer(
        base_config.replace(
            max_steps=6, resume=str(Path(part.config.out_dir) / "checkpoints" / "step-00000003")
        ),
    )
    assert resumed.state.step == 3
    resumed.fit()
    pairs = zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True)
    for a, b in pairs:
        assert torch.equal(a, b)


def test_keep_last_and_latest(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    trainer = make_trainer(base_config.replace(checkpoint_every=1, keep_last=2))
    trainer.fit()
    folder = Path(base_config.out_dir) / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-00000005", "step-00000006"]
    state = json.loads((folder / "step-00000006" / "trainer_state.json").read_text())
    assert state["step"] == 6
    assert "model/model.safetensors" in state["files"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_checkpoint_is_a_format_error_naming_the_file(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig, damage: str
) -> None:
    make_trainer(base_config).fit()
    target = Path(base_config.out_dir) / "checkpoints" / "step-00000006" / "optimizer.pt"
    data = target.read_bytes()
    mid = len(data) // 2
    flipped = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
    target.write_bytes(data[:mid] if damage == "truncate" else flipped)
    with pytest.raises(FormatError, match=r"optimizer\.pt"):
        make_trainer(base_config.replace(resume="latest"))


def test_other_model_shape_is_a_compatibility_error(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    make_trainer(base_config).fit()
    other = tiny.TinyLM(tiny.TinyConfig(d_model=24))
    with pytest.raises(CompatibilityError) as info:
        make_trainer(base_config.replace(resume="latest"), model=other)
    text = str(info.value)
    assert "config d_model: checkpoint 16, model 24" in text
    assert "embed.weight" in text


def test_other_tokenizer_is_a_compatibility_error(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    make_trainer(base_config, tokenizer_hash="a" * 64).fit()
    with pytest.raises(CompatibilityError, match="tokenizer"):
        make_trainer(base_config.replace(resume="latest"), tokenizer_hash="b" * 64)


def test_resume_latest_without_checkpoint_starts_fresh(
    make_trainer: MakeTrainer, tiny: Any, base_config: TrainConfig
) -> None:
    trainer = make_trainer(base_config.replace(resume="latest"))
    assert trainer.resumed_from is None
    assert trainer.state.step == 0
    with pytest.raises(ConfigError, match="resume"):
        make_trainer(base_config.replace(resume=str(Path(base_config.out_dir) / "nope")))


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"step": "six"}, "step"),
        ({"tokens_seen": -1}, "tokens_seen"),
        ({"files": []}, "files"),
        ({"stepz": 1}, "stepz"),
    ],
)
def test_damaged_trainer_state_is_a_format_error_naming_the_key(
    make_trainer: MakeTrainer,
    base_config: TrainConfig,
    change: dict[str, Any],
    key: str,
) -> None:
    from lego.protocols import FormatError

    make_trainer(base_config).fit()
    path = Path(base_config.out_dir) / "checkpoints" / "step-00000006" / "trainer_state.json"
    state = json.loads(path.read_text())
    state.update(change)
    path.write_text(json.dumps(state))
    with pytest.raises(FormatError) as info:
        make_trainer(base_config.replace(resume="latest"))
    assert info.value.key == key
    assert info.value.path == str(path)
    assert "trainer state file is not valid" in info.value.message
