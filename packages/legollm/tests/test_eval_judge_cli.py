"""``legollm eval judge`` end to end against a fake judge served on 127.0.0.1 in the test."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

import lego.arch
from lego.recipes.cli import main
from lego.tokenize import RegexBPETokenizer

SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
QUESTIONS = ["What is 2+2?", "Name a colour.", "Spell cat backwards."]


class Judge:
    """A fake OpenAI-compatible judge: ``reply(prompt) -> text or (status, text)``."""

    def __init__(self, reply: Callable[[str], Any]) -> None:
        self.reply = reply
        self.prompts: list[str] = []
        self.keys: list[str | None] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = payload["messages"][0]["content"]
                judge.prompts.append(prompt)
                judge.keys.append(self.headers.get("Authorization"))
                reply = judge.reply(prompt)
                status, text = reply if isinstance(reply, tuple) else (200, reply)
                message = {"role": "assistant", "content": text}
                body = json.dumps({"choices": [{"message": message}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def judges() -> Iterator[Callable[[Callable[[str], str]], Judge]]:
    made: list[Judge] = []

    def make(reply: Callable[[str], str]) -> Judge:
        made.append(Judge(reply))
        return made[-1]

    yield make
    for judge in made:
        judge.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-shaped model with a byte-level tokenizer."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("judge-model") / "model"
    model = lego.arch.build(
        "llama-tiny", vocab_size=len(SPECIALS) + 256, context_length=128, rope_scaling=None
    )
    model.save_pretrained(folder)
    RegexBPETokenizer("gpt4", special_tokens=SPECIALS, name="bytes").save(
        folder / "lego-tokenizer.json"
    )
    for extra in folder.glob("*.vocab"):
        extra.unlink()
    return folder


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "q.jsonl").write_text(
        "".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS)
    )
    for name, answers in (("a.jsonl", ["4", "blue", "tac"]), ("b.jsonl", ["5", "", "cta"])):
        rows = [{"question": q, "answer": a} for q, a in zip(QUESTIONS, answers, strict=True)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def run(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "judge", *args])
    code = exit_.value.code
    assert isinstance(code, int)
    return code


def rate_by_answer(prompt: str) -> str:
    answer = re.search(r"\[The assistant's answer\]\n(.*?)\n\[End", prompt, re.S)
    assert answer is not None
    return f"Fine. Rating: [[{min(len(answer.group(1)) + 1, 10)}]]"


def test_single_grading_prints_and_writes_the_table(
    files: Path, judges: Callable[..., Judge], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    judge = judges(rate_by_answer)
    monkeypatch.setenv("JUDGE_KEY", "sk-judge")
    out = files / "judged"
    code = run(
        [
            "--answers", str(files / "a.jsonl"), "--questions", str(files / "q.jsonl"),
            "--judge-url", judge.url, "--judge-model", "fake", "--api-key-env", "JUDGE_KEY",
            "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "| mean rating (1-10) | 3.67 |" in printed.out  # ratings 2, 5, 4
    assert "judged 3/3" in printed.err
    assert judge.keys == ["Bearer sk-judge"] * 3
    data = json.loads((out / "judge.json").read_text())
    assert data["mode"] == "single"
    assert [item["rating"] for item in data["items"]] == [2.0, 5.0, 4.0]
    assert "| invalid verdicts | 0 |" in (out / "judge.md").read_text()
    assert len((out / "judge.jsonl").read_text().splitlines()) == 3

    # the outputs exist: refused without --overwrite, judged again with it
    before = (out / "judge.json").read_bytes()
    again = ["--answers", str(files / "a.jsonl"), "--questions", str(files / "q.jsonl"),
             "--judge-url", judge.url, "--judge-model", "fake", "--out", str(out)]  # fmt: skip
    assert run(again) == 2
    assert "exists: eval never replaces" in capsys.readouterr().err
    assert (out / "judge.json").read_bytes() == before
    assert run([*again, "--overwrite"]) == 0
    assert len(judge.prompts) == 6
    assert len((out / "judge.jsonl").read_text().splitlines()) == 3


def test_pairwise_with_generated_answers_and_a_position_biased_judge(
    files: Path, model_dir: Path, judges: Callable[..., Judge],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    judge = judges(lambda prompt: "Assistant A is better. [[A]]")
    out = files / "pairwise"
    code = run(
        [
            "--model", str(model_dir), "--answers-b", str(files / "b.jsonl"),
            "--questions", str(files / "q.jsonl"), "--judge-url", judge.url,
            "--judge-model", "fake", "--max-new-tokens", "3", "--device", "cpu",
            "--out", str(out),
        ]
    )  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0, printed.err
    data = json.loads((out / "judge.json").read_text())
    assert data["mode"] == "pairwise"
    assert (data["wins"], data["losses"], data["ties"]) == (0, 0, 3)
    assert data["position_consistency"] == 0.0
    assert len(judge.prompts) == 6
    # the model's generated answer is shown first, then second
    generated = data["items"][0]["answer_a"]
    assert data["items"][0]["answer_b"] == "5"
    assert judge.prompts[0].index(generated) < judge.prompts[0].index("\n5\n")
    assert "| position-consistent pairs | 0 (0.000) |" in printed.out


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--mode", "pairwise"], "--mode pairwise needs model B"),
        (["--answers-b", "b.jsonl", "--mode", "single"], "--mode single grades one model"),
        (["--api-key-env", "LEGO_TEST_NO_SUCH_VAR"], "LEGO_TEST_NO_SUCH_VAR: the variable"),
        (["--judge-url", "localhost:1"], "is not an http(s) URL"),
        (["--max-retries", "-1"], "--max-retries must be >= 0"),
        (["--template", "absent.txt"], "absent.txt"),
        (["--chat-template", "vicuna"], "--chat-template 'vicuna' is not one of"),
    ],
)
def test_bad_input_is_one_message(
    files: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    extra: list[str], phrase: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(files)
    monkeypatch.delenv("LEGO_TEST_NO_SUCH_VAR", raising=False)
    args = ["--answers", "a.jsonl", "--questions", "q.jsonl", "--judge-url",
            "http://127.0.0.1:9/v1", "--judge-model", "fake", "--out", "o"]  # fmt: skip
    flags = dict(zip(args[::2], args[1::2], strict=True))
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        flags[key] = value
    assert run([item for pair in flags.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1
    assert phrase in err
    assert not (files / "o").exists()  # nothing written, no request sent


def test_a_malformed_question_line_is_named(
    files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (files / "q.jsonl").write_text('{"question": "a?"}\n{"question": "b?"\n')
    code = run(
        ["--answers", str(files / "a.jsonl"), "--questions", str(files / "q.jsonl"),
         "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "fake",
         "--out", str(files / "o")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"{files / 'q.jsonl'}, line 2" in err


def test_a_down_judge_keeps_the_items_and_the_same_command_resumes(
    files: Path, judges: Callable[..., Judge], capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def two_then_down(prompt: str) -> Any:
        return "Rating: [[7]]" if len(judge.prompts) <= 2 else (503, "overloaded")

    judge = judges(two_then_down)
    url = judge.url
    out = files / "o"
    args = ["--answers", str(files / "a.jsonl"), "--questions", str(files / "q.jsonl"),
            "--judge-url", url, "--judge-model", "fake", "--out", str(out),
            "--max-retries", "0"]  # fmt: skip
    code = run(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"the judge at {url}/chat/completions did not answer after 1 tries" in err
    assert "2 of 3 items judged are kept in" in err
    assert err.count("error:") == 1
    assert len((out / "judge.jsonl").read_text().splitlines()) == 2
    assert not (out / "judge.json").exists()
    judge.close()

    back = judges(lambda prompt: "Rating: [[1]]")
    resumed = [back.url if a == url else a for a in args]
    assert run(resumed) == 0
    assert len(back.prompts) == 1
    data = json.loads((out / "judge.json").read_text())
    assert [item["rating"] for item in data["items"]] == [7.0, 7.0, 1.0]
