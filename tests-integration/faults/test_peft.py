"""Fault injection for lego-peft: adapter checkpoints under SIGKILL, and the ``lego-peft`` CLI.

Every test runs real subprocesses (harness.py): the exit code, one message without a
traceback, and every file that existed before byte-identical afterwards.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import harness
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
TRAIN = [sys.executable, str(HERE / "peft_train.py")]


def _adapter(folder: Path) -> dict[str, object]:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_adapter_checkpoints_hold_the_adapter_and_a_base_reference(tmp_path: Path) -> None:
    result = harness.run([*TRAIN, str(tmp_path / "run"), "2", "-"], cwd=tmp_path)
    assert result.code == 0, result.stderr
    model_dir = tmp_path / "run" / "checkpoints" / "step-00000002" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "base_model.json",
    ]
    text = (model_dir / "base_model.json").read_text()
    assert '"sha256"' in text
    assert "tiny-llama-seed-0" in text
    # the adapter only: rank-4 A/B of 14 linear layers, no base tensor
    assert all(".lora_" in key for key in _adapter(model_dir))


def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(tmp_path: Path) -> None:
    unbroken = tmp_path / "unbroken"
    result = harness.run([*TRAIN, str(unbroken), "5", "-"], cwd=tmp_path)
    assert result.code == 0, result.stderr

    broken = tmp_path / "broken"
    process = harness.start([*TRAIN, str(broken), "5", "-", "0.5"], cwd=tmp_path)
    harness.run_until(process, "SAVED 2")
    harness.interrupt(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not (broken / "final").exists()
    resumed = harness.run([*TRAIN, str(broken), "5", "latest"], cwd=tmp_path)
    assert resumed.code == 0, resumed.stderr

    expected, got = _adapter(unbroken / "final"), _adapter(broken / "final")
    assert sorted(expected) == sorted(got)
    import torch

    for key, tensor in expected.items():
        assert torch.equal(tensor, got[key]), key  # type: ignore[arg-type]
