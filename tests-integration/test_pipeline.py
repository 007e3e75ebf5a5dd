"""The demo pipeline end to end: ``legollm pipeline`` with every brick, small settings.

Runs the shipped ``examples/pipelines/tiny.yaml`` with a small model and few steps: the
report, its pictures and the model directory appear; an interrupted run (a real SIGINT to a
real process) continues where it stopped when the same command runs again; an unwritable
run directory and a full disk give one clear message.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from tiny_train import TINY_RUN

from lego.generate import generate
from lego.recipes.cli import _main, main
from lego.recipes.loading import load_model, load_tokenizer
from lego.recipes.pipeline import PIPELINE_FILE

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "pipelines" / "tiny.yaml"
SMALL = [
    "eval_every=4",
    "eval_batches=2",
    "checkpoint_every=4",
    "log_every=1",
    "progress=plain",
    *TINY_RUN,
    "report.max_new_tokens=8",
    "report.attention_tokens=8",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lego-cache")


def _args(runs: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "pipeline",
        "--config",
        str(CONFIG),
        f"runs_dir={runs}",
        f"data.cache_dir={cache}",
        *SMALL,
        *extra,
    ]


def test_pipeline_writes_the_report(tmp_path: Path, cache_dir: Path) -> None:
    runs = tmp_path / "runs"
    assert _main(_args(runs, cache_dir, "max_steps=8")) == 0
    (run,) = list(runs.iterdir())
    report = (run / "report.md").read_text()
    for name in ("loss.png", "attention.png"):
        assert (run / name).read_bytes().startswith(b"\x89PNG"), name
        assert f"]({name})" in report
    assert "unigram baseline" in report
    assert report.count("```text") == 9  # 3 prompts x greedy, top-k, top-p
    assert (run / "model" / "config.json").is_file()
    assert (run / "model" / "lego-tokenizer.json").is_file()
    assert json.loads((run / PIPELINE_FILE).read_text())["status"] == "done"
    _serves(run)

    # a finished run is left alone: the same command starts a new one
    assert _main(_args(runs, cache_dir, "max_steps=4")) == 0
    assert len(list(runs.iterdir())) == 2


def _serves(run: Path) -> None:
    """``legollm serve --model <run>`` serves the run's model: greedy text = lego.generate."""
    model, model_dir = load_model(run)
    tokenizer = load_tokenizer(None, model_dir)
    prompt = tokenizer.encode("def ")
    expected = generate(model, torch.tensor([prompt]), max_new_tokens=8)[0, len(prompt) :]
    command = [sys.executable, "-m", "lego.recipes.cli", "serve", "--model", str(run)]
    with subprocess.Popen(
        [*command, "--port", "0"],
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as in a terminal, even when the suite runs in the background (SIG_IGN)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()
            assert "serving" in line, line + process.stderr.read()
            url = line.split(" at ", 1)[1].split(" ", 1)[0]
            body = {"model": run.name, "prompt": "def ", "max_tokens": 8, "temperature": 0}
            request = urllib.request.Request(
                f"{url}/v1/completions",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                reply = json.loads(response.read())
            # the engine stops at EOS, greedy generate() runs on: compare the common part
            text = reply["choices"][0]["text"]
            assert text == tokenizer.decode(expected.tolist())[: len(text)]
            assert reply["usage"]["prompt_tokens"] == len(prompt)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    assert process.returncode == 130


def _lines_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} never printed:\n{''.join(seen)}")


def test_interrupted_run_continues_with_the_same_command(tmp_path: Path, cache_dir: Path) -> None:
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "lego.recipes.cli", *_args(runs, cache_dir, "max_steps=400")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        _lines_until(process, "train: 5 of 400 steps")  # past the first checkpoint (step 4)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, rest
    assert "SIGINT received: checkpoint saved" in rest
    assert "run the same command again" in rest
    (run,) = list(runs.iterdir())
    assert json.loads((run / PIPELINE_FILE).read_text())["status"] == "running"
    assert not (run / "report.md").exists()

    again = subprocess.run(
        [*command[:-1], "max_steps=12"],  # the same run, cut shorter to keep the test fast
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0, output
    assert f"continuing the run in {run}" in output
    assert "resumed from" in output
    assert (run / "report.md").is_file()
    assert list(runs.iterdir()) == [run]


def test_unwritable_runs_dir_is_one_clear_error(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        main(_args(blocker / "runs", cache_dir, "max_steps=4"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "cannot write the run directory" in err
    assert "Traceback" not in err


def test_full_disk_says_how_to_continue(
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def full(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, "No space left on device", "checkpoints/.tmp-step-00000004")

    monkeypatch.setattr("lego.recipes.pipeline.build_pretraining", full)
    with pytest.raises(SystemExit) as exit_:
        main(_args(tmp_path / "runs", cache_dir, "max_steps=4"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err
    assert "run the same command again" in err
