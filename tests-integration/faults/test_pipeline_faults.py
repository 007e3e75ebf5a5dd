"""Faults of ``legollm pipeline`` (issues 17 and 23), through real processes.

Each test asserts the exit code, one message on stderr without "Traceback", and that every
file that existed before is byte-identical afterwards. The prepared data (the tokenizer
trained for the tiny run) is cached once per module by a finished 2-step pipeline, with the
stages after pretraining switched off; the stage faults (issue 23: SIGINT / SIGTERM during
SFT and DPO, an unwritable stage folder) switch them on, small, in a copy of that run.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import harness
import pytest
from test_train import full_disk
from tiny_train import TINY_RUN

CONFIG = Path(__file__).resolve().parents[2] / "examples" / "pipelines" / "tiny.yaml"
SMALL = [
    "eval_every=2",
    "eval_batches=2",
    "checkpoint_every=2",
    "log_every=1",
    "progress=plain",
    *TINY_RUN,
    "report.max_new_tokens=8",
    "report.attention_tokens=8",
    "model.overrides.context_length=128",  # room for the stages' rows (longer than 32 tokens)
    "sft.enabled=false",
    "dpo.enabled=false",
]
STAGES = [
    "eval.stages.enabled=false",
    *[
        f"{stage}.{key}"
        for stage in ("sft", "dpo")
        for key in (
            "enabled=true",
            "checkpoint_every=50",
            "log_every=1",
            "progress=plain",
            "plots=false",
            "schedule.warmup_steps=0",
            "data.train_count=48",
            "data.eval_count=8",
            f"{stage}.max_length=128",
            f"{stage}.batch_size=4",
        )
    ],
]
"""Overrides that switch SFT and DPO on, at the tiny run's sizes."""


def pipeline(cache: Path, *extra: str) -> list[str]:
    """``legollm pipeline`` of the tiny example with the tiny run's sizes."""
    return harness.command(
        "lego.recipes.cli",
        "pipeline",
        "--config",
        str(CONFIG),
        *SMALL,
        f"data.cache_dir={cache}",
        *extra,
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(run, cache)``: a finished 2-step pipeline run and the data cache it filled."""
    root = tmp_path_factory.mktemp("pipeline")
    run, cache = root / "run", root / "cache"
    result = harness.run(pipeline(cache, f"out_dir={run}", "max_steps=2"), cwd=root)
    assert result.code == 0, result.stderr
    assert (run / "report.md").is_file()
    return run, cache


def test_report_settings_fail_before_any_work(tmp_path: Path) -> None:
    """Item 15: report.max_new_tokens past the context is exit 2 before the tokenizer."""
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    result = harness.run(
        pipeline(cache, f"runs_dir={runs}", "report.max_new_tokens=1000"), cwd=tmp_path
    )
    harness.assert_one_message(result, prog="legollm", phrase="report.max_new_tokens")
    assert not runs.exists() or not list(runs.iterdir())
    assert not cache.exists()


def test_a_finished_run_is_continued_not_replaced(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Item 1: the pipeline's "same command continues" logic survives the run guard."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    step2 = run / "checkpoints" / "step-00000002"
    before = harness.snapshot(step2)
    result = harness.run(pipeline(finished[1], f"out_dir={run}", "max_steps=4"), cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "continuing the run" in result.stdout + result.stderr
    assert "resumed from" in result.stderr
    harness.assert_unchanged(before, step2)  # the finished step is kept (keep_last 2)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004"


def test_a_full_disk_is_one_message_and_leaves_no_temporary_checkpoint(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Item 10: the disk fills up at the first checkpoint: exit 2, how to continue."""
    with full_disk(tmp_path / "disk", used_kib=64, free_kib=200) as (disk, limit):
        run = disk / "run"
        before = harness.snapshot(finished[1])
        result = harness.run(
            pipeline(finished[1], f"out_dir={run}", "max_steps=4"),
            cwd=tmp_path,
            file_size_limit=limit,
        )
        harness.assert_one_message(result, prog="legollm", phrase="run the same command again")
        checkpoints = run / "checkpoints"
        leftovers = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        assert not [name for name in leftovers if name.startswith(".")]
        assert not [p for p in run.iterdir() if ".tmp" in p.name]
        harness.assert_unchanged(before, finished[1])


def test_two_pipelines_on_one_run_directory(finished: tuple[Path, Path], tmp_path: Path) -> None:
    """Items 4 and 14: the second gets one error; SIGTERM then exits 143, resumable."""
    run = tmp_path / "run"
    first = harness.start(pipeline(finished[1], f"out_dir={run}", "max_steps=100000"), cwd=tmp_path)
    try:
        harness.run_until(first, "train: 3 of")
        before = harness.snapshot(tmp_path, exclude=[run])
        second = harness.run(pipeline(finished[1], f"out_dir={run}", "max_steps=4"), cwd=tmp_path)
        harness.assert_one_message(second, prog="legollm", phrase="another process")
        harness.assert_unchanged(before, tmp_path)
        stopped = harness.interrupt(first, signal.SIGTERM)
    finally:
        if first.poll() is None:
            first.kill()
    assert stopped.code == 143, stopped.stdout
    assert "Traceback" not in stopped.stdout
    assert "run the same command again" in stopped.stdout
    assert json.loads((run / "pipeline.json").read_text())["status"] == "running"
    assert (run / "checkpoints" / "latest").is_file()


def test_garbage_in_checkpoints_latest(finished: tuple[Path, Path], tmp_path: Path) -> None:
    """Item 11: the pipeline's run with a damaged ``latest`` is one FormatError."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    (run / "checkpoints" / "latest").write_bytes(b"\x00\xff\xfe not a name \x80")
    before = harness.snapshot(tmp_path)
    result = harness.run(pipeline(finished[1], f"out_dir={run}", "max_steps=4"), cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="latest-checkpoint file")
    harness.assert_unchanged(before, tmp_path)


def _stage_run(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the finished 2-step run, for the stages to continue."""
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    return run


@pytest.mark.parametrize(
    ("stage", "signum", "code"),
    [
        ("sft", signal.SIGINT, 130),
        ("sft", signal.SIGTERM, 143),
        ("dpo", signal.SIGINT, 130),
        ("dpo", signal.SIGTERM, 143),
    ],
)
def test_a_signal_during_a_stage_exits_and_the_same_command_finishes(
    finished: tuple[Path, Path], tmp_path: Path, stage: str, signum: int, code: int
) -> None:
    """Issue 23: a stage stopped mid-training keeps its checkpoint; a rerun finishes."""
    run = _stage_run(finished, tmp_path)
    lengths = ["sft.max_steps=4", "dpo.max_steps=4", f"{stage}.max_steps=100000"]
    argv = pipeline(finished[1], f"out_dir={run}", "max_steps=2", *STAGES, *lengths)
    before = harness.snapshot(run / "model")
    process = harness.start(argv, cwd=tmp_path)
    try:
        harness.run_until(process, f"{stage}: from ")
        harness.run_until(process, "train: 3 of 100,000")
        stopped = harness.interrupt(process, signum)
    finally:
        if process.poll() is None:
            process.kill()
    assert stopped.code == code, stopped.stdout
    assert "Traceback" not in stopped.stdout
    assert f"stopped the {stage} stage at step" in stopped.stdout
    assert "run the same command again" in stopped.stdout
    assert (run / stage / "checkpoints" / "latest").is_file()
    assert not (run / stage / "model").exists()
    record = json.loads((run / "pipeline.json").read_text())
    assert record["status"] == "running"
    assert record["stages"][stage] == "running"
    # the same command, with a reachable length for the stopped stage: it continues it
    again = [*argv[: -len(lengths)], "sft.max_steps=4", "dpo.max_steps=4", f"{stage}.max_steps=10"]
    result = harness.run(again, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert "resumed from" in result.stderr + result.stdout
    assert (run / "chat" / "model.safetensors").is_file()
    record = json.loads((run / "pipeline.json").read_text())
    assert (record["status"], record["stages"]["sft"], record["stages"]["dpo"]) == (
        "done",
        "done",
        "done",
    )
    if stage == "dpo":
        assert "sft: done earlier" in result.stdout  # a finished stage is not redone
    harness.assert_unchanged(before, run / "model")


def test_an_unwritable_stage_folder_is_one_message(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    """Issue 23: ``run/sft`` cannot be a folder: exit 2, one message, nothing changed."""
    run = _stage_run(finished, tmp_path)
    (run / "sft").write_text("a file where the stage's folder goes\n")
    before = harness.snapshot(run)
    argv = pipeline(finished[1], f"out_dir={run}", "max_steps=2", *STAGES, "sft.max_steps=2")
    result = harness.run(argv, cwd=tmp_path)
    harness.assert_one_message(result, prog="legollm", phrase="the sft stage cannot write")
    assert (run / "sft").is_file()
    harness.assert_unchanged(before, run)  # refused before pretraining resumed
