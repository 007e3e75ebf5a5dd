"""Faults of ``legollm align grpo`` (issue 20), through real processes.

Every test runs the command as a user would, from ``examples/align/grpo-tiny.yaml`` with
small sizes, on the tiny model that ``examples/align/make_grpo_tiny.py`` writes once per
module, and asserts the exit code, one message on stderr without "Traceback", and that every
file that existed before (the model directory, the records) is byte-identical afterwards:

- Ctrl-C (SIGINT) during GRPO and SIGTERM during the supervised warm-up: exit 130 / 143
  after a checkpoint of that stage, the message says how to continue, the checkpoint passes
  the check a resume makes, and ``resume=auto`` finishes the run (the warm-up is not
  trained again once its model is written);
- bad settings: a misspelt key (the closest key suggested), ``num_generations`` < 2, an
  unknown task, a task and files at once, a completion too long for the context, a
  warm-up schedule longer than the warm-up (all before ``out_dir`` exists);
- missing files (the model, the records) and bad records (not JSON, no answer): exit 2,
  one message naming the file and the line, before ``out_dir`` exists.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import harness
import pytest
from rl_faults import assert_refused, assert_saved, checkpoint_step, interrupt_after

from lego.protocols.layout import read_latest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "align"
SMALL = (
    "progress=plain",
    "log_every=1",
    "eval_every=0",
    "plots=false",
    "sft.max_steps=4",
    "sft.schedule.warmup_steps=1",
    "sft.batch_size=8",
    "data.train_count=64",
    "data.eval_count=8",
    "grpo.prompts_per_step=2",
    "grpo.num_generations=2",
    "schedule.warmup_steps=1",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder make_grpo_tiny.py writes: ``model/``."""
    root = tmp_path_factory.mktemp("grpo-tiny")
    result = harness.run([sys.executable, str(EXAMPLES / "make_grpo_tiny.py"), str(root)], cwd=root)
    assert result.code == 0, result.stderr
    return root


def grpo(tiny: Path, out: Path, *extra: str) -> list[str]:
    """The command of the example config on ``tiny``, small, writing into ``out``."""
    return harness.command(
        "lego.recipes.cli",
        "align",
        "grpo",
        "--config",
        str(EXAMPLES / "grpo-tiny.yaml"),
        f"model={tiny / 'model'}",
        f"out_dir={out}",
        *SMALL,
        *extra,
    )


def test_sigint_during_grpo_saves_and_resume_finishes(tiny: Path, tmp_path: Path) -> None:
    """Ctrl-C in the GRPO stage: exit 130 after a checkpoint; resume=auto finishes it."""
    before = harness.snapshot(tiny)
    run = tmp_path / "run"

    def second() -> None:  # a second writer while the first runs: refused
        other = harness.run(grpo(tiny, run, "resume=auto"), cwd=tmp_path)
        harness.assert_one_message(other, prog="legollm", phrase="another process")

    result = interrupt_after(
        grpo(tiny, run, "max_steps=100000", "checkpoint_every=2"),
        tmp_path,
        "train: 3 of 100,000",
        signal.SIGINT,
        meanwhile=second,
    )
    assert_saved(result, 130)
    assert (run / "sft" / "model" / "model.safetensors").is_file()  # the warm-up finished
    step = checkpoint_step(run)
    assert step >= 3
    assert not (run / "model").exists()
    again = harness.run(grpo(tiny, run, f"max_steps={step + 2}", "resume=auto"), cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert "warm-up: done earlier" in again.stderr
    assert f"at step {step}" in again.stderr
    assert f"done: step {step + 2}/{step + 2}" in again.stdout
    assert (run / "model" / "config.json").is_file()
    harness.assert_unchanged(before, tiny)


def test_sigterm_during_the_warm_up_saves_and_resume_finishes(tiny: Path, tmp_path: Path) -> None:
    """SIGTERM in the SFT warm-up: exit 143, its checkpoint; resume=auto runs both stages."""
    before = harness.snapshot(tiny)
    run = tmp_path / "run"
    result = interrupt_after(
        grpo(tiny, run, "sft.max_steps=100000", "checkpoint_every=2", "max_steps=2"),
        tmp_path,
        "train: 3 of 100,000",
        signal.SIGTERM,
    )
    assert_saved(result, 143)
    step = checkpoint_step(run / "sft")
    assert step >= 3
    assert not (run / "sft" / "model").exists()
    assert read_latest(run) is None  # GRPO never started
    fresh = harness.run(grpo(tiny, run, "max_steps=2"), cwd=tmp_path)  # not resume: refused
    harness.assert_one_message(fresh, prog="legollm", phrase="warm-up run")
    again = harness.run(
        grpo(tiny, run, f"sft.max_steps={step + 2}", "max_steps=2", "resume=auto"),
        cwd=tmp_path,
    )
    assert again.code == 0, again.stderr
    assert f"at step {step}" in again.stderr
    assert "done: step 2/2" in again.stdout
    assert (run / "sft" / "model" / "model.safetensors").is_file()
    assert (run / "model" / "model.safetensors").is_file()
    harness.assert_unchanged(before, tiny)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("grpo.num_generation=4", "did you mean 'num_generations'"),
        ("sft.max_step=3", "did you mean 'max_steps'"),
        ("data.tsk=sort", "did you mean 'task'"),
        ("grpo.num_generations=1", "num_generations"),
        ("data.task=sorting", "did you mean 'sort'"),
        ("data.train=prompts.jsonl", "both a task"),
        ("grpo.max_completion_length=60", "more than the model's context"),
        ("reward.extract=regex", "reward.pattern is empty"),
        ("sft.schedule.warmup_steps=10", "sft.schedule.warmup_steps"),
    ],
)
def test_a_bad_setting_is_one_message(
    tiny: Path, tmp_path: Path, override: str, phrase: str
) -> None:
    run = tmp_path / "run"
    assert_refused(grpo(tiny, run, override), tmp_path, tiny, run, phrase)


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ("model=no-such-model", "no-such-model"),
        ("data.train=missing.jsonl", "does not exist"),
    ],
)
def test_a_missing_file_is_one_message(
    tiny: Path, tmp_path: Path, override: str, phrase: str
) -> None:
    extra = ["data.task=''"] if override.startswith("data.") else []
    run = tmp_path / "run"
    assert_refused(grpo(tiny, run, *extra, override), tmp_path, tiny, run, phrase)


ROWS = [
    '{"prompt": "sort 3 1 2 =", "completion": " 1 2 3", "answer": "1 2 3"}',
    '{"prompt": "sort 5 4 =", "completion": " 4 5", "answer": "4 5"}',
    '{"prompt": "sort 9 0 7 =", "completion": " 0 7 9", "answer": "0 7 9"}',
    '{"prompt": "sort 2 2 1 =", "completion": " 1 2 2", "answer": "1 2 2"}',
]


@pytest.mark.parametrize(
    ("line", "text", "phrase"),
    [
        (3, '{"prompt": "sort 1 2 =", "answer": ', "not valid JSON"),
        (2, '{"prompt": "sort 5 4 =", "completion": " 4 5"}', "'answer'"),
        (4, '{"completion": " 1 2", "answer": "1 2"}', "prompt"),
    ],
)
def test_a_bad_record_names_the_file_and_the_line(
    tiny: Path, tmp_path: Path, line: int, text: str, phrase: str
) -> None:
    lines = list(ROWS)
    lines[line - 1] = text
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    command = grpo(tiny, run, "data.task=''", f"data.train={bad}", "data.eval=''")
    result = assert_refused(command, tmp_path, tiny, run, phrase)
    assert str(bad) in result.stderr
    assert f"line {line}" in result.stderr
