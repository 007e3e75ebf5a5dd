"""The demo pipeline end to end: ``legollm pipeline`` with every brick, small settings.

Runs the shipped ``examples/pipelines/tiny.yaml`` with a small model and few steps: the
report, its pictures, the evaluation (``eval.json`` equal to lego-eval called directly on the
saved model, the report's tables) and the model directory appear; an interrupted run (a
real SIGINT to a real process) continues where it stopped when the same command runs again;
Ctrl-C during the evaluation keeps the parts measured and the next command computes only the
rest; ``eval.enabled=false`` leaves the section out; an unwritable run directory and a full
disk give one clear message.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_train import TINY_RUN

from lego.data.meta import open_split
from lego.eval import CoreTask, evaluate_core, perplexity, text_perplexity
from lego.eval.tasks import tasks_dir
from lego.generate import generate
from lego.recipes import pipeline_eval
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
    "sft.enabled=false",  # the stages after pretraining: tests/test_pipeline_stages.py
    "dpo.enabled=false",
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
    _evaluated(run, report, cache_dir)
    _serves(run)

    # a finished run is left alone: the same command starts a new one; no eval: no section
    assert _main(_args(runs, cache_dir, "max_steps=4", "eval.enabled=false")) == 0
    (second,) = set(runs.iterdir()) - {run}
    assert "## Evaluation" not in (second / "report.md").read_text()
    assert "unigram baseline" in (second / "report.md").read_text()
    assert not (second / pipeline_eval.EVAL_FILE).exists()


def test_a_time_budget_sizes_pretraining_and_the_run_finishes(
    tmp_path: Path, cache_dir: Path
) -> None:
    # a budget no step fits: pretraining takes the fewest steps it may (the 6 it timed,
    # more than the 1 warmup step), and the pipeline counts that as finished
    runs = tmp_path / "runs"
    extra = ("max_steps=40", "time_budget_s=0.001", "eval.enabled=false")
    assert _main(_args(runs, cache_dir, *extra)) == 0
    (run,) = list(runs.iterdir())
    assert json.loads((run / PIPELINE_FILE).read_text())["status"] == "done"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (budget,) = [r for r in records if r["split"] == "budget"]
    assert (budget["step"], budget["fits"], budget["max_steps"]) == (6, 0, 6)
    assert budget["time_budget_s"] == 0.001
    assert max(r["step"] for r in records if r["split"] == "train") == 6
    row = "| optimizer steps | 6 (time budget 0.001 s at "
    assert row in (run / "report.md").read_text()
    assert "a step: 6 of 40 steps) |" in (run / "report.md").read_text()
    state = json.loads((run / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert (state["budget_steps"], state["max_steps"]) == (6, 6)


def _evaluated(run: Path, report: str, cache: Path) -> None:
    """eval.json: what lego-eval gives on the saved model; the report: its tables, finite."""
    evaluation = json.loads((run / pipeline_eval.EVAL_FILE).read_text())
    assert evaluation["complete"]
    parts, settings = evaluation["parts"], evaluation["settings"]
    assert (settings["max_length"], settings["stride"]) == (32, 16)  # the context, half
    model, model_dir = load_model(run / "model")
    tokenizer = load_tokenizer(None, model_dir)
    eot = tokenizer.special_tokens["<|endoftext|>"]
    assert settings["bos_id"] == eot

    (data,) = [p for p in (cache / "train-data").iterdir() if (p / "meta.json").is_file()]
    val = open_split(data, "val")
    held_out = perplexity(
        model, val[: settings["max_tokens"]], max_length=32, stride=16, batch_size=3
    )
    assert parts["perplexity"]["num_tokens"] == held_out.num_tokens == 32767
    assert math.isclose(parts["perplexity"]["total_nats"], held_out.total_nats, rel_tol=1e-6)
    plain = [int(i) for i in val[: settings["max_tokens"]] if int(i) != eot]
    assert parts["perplexity"]["num_bytes"] == len(tokenizer.decode(plain).encode())

    # the trainer's validation loss, on its own windows: the same number to float rounding
    check = parts["trainer_check"]
    logged = [
        json.loads(line)
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"val"' in line
    ][-1]
    assert check["val_loss_logged"] == logged["val_loss"]
    assert check["num_tokens"] == logged["val_tokens"] == 2 * 4 * 32  # eval_batches x B x T
    assert abs(check["mean_nll"] - logged["val_loss"]) < 1e-5

    lines = (tasks_dir() / "stdlib_ppl.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:50]]  # tiny.yaml's eval.max_rows
    docs = [text_perplexity(model, tokenizer, r["text"], prefix_id=eot, stride=16) for r in rows]
    total = sum(d.total_nats for d in docs)
    assert math.isclose(parts["lego_stdlib_ppl"]["total_nats"], total, rel_tol=1e-6)

    tasks = [
        CoreTask(
            name=name,
            path=str(run / "eval" / f"{name}.jsonl"),
            task_type=kind,  # type: ignore[arg-type]
            continuation_delimiter=delimiter,
        )
        for name, (_, kind, delimiter) in pipeline_eval.TASKS.items()
    ]
    direct = evaluate_core(model, tokenizer, tasks, bos_id=eot, batch_size=5)
    for score in direct.tasks:
        assert parts[score.name] == score.to_dict()
        assert score.num_examples == 50  # tiny.yaml's eval.max_rows
    assert math.isclose(evaluation["core"], direct.core)

    section = report.split("## Evaluation", 1)[1].split("## Samples", 1)[0]
    for row in ("| perplexity |", "| bits per byte |", "| `lego_sort_exact` |", "| **CORE**"):
        line = next(x for x in section.splitlines() if x.startswith(row))
        numbers = re.findall(r"-?\d[\d,]*\.\d+", line)
        assert numbers, line
        assert all(math.isfinite(float(n.replace(",", ""))) for n in numbers), line
    assert f"{held_out.perplexity:.2f}" in section


def test_ctrl_c_during_the_evaluation_keeps_its_parts(
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = tmp_path / "runs"
    real_task = pipeline_eval.evaluate_task
    scored: list[str] = []

    def ctrl_c_at_the_second_task(*args: Any, **kwargs: Any) -> Any:
        if scored:
            raise KeyboardInterrupt  # what SIGINT raises in the main thread
        scored.append(args[2].name)
        return real_task(*args, **kwargs)

    monkeypatch.setattr(pipeline_eval, "evaluate_task", ctrl_c_at_the_second_task)
    with pytest.raises(SystemExit) as exit_:
        main(_args(runs, cache_dir, "max_steps=4"))
    assert exit_.value.code == 130
    err = capsys.readouterr().err
    assert "stopped during the evaluation" in err
    assert "run the same command again" in err
    assert "Traceback" not in err
    (run,) = list(runs.iterdir())
    kept = json.loads((run / pipeline_eval.EVAL_FILE).read_text())
    assert not kept["complete"]
    assert set(kept["parts"]) == {
        "perplexity",
        "trainer_check",
        "lego_stdlib_ppl",
        "lego_arithmetic_mc",
    }
    assert not (run / "report.md").exists()
    assert json.loads((run / PIPELINE_FILE).read_text())["status"] == "running"

    # the same command: training is done, the kept parts are not measured again
    def not_again(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a kept part was measured again")

    rest: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        rest.append(args[2].name)
        return real_task(*args, **kwargs)

    monkeypatch.setattr(pipeline_eval, "perplexity", not_again)
    monkeypatch.setattr(pipeline_eval, "text_perplexity", not_again)
    monkeypatch.setattr(pipeline_eval, "evaluate_task", counted)
    assert _main(_args(runs, cache_dir, "max_steps=4")) == 0
    assert rest == ["lego_arithmetic_exact", "lego_sort_exact"]
    done = json.loads((run / pipeline_eval.EVAL_FILE).read_text())
    assert done["complete"]
    for name, part in kept["parts"].items():
        assert done["parts"][name] == part
    assert "## Evaluation" in (run / "report.md").read_text()
    assert list(runs.iterdir()) == [run]

    # a finished evaluation is not redone either (the report written again, e.g. after a
    # Ctrl-C during the samples): every part is kept
    record = json.loads((run / PIPELINE_FILE).read_text())
    (run / PIPELINE_FILE).write_text(json.dumps({**record, "status": "running"}))
    monkeypatch.setattr(pipeline_eval, "evaluate_task", not_again)
    assert _main(_args(runs, cache_dir, "max_steps=4")) == 0
    assert json.loads((run / pipeline_eval.EVAL_FILE).read_text())["parts"] == done["parts"]
    assert "eval: 6 part(s) kept" in capsys.readouterr().out


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


@pytest.mark.parametrize(
    "path", sorted((ROOT / "examples" / "pipelines").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_example_pipeline_loads_with_its_stages(path: Path) -> None:
    """Each shipped pipeline YAML is a valid config whose stages have the rows they ask for."""
    from lego.protocols.configfile import read_config_file
    from lego.recipes.pipeline import PipelineConfig
    from lego.recipes.pipeline_stages import check_stage_data

    config = PipelineConfig.from_dict(read_config_file(path))
    check_stage_data(config)
    assert config.sft.enabled
    assert config.dpo.enabled
    # the reference: the disabled adapter (LoRA), or a frozen copy (full fine-tuning)
    assert (config.dpo.dpo.finetune, config.dpo.dpo.reference) in {
        ("lora", "adapter"),
        ("full", "copy"),
    }
