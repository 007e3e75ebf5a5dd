"""``legollm finetune`` and ``legollm align`` end to end, from the shipped example configs.

``examples/align/make_tiny.py`` writes the tiny model directory and the JSONL records into a
temporary working directory; the example configs then run as the docs say (their relative
paths resolve there), each in well under a minute on a CPU:

- ``sft-tiny.yaml``: LoRA fine-tuning, the merged model written with its stop tokens, the
  training loss falling, a reply that stops at ChatML's end of turn;
- ``dpo-tiny.yaml``: DPO on synthetic preference pairs raises the held-out preference
  accuracy from 0 (policy = reference, before the first step) to well above chance;
- ``reward-tiny.yaml``: a reward model scores held-out chosen answers higher;
- ``sft-pipeline.yaml`` / ``dpo-pipeline.yaml`` on a run of ``legollm pipeline`` (small
  settings): plain-text records, a pad token added to its tokenizer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_train import TINY_RUN

from lego.recipes.cli import _main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "align"
PIPELINE = ROOT / "examples" / "pipelines" / "tiny.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding what make_tiny.py writes (``runs/align-tiny``)."""
    root = tmp_path_factory.mktemp("align")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "make_tiny.py"), "runs/align-tiny"],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return root


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _run(workdir: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> int:
    monkeypatch.chdir(workdir)
    return _main([*argv, "progress=plain"])


def test_finetune_example(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(EXAMPLES / "sft-tiny.yaml")
    assert _run(workdir, monkeypatch, ["finetune", "--config", config]) == 0
    assert "done: step 60/60" in capsys.readouterr().out
    run = workdir / "runs" / "sft-tiny"
    model = run / "model"
    assert sorted(p.name for p in model.iterdir()) == [
        "config.json",
        "generation_config.json",
        "lego-tokenizer.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert json.loads((model / "config.json").read_text())["eos_token_id"] == [256, 258]
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")
    losses = [r["loss"] for r in _records(run) if r["split"] == "train"]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3
    # the tuned model answers in the trained format and stops at <|im_end|>
    chat = ["chat", "--model", str(run), "--template", "chatml", "--max-new-tokens", "16"]
    done = subprocess.run(
        [sys.executable, "-m", "lego.recipes.cli", *chat],
        input="shout dog\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "DOG!" in done.stdout


def test_dpo_example_raises_held_out_preference_accuracy(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = str(EXAMPLES / "dpo-tiny.yaml")
    assert _run(workdir, monkeypatch, ["align", "dpo", "--config", config]) == 0
    run = workdir / "runs" / "dpo-tiny"
    val = {r["step"]: r for r in _records(run) if r["split"] == "val"}
    assert val[0]["val_rewards/accuracies"] == 0.0  # before training: policy = reference
    assert val[0]["val_rewards/margins"] == 0.0
    last = val[max(val)]
    assert last["val_rewards/accuracies"] >= 0.9  # chance is 0.5: 32 held-out pairs
    assert last["val_rewards/margins"] > 1.0
    data = next(r for r in _records(run) if r["split"] == "data")
    assert (data["train_pairs"], data["eval_pairs"]) == (96, 32)
    assert (run / "model" / "model.safetensors").is_file()
    assert (run / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_reward_example(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = str(EXAMPLES / "reward-tiny.yaml")
    assert _run(workdir, monkeypatch, ["align", "reward", "--config", config, "max_steps=20"]) == 0
    run = workdir / "runs" / "reward-tiny"
    val = {r["step"]: r for r in _records(run) if r["split"] == "val"}
    assert val[max(val)]["val_accuracy"] >= 0.9
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]


def test_examples_on_a_pipeline_run(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(workdir)
    pipeline = [
        "pipeline",
        "--config",
        str(PIPELINE),
        "out_dir=runs/pipeline-tiny",
        f"data.cache_dir={tmp_path / 'cache'}",
        "max_steps=4",
        "eval_every=0",
        "checkpoint_every=4",
        "progress=plain",
        *TINY_RUN,
        "report.max_new_tokens=4",
        "report.attention_tokens=4",
        "sft.enabled=false",  # the pipeline's own stages: their rows need more than 32 tokens
        "dpo.enabled=false",
    ]
    assert _main(pipeline) == 0
    small = ["max_steps=6", "eval_every=3", "checkpoint_every=6", "progress=plain"]
    sft = ["finetune", "--config", str(EXAMPLES / "sft-pipeline.yaml"), "sft.max_length=32"]
    assert _main([*sft, *small]) == 0
    tuned = workdir / "runs" / "sft-pipeline" / "model"
    specials = json.loads((tuned / "lego-tokenizer.json").read_text())["special_tokens"]
    assert set(specials) == {"<|endoftext|>", "<|pad|>"}
    assert specials["<|pad|>"] == 320  # after the pipeline's 320 ids: the vocabulary grew
    assert json.loads((tuned / "config.json").read_text())["vocab_size"] == 321
    dpo = ["align", "dpo", "--config", str(EXAMPLES / "dpo-pipeline.yaml"), "dpo.max_length=32"]
    assert _main([*dpo, *small, "model=runs/sft-pipeline"]) == 0  # DPO after SFT
    assert (workdir / "runs" / "dpo-pipeline" / "model" / "model.safetensors").is_file()
