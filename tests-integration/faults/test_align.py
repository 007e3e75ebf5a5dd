"""Faults of ``legollm finetune`` and ``legollm align`` (issue 19), through real processes.

Every test runs the command as a user would, from the example configs, on the tiny model
and records that ``examples/align/make_tiny.py`` writes once per module, and asserts the
exit code, one message on stderr without "Traceback", and that every file that existed
before (the model directory, the records) is byte-identical afterwards:

- Ctrl-C (SIGINT) and SIGTERM mid-run: exit 130 / 143 after a checkpoint, the message says
  how to continue, the checkpoint passes the check a resume makes, and the resumed run
  finishes and writes its model directory; a second writer of the same ``out_dir`` is
  refused while the first trains;
- bad input: an unknown config key, a bad JSONL line, a missing field (exit 2, one message
  naming the file and the line), before ``out_dir`` exists;
- the disk: full at a checkpoint and full at the final model directory (exit 2, no
  temporary left, ``resume=auto`` then finishes), a read-only output folder.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import harness
import pytest
from test_train import _read_only, full_disk

from lego.protocols.layout import read_latest
from lego.train.checkpoint import CheckpointManager

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "align"

RECIPES = {
    "finetune": (["finetune"], "sft-tiny.yaml", "sft.jsonl", "sft-eval.jsonl"),
    "dpo": (["align", "dpo"], "dpo-tiny.yaml", "preferences.jsonl", "preferences-eval.jsonl"),
    "reward": (["align", "reward"], "reward-tiny.yaml", "preferences.jsonl", ""),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder make_tiny.py writes: ``model/`` and the JSONL records."""
    root = tmp_path_factory.mktemp("align-tiny")
    result = harness.run([sys.executable, str(EXAMPLES / "make_tiny.py"), str(root)], cwd=root)
    assert result.code == 0, result.stderr
    return root


def recipe(name: str, tiny: Path, out: Path, *extra: str) -> list[str]:
    """The command of a recipe's example config on ``tiny``, writing into ``out``."""
    words, config, train, evaluation = RECIPES[name]
    return harness.command(
        "lego.recipes.cli",
        *words,
        "--config",
        str(EXAMPLES / config),
        f"model={tiny / 'model'}",
        f"data.train={tiny / train}",
        f"data.eval={tiny / evaluation}" if evaluation else "data.eval=''",
        f"out_dir={out}",
        "progress=plain",
        "log_every=1",
        "eval_every=0",
        "plots=false",
        "schedule.warmup_steps=1",
        *extra,
    )


def _checkpoint_step(run: Path) -> int:
    """The newest checkpoint's step, after the check a resume makes (sizes, SHA-256s)."""
    latest = read_latest(run)
    assert latest is not None
    CheckpointManager(run_dir=run, keep_last=0).read_state(latest)
    return int(latest.name.removeprefix("step-"))


@pytest.mark.parametrize(
    ("name", "signum", "code"),
    [("finetune", signal.SIGINT, 130), ("dpo", signal.SIGTERM, 143)],
)
def test_a_signal_saves_a_checkpoint_and_resume_finishes(
    tiny: Path, tmp_path: Path, name: str, signum: int, code: int
) -> None:
    """Ctrl-C / SIGTERM: exit 130 / 143, a verified checkpoint; resume=auto finishes."""
    before = harness.snapshot(tiny)
    run = tmp_path / "run"
    extra = ["dpo.reference=precomputed"] if name == "dpo" else []  # its cache is reused
    process = harness.start(
        recipe(name, tiny, run, "max_steps=100000", "checkpoint_every=2", *extra), cwd=tmp_path
    )
    try:
        harness.run_until(process, "train: 3 of")
        if name == "dpo":  # a second writer is refused while the first trains
            second = harness.run(recipe(name, tiny, run, "resume=auto"), cwd=tmp_path)
            harness.assert_one_message(second, prog="legollm", phrase="another process")
        result = harness.interrupt(process, signum)
    finally:
        if process.poll() is None:
            process.kill()
    assert result.code == code, result.stdout
    assert "Traceback" not in result.stdout
    assert "checkpoint saved" in result.stdout
    assert "resume=auto" in result.stdout
    step = _checkpoint_step(run)
    assert step >= 3
    assert not (run / "model").exists()  # not finished: no model directory yet
    again = harness.run(
        recipe(name, tiny, run, f"max_steps={step + 2}", "resume=auto", *extra), cwd=tmp_path
    )
    assert again.code == 0, again.stderr
    assert f"at step {step}" in again.stderr
    assert f"done: step {step + 2}/{step + 2}" in again.stdout
    assert (run / "model" / "config.json").is_file()
    harness.assert_unchanged(before, tiny)


@pytest.mark.parametrize(
    ("name", "override", "phrase"),
    [
        ("finetune", "sft.lora.rr=4", "did you mean 'r'"),
        ("dpo", "dpo.beta=-1", "beta must be > 0"),
        ("reward", "reward.max_lenght=32", "did you mean 'max_length'"),
        ("finetune", "sft.max_length=4096", "longer than the model's context"),
    ],
)
def test_a_bad_setting_is_one_message(
    tiny: Path, tmp_path: Path, name: str, override: str, phrase: str
) -> None:
    before = harness.snapshot(tmp_path)
    tiny_before = harness.snapshot(tiny)
    result = harness.run(recipe(name, tiny, tmp_path / "run", override), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase=phrase)
    assert not (tmp_path / "run").exists()
    harness.assert_unchanged(before, tmp_path)
    harness.assert_unchanged(tiny_before, tiny)


@pytest.mark.parametrize(
    ("name", "source", "line", "text", "phrase"),
    [
        ("finetune", "sft.jsonl", 4, '{"prompt": "repeat dog", "completion": ', "not valid JSON"),
        ("dpo", "preferences.jsonl", 7, '{"prompt": "a", "chosen": "b"}', "rejected"),
        ("reward", "preferences.jsonl", 2, '["not", "an", "object"]', "line 2"),
    ],
)
def test_a_bad_record_names_the_file_and_the_line(
    tiny: Path, tmp_path: Path, name: str, source: str, line: int, text: str, phrase: str
) -> None:
    lines = (tiny / source).read_text().splitlines()
    lines[line - 1] = text
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    before = harness.snapshot(tmp_path)
    result = harness.run(recipe(name, tiny, tmp_path / "run", f"data.train={bad}"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase=phrase)
    assert str(bad) in result.stderr
    assert f"line {line}" in result.stderr
    assert not (tmp_path / "run").exists()
    harness.assert_unchanged(before, tmp_path)


def test_a_full_disk_at_a_checkpoint(tiny: Path, tmp_path: Path) -> None:
    """The first checkpoint (the whole model: full fine-tuning) does not fit: exit 2."""
    before = harness.snapshot(tiny)
    with full_disk(tmp_path / "disk", used_kib=64, free_kib=200) as (disk, limit):
        run = disk / "run"
        result = harness.run(
            recipe("finetune", tiny, run, "sft.finetune=full", "max_steps=4", "checkpoint_every=2"),
            cwd=tmp_path,
            file_size_limit=limit,
        )
        harness.assert_one_message(result, prog="legollm", phrase="resume=auto")
        assert "space" in result.stderr or "too large" in result.stderr
        assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        assert read_latest(run) is None
        assert not (run / "model").exists()
        freed = tmp_path / "freed"
        shutil.copytree(run, freed)
    result = harness.run(
        recipe("finetune", tiny, freed, "sft.finetune=full", "max_steps=4", "resume=auto"),
        cwd=tmp_path,
    )
    assert result.code == 0, result.stderr
    assert (freed / "model" / "model.safetensors").is_file()
    harness.assert_unchanged(before, tiny)


def test_a_full_disk_at_the_model_directory(tiny: Path, tmp_path: Path) -> None:
    """LoRA checkpoints fit, the merged model does not: exit 2; resume=auto writes it."""
    before = harness.snapshot(tiny)
    with full_disk(tmp_path / "disk", used_kib=64, free_kib=400) as (disk, limit):
        run = disk / "run"
        result = harness.run(
            recipe("finetune", tiny, run, "max_steps=3", "checkpoint_every=0"),
            cwd=tmp_path,
            file_size_limit=limit,
        )
        harness.assert_one_message(result, prog="legollm", phrase="model directory")
        assert "resume=auto" in result.stderr
        assert _checkpoint_step(run) == 3  # training finished and was saved
        assert not (run / "model").exists()
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
        freed = tmp_path / "freed"
        shutil.copytree(run, freed)
    result = harness.run(
        recipe("finetune", tiny, freed, "max_steps=3", "resume=auto"), cwd=tmp_path
    )
    assert result.code == 0, result.stderr
    assert "done: step 3/3" in result.stdout
    config = json.loads((freed / "model" / "config.json").read_text())
    assert config["eos_token_id"] == [256, 258]
    harness.assert_unchanged(before, tiny)


def test_a_read_only_output_folder(tiny: Path, tmp_path: Path) -> None:
    parent = tmp_path / "outputs"
    parent.mkdir()
    before = harness.snapshot(tmp_path)
    with _read_only(parent) as folder:
        result = harness.run(recipe("dpo", tiny, folder / "run"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="cannot")
    assert "training run" in result.stderr
    harness.assert_unchanged(before, tmp_path)
    assert not (parent / "run").exists()
