"""Fault injection for lego-peft: adapter checkpoints under SIGKILL, and the ``lego-peft`` CLI.

Every test runs real subprocesses (harness.py): the exit code, one message without a
traceback, and every file that existed before byte-identical afterwards.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import harness
import pytest
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


# -- the lego-peft command ------------------------------------------------------------------

PROG = "lego-peft"


def _cli(*args: str) -> list[str]:
    return harness.command("lego.peft.cli", *args)


def _write_model(folder: Path, **sizes: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    settings = {
        "vocab_size": 97,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **sizes,
    }
    LlamaForCausalLM(LlamaConfig(**settings)).save_pretrained(folder)


def _write_adapter(model_dir: Path, folder: Path, targets: list[str]) -> None:
    import warnings

    import peft
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        config = peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)
        peft.get_peft_model(base, config).save_pretrained(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama directory, an adapter for it, and one for a wider Llama."""
    root = tmp_path_factory.mktemp("peft-inputs")
    _write_model(root / "model")
    _write_adapter(root / "model", root / "adapter", ["q_proj", "v_proj"])
    _write_model(root / "wide", hidden_size=64, intermediate_size=96)
    _write_adapter(root / "wide", root / "wide-adapter", ["q_proj", "v_proj"])
    return root


def _copy(inputs: Path, tmp_path: Path) -> Path:
    import shutil

    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    return work


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (
            ["merge", "--model", "missing", "--adapter", "adapter", "-o", "out"],
            "no model directory",
        ),
        (["merge", "--model", "model", "--adapter", "nowhere", "-o", "out"], "adapter_config.json"),
        (["merge", "--model", "model", "--adapter", "adapter", "-o", "model"], "input"),
        (
            ["merge", "--model", "model", "--adapter", "adapter", "-o", "model/sub"],
            "inside an input",
        ),
        (["merge", "--model", "model", "--adapter", "adapter", "-o", "wide"], "not empty"),
        (["merge", "--model", "model", "--adapter", "wide-adapter", "-o", "out"], "q_proj"),
        (["quantize", "--model", "model", "-o", "adapter"], "not empty"),
        (["quantize", "--model", "adapter", "-o", "out"], "config.json"),
        (["info", "model"], "adapter_config.json"),
    ],
)
def test_bad_input_is_one_message_and_changes_nothing(
    inputs: Path, tmp_path: Path, args: list[str], phrase: str
) -> None:
    work = _copy(inputs, tmp_path)
    before = harness.snapshot(work)
    result = harness.run(_cli(*args), cwd=work)
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    harness.assert_unchanged(before, work)
    assert not (work / "out").exists()


def test_a_damaged_adapter_file_is_one_message(inputs: Path, tmp_path: Path) -> None:
    work = _copy(inputs, tmp_path)
    weights = work / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = harness.snapshot(work)
    for args in (
        ["merge", "--model", "model", "--adapter", "adapter", "-o", "out"],
        ["info", "adapter"],
    ):
        result = harness.run(_cli(*args), cwd=work)
        harness.assert_one_message(result, prog=PROG, phrase="adapter_model.safetensors")
    harness.assert_unchanged(before, work)
    assert not (work / "out").exists()


def test_merge_and_quantize_into_an_empty_folder_succeed(inputs: Path, tmp_path: Path) -> None:
    work = _copy(inputs, tmp_path)
    (work / "out").mkdir()
    before = harness.snapshot(work)
    result = harness.run(
        _cli("merge", "--model", "model", "--adapter", "adapter", "-o", "out"), cwd=work
    )
    assert result.code == 0, result.stderr
    assert (work / "out" / "model.safetensors").is_file()
    harness.assert_unchanged(before, work)
    result = harness.run(_cli("quantize", "--model", "out", "-o", "out-nf4"), cwd=work)
    assert result.code == 0, result.stderr
    assert "quantization_config" in (work / "out-nf4" / "config.json").read_text()


@pytest.mark.parametrize("command", ["merge", "quantize"])
def test_a_full_disk_is_one_message_and_leaves_nothing(
    inputs: Path, tmp_path: Path, command: str
) -> None:
    work = _copy(inputs, tmp_path)
    before = harness.snapshot(work)
    with harness.small_disk(tmp_path / "disk", size_kib=48) as (disk, limit):
        out = disk / "out"
        args = ["--model", "model", "-o", str(out)]
        if command == "merge":
            args += ["--adapter", "adapter"]
        result = harness.run(_cli(command, *args), cwd=work, file_size_limit=limit)
        harness.assert_one_message(result, prog=PROG, phrase="cannot write")
        assert not out.exists()
        assert list(disk.iterdir()) == []  # no temporary folder left behind
    harness.assert_unchanged(before, work)


def test_sigint_during_merge_exits_130_and_leaves_nothing(tmp_path: Path) -> None:
    _write_model(
        tmp_path / "big",
        vocab_size=8000,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    _write_adapter(tmp_path / "big", tmp_path / "adapter", ["q_proj", "up_proj", "down_proj"])
    before = harness.snapshot(tmp_path)
    process = harness.start(
        _cli("merge", "--model", "big", "--adapter", "adapter", "-o", "out"), cwd=tmp_path
    )
    harness.run_until(process, "merging")
    result = harness.interrupt(process, signal.SIGINT)
    harness.assert_one_message(result, code=130)
    assert "interrupted" in result.stderr
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    harness.assert_unchanged(before, tmp_path)
