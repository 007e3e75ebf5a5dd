"""LLM-as-judge with our own server as the judge: ``legollm serve`` in a subprocess.

The judge is a tiny random model (``examples/align/make_tiny.py``) behind ``legollm serve``
on a free port of 127.0.0.1 (its context is 128 tokens: the test's templates are short
ones of its own, passed with ``--template``); ``legollm eval judge`` reaches it with the
standard library only (no ``openai`` client). A random model's replies hold no
``Rating: [[N]]`` or ``[[A]]`` verdict (or only by chance): the runs must complete, send
every request, and count each reply as a valid or an invalid verdict; none may crash the
run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["Say hello.", "What is 2+2?", "Name a fruit."]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def legollm(*args: str) -> list[str]:
    return [sys.executable, "-m", "lego.recipes.cli", *args]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("judge-serve")
    script = ROOT / "examples" / "align" / "make_tiny.py"
    done = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    questions = [json.dumps({"question": q}) + "\n" for q in QUESTIONS]
    (root / "questions.jsonl").write_text("".join(questions))
    baseline = [json.dumps({"question": q, "answer": "I do not know."}) + "\n" for q in QUESTIONS]
    (root / "baseline.jsonl").write_text("".join(baseline))
    # the tiny model's context is 128 tokens (bytes): short templates of our own
    (root / "single.txt").write_text("Q: {question}\nA: {answer}\nRating: [[")
    (root / "pairwise.txt").write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}\n[[")
    return root


@pytest.fixture(scope="module")
def judge_url(tiny: Path) -> Iterator[str]:
    """``legollm serve`` on the tiny model: the API's base URL."""
    process = subprocess.Popen(
        legollm("serve", "--model", str(tiny / "model"), "--port", "0", "--model-name", "judge"),
        cwd=tiny,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    url = None
    for line in process.stdout:  # ends when the server exits: a failed start fails the test
        seen.append(line)
        if "serving" in line:
            url = line.split(" at ", 1)[1].split(" ", 1)[0]
            break
    assert url is not None, "".join(seen)
    try:
        yield f"{url}/v1"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()


def judge(tiny: Path, url: str, out: str, *flags: str) -> dict[str, object]:
    done = subprocess.run(
        legollm(
            "eval", "judge", "--model", str(tiny / "model"), "--chat-template", "chatml",
            "--max-new-tokens", "8", "--questions", str(tiny / "questions.jsonl"),
            "--judge-url", url, "--judge-model", "judge", "--judge-max-tokens", "24",
            "--device", "cpu", "--out", str(tiny / out), "--template", str(tiny / f"{out}.txt"),
            *flags,
        ),
        cwd=tiny, env=ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    data = json.loads((tiny / out / "judge.json").read_text())
    assert isinstance(data, dict)
    return data


def test_single_grading_by_our_own_server_completes_and_counts(tiny: Path, judge_url: str) -> None:
    data = judge(tiny, judge_url, "single")
    assert data["mode"] == "single"
    assert data["num_items"] == len(QUESTIONS)
    assert data["valid"] + data["invalid_verdicts"] == len(QUESTIONS)  # type: ignore[operator]
    items = data["items"]
    assert isinstance(items, list)
    assert all(isinstance(item["reply"], str) for item in items)  # the server's replies
    assert len((tiny / "single" / "judge.jsonl").read_text().splitlines()) == len(QUESTIONS)
    assert "| invalid verdicts |" in (tiny / "single" / "judge.md").read_text()


def test_pairwise_grading_by_our_own_server_completes_and_counts(
    tiny: Path, judge_url: str
) -> None:
    data = judge(tiny, judge_url, "pairwise", "--answers-b", str(tiny / "baseline.jsonl"))
    assert data["mode"] == "pairwise"
    assert data["num_items"] == len(QUESTIONS)
    assert data["valid_pairs"] + data["invalid_pairs"] == len(QUESTIONS)  # type: ignore[operator]
    assert data["wins"] + data["losses"] + data["ties"] == data["valid_pairs"]  # type: ignore[operator]
    assert 0 <= data["invalid_verdicts"] <= 2 * len(QUESTIONS)  # type: ignore[operator]
    items = data["items"]
    assert isinstance(items, list)
    assert all(len(item["replies"]) == 2 for item in items)  # every pair judged twice
