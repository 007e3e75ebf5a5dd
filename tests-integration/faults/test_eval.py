"""Faults of ``legollm eval`` (issue 22), through real processes.

Each test runs the command as a user would on the tiny model ``examples/align/make_tiny.py``
writes once per module, and asserts the exit code, one message without "Traceback", and
that every file that existed before is byte-identical afterwards: bad flags and missing
files are refused before the model is read; a text that is not UTF-8 or too short to score
names the file; an output that exists is never replaced without ``--overwrite``; an unknown
harness task suggests the closest names; a finished run writes both files; an offline task
from an --include-path folder runs with no network and prints its table.

``core``: bad flags and a missing task file before the model is read, a malformed task row
(file and line), an unknown task key (the closest named). ``judge`` (answers from JSONL,
the judge a fake OpenAI-compatible server in the test process): a malformed question line
(file and line), a bad template (file and field), a judge that goes down (retried, then
one message with the items kept; the same command resumes), and SIGINT / SIGTERM while a
request is in flight (130 / 143, the judged items kept, then resumed).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import harness
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROG = "legollm"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval-tiny")
    script = ROOT / "examples" / "align" / "make_tiny.py"
    result = harness.run([sys.executable, str(script), str(root)], cwd=root)
    assert result.code == 0, result.stderr
    (root / "held.txt").write_text("def f(x):\n    return x + 1\n\nclass A:\n    pass\n")
    return root


def evaluate(*args: str) -> list[str]:
    return harness.command("lego.recipes.cli", "eval", *args)


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["perplexity", "--text", "absent.txt"], "--text absent.txt: no such file"),
        (["perplexity", "--data", "absent"], "--data absent: no such folder"),
        (["perplexity", "--text", "held.txt", "--max-length", "0"], "--max-length must be >= 1"),
        (["perplexity", "--text", "held.txt", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["harness", "--tasks", " , "], "--tasks is empty"),
        (["harness", "--tasks", "x", "--include-path", "nowhere"], "no such folder"),
        (["harness", "--tasks", "x", "--limit", "0"], "--limit must be > 0"),
    ],
)
def test_bad_flags_are_refused_before_the_model_is_read(
    tiny: Path, args: list[str], phrase: str
) -> None:
    before = harness.snapshot(tiny)
    # the model does not exist: the flag error must come first
    kind, *rest = args
    result = harness.run(evaluate(kind, "--model", str(tiny / "absent"), *rest), cwd=tiny)
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    harness.assert_unchanged(before, tiny)


def test_text_that_is_not_utf8_names_the_file(tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait, déjà vu".encode("latin-1"))
    result = harness.run(
        evaluate("perplexity", "--model", str(tiny / "model"), "--text", str(bad)), cwd=tmp_path
    )
    harness.assert_one_message(result, prog=PROG, phrase="is not UTF-8 text")


def test_a_text_too_short_to_score_is_one_message(tiny: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("a")
    result = harness.run(
        evaluate("perplexity", "--model", str(tiny / "model"), "--text", str(short)), cwd=tmp_path
    )
    harness.assert_one_message(result, prog=PROG, phrase="perplexity needs at least two")


def test_a_bad_prefix_token_lists_the_special_tokens(tiny: Path) -> None:
    result = harness.run(
        evaluate(
            "perplexity", "--model", str(tiny / "model"), "--text", "held.txt",
            "--prefix-token", "<bos>",
        ),
        cwd=tiny,
    )  # fmt: skip
    harness.assert_one_message(result, prog=PROG, phrase="'<bos>' is not a special token")


def test_outputs_are_written_once_and_never_replaced_silently(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    command = evaluate(
        "perplexity", "--model", str(tiny / "model"), "--text", str(tiny / "held.txt"),
        "--out", str(out),
    )  # fmt: skip
    first = harness.run(command, cwd=tmp_path)
    assert first.code == 0, first.stderr
    data = json.loads((out / "perplexity.json").read_text())
    assert data["num_tokens"] > 0
    assert data["perplexity"] > 1
    assert "| perplexity |" in (out / "perplexity.md").read_text()
    before = harness.snapshot(out)
    again = harness.run(command, cwd=tmp_path)
    harness.assert_one_message(again, prog=PROG, phrase="exists: eval never replaces")
    harness.assert_unchanged(before, out)
    replaced = harness.run([*command, "--overwrite"], cwd=tmp_path)
    assert replaced.code == 0, replaced.stderr
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_unknown_task_suggests_the_closest(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="the harness needs lego-eval[harness]")
    result = harness.run(
        evaluate("harness", "--model", str(tiny / "model"), "--tasks", "lego_arithmetic_mcq"),
        cwd=tmp_path,
    )
    harness.assert_one_message(result, prog=PROG, phrase="lego_arithmetic_mc")


def test_harness_runs_an_offline_task_from_an_include_path(tiny: Path, tmp_path: Path) -> None:
    """The issue's "done when": a table printed and written, no network (OFFLINE_ENV)."""
    from lego.eval.tasks import write_tasks

    include = tmp_path / "tasks"
    include.mkdir()
    write_tasks(include)  # a self-contained include folder, as a user would pass one
    out = tmp_path / "results"
    result = harness.run(
        evaluate(
            "harness", "--model", str(tiny / "model"), "--tasks", "lego_arithmetic_mc",
            "--include-path", str(include), "--limit", "8", "--bootstrap-iters", "0",
            "--out", str(out),
        ),
        cwd=tmp_path,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "lego_arithmetic_mc" in result.stdout  # the table
    assert "acc" in result.stdout
    data = json.loads((out / "harness.json").read_text())
    accuracy = data["results"]["lego_arithmetic_mc"]["acc,none"]
    assert 0.0 <= accuracy <= 1.0
    assert data["n-samples"]["lego_arithmetic_mc"]["effective"] == 8
    assert "lego_arithmetic_mc" in (out / "harness.md").read_text()


# -- legollm eval core ------------------------------------------------------------------------


def _core_tasks(folder: Path, rows: list[str]) -> Path:
    (folder / "mc.jsonl").write_text("".join(row + "\n" for row in rows))
    yaml = folder / "core.yaml"
    yaml.write_text("tasks:\n  - {name: mc, path: mc.jsonl, task_type: multiple_choice}\n")
    return yaml


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--tasks", "absent.yaml"], "--tasks absent.yaml: no such file or folder"),
        (["--tasks", "lego_offline", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--tasks", "lego_offline", "--max-length", "0"], "--max-length must be >= 1"),
    ],
)
def test_core_bad_flags_are_refused_before_the_model_is_read(
    tiny: Path, args: list[str], phrase: str
) -> None:
    before = harness.snapshot(tiny)
    result = harness.run(evaluate("core", "--model", str(tiny / "absent"), *args), cwd=tiny)
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    harness.assert_unchanged(before, tiny)


def test_core_a_malformed_task_row_names_the_file_and_line(tmp_path: Path, tiny: Path) -> None:
    good = json.dumps({"query": "1+1=", "choices": ["2", "3"], "gold": 0})
    yaml = _core_tasks(tmp_path, [good, '{"query": "2+2=", "choices": ["4", "5"], "gold": 7}'])
    before = harness.snapshot(tmp_path)
    result = harness.run(
        evaluate("core", "--model", str(tiny / "model"), "--tasks", str(yaml)), cwd=tmp_path
    )
    harness.assert_one_message(result, prog=PROG, phrase=f"{tmp_path / 'mc.jsonl'}, line 2")
    harness.assert_unchanged(before, tmp_path)


def test_core_a_task_file_with_an_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    (tmp_path / "core.yaml").write_text(
        "tasks:\n  - {name: mc, path: mc.jsonl, task_typ: multiple_choice}\n"
    )
    result = harness.run(
        evaluate("core", "--model", "absent", "--tasks", "core.yaml"), cwd=tmp_path
    )
    harness.assert_one_message(result, prog=PROG, phrase="task_type")


def test_core_runs_and_writes_both_files(tiny: Path, tmp_path: Path) -> None:
    good = json.dumps({"query": "1+1=", "choices": ["2", "3"], "gold": 0})
    yaml = _core_tasks(tmp_path, [good, good])
    out = tmp_path / "results"
    result = harness.run(
        evaluate("core", "--model", str(tiny / "model"), "--tasks", str(yaml), "--out", str(out)),
        cwd=tmp_path,
    )
    assert result.code == 0, result.stderr
    data = json.loads((out / "core.json").read_text())
    assert data["tasks"][0]["num_examples"] == 2
    assert "| **CORE** |" in (out / "core.md").read_text()


# -- legollm eval judge -----------------------------------------------------------------------

QUESTIONS = ["What is 2+2?", "Name a colour.", "Spell cat backwards."]


class FakeJudge:
    """An OpenAI-compatible judge on 127.0.0.1 in the test: ``reply(n)`` for request n.

    ``reply`` returns the reply's text, an HTTP status (an error), or None: the request
    hangs until the test ends (a slow judge, for the signal tests).
    """

    def __init__(self, reply: Callable[[int], str | int | None]) -> None:
        self.reply = reply
        self.count = 0
        self.release = threading.Event()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                judge.count += 1
                answer = judge.reply(judge.count)
                if answer is None:
                    judge.release.wait(600)
                    return
                status, text = (answer, "") if isinstance(answer, int) else (200, answer)
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
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judges() -> Iterator[Callable[[Callable[[int], str | int | None]], FakeJudge]]:
    made: list[FakeJudge] = []

    def make(reply: Callable[[int], str | int | None]) -> FakeJudge:
        made.append(FakeJudge(reply))
        return made[-1]

    yield make
    for judge in made:
        judge.close()


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    rows = [json.dumps({"question": q}) + "\n" for q in QUESTIONS]
    (tmp_path / "q.jsonl").write_text("".join(rows))
    answers = [json.dumps({"question": q, "answer": "42"}) + "\n" for q in QUESTIONS]
    (tmp_path / "a.jsonl").write_text("".join(answers))
    return tmp_path


def judge_command(url: str, *extra: str) -> list[str]:
    return evaluate(
        "judge", "--answers", "a.jsonl", "--questions", "q.jsonl", "--judge-url", url,
        "--judge-model", "fake", "--out", "judged", *extra,
    )  # fmt: skip


def test_judge_a_malformed_question_line_is_named(inputs: Path) -> None:
    with (inputs / "q.jsonl").open("a") as rows:
        rows.write('{"question": "unfinished\n')
    before = harness.snapshot(inputs)
    result = harness.run(judge_command("http://127.0.0.1:9/v1"), cwd=inputs)
    harness.assert_one_message(result, prog=PROG, phrase="q.jsonl, line 4")
    harness.assert_unchanged(before, inputs)
    assert not (inputs / "judged").exists()


@pytest.mark.parametrize(
    ("template", "phrase"),
    [
        ("Q: {question}\nA: {answr}\n", "unknown field {answr}"),
        ("Q: {question}\n", "lacks the field {answer}"),
        ('{question} {answer} reply {"rating": 1}', "template"),
    ],
)
def test_judge_a_bad_template_names_the_file(inputs: Path, template: str, phrase: str) -> None:
    (inputs / "mine.txt").write_text(template)
    before = harness.snapshot(inputs)
    result = harness.run(
        judge_command("http://127.0.0.1:9/v1", "--template", "mine.txt"), cwd=inputs
    )
    harness.assert_one_message(result, prog=PROG, phrase=phrase)
    assert "mine.txt" in result.stderr
    harness.assert_unchanged(before, inputs)


def test_judge_down_keeps_the_partial_results_and_the_same_command_resumes(
    inputs: Path, judges: Callable[..., FakeJudge]
) -> None:
    first = judges(lambda n: "Rating: [[8]]" if n <= 2 else 503)
    before = harness.snapshot(inputs)
    result = harness.run(judge_command(first.url, "--max-retries", "1"), cwd=inputs)
    harness.assert_one_message(result, prog=PROG, phrase="did not answer after 2 tries")
    assert f"{first.url}/chat/completions" in result.stderr
    assert "2 of 3 items judged are kept in" in result.stderr
    harness.assert_unchanged(before, inputs)
    assert len((inputs / "judged" / "judge.jsonl").read_text().splitlines()) == 2
    assert not (inputs / "judged" / "judge.json").exists()
    first.close()

    # nothing listens on that port any more: connection refused, the same clear message
    refused = harness.run(judge_command(first.url, "--max-retries", "0"), cwd=inputs)
    harness.assert_one_message(refused, prog=PROG, phrase="2 of 3 items judged are kept")

    second = judges(lambda n: "Rating: [[2]]")
    resumed = harness.run(judge_command(second.url), cwd=inputs)
    assert resumed.code == 0, resumed.stderr
    assert second.count == 1  # only the missing item
    data = json.loads((inputs / "judged" / "judge.json").read_text())
    assert [item["rating"] for item in data["items"]] == [8.0, 8.0, 2.0]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_judge_a_signal_keeps_the_partial_results(
    inputs: Path, judges: Callable[..., FakeJudge], signum: int, code: int
) -> None:
    slow = judges(lambda n: "Rating: [[5]]" if n == 1 else None)  # the second one hangs
    before = harness.snapshot(inputs)
    process = harness.start(judge_command(slow.url), cwd=inputs)
    harness.run_until(process, "judged 1/3")
    for _ in range(12000):  # a hang guard only: wait for the second request to arrive
        if slow.count >= 2:
            break
        time.sleep(0.05)
    assert slow.count == 2
    result = harness.interrupt(process, signum)
    assert result.code == code, result.stdout
    assert "Traceback" not in result.stdout
    assert "stopped after 1 of 3 judged items" in result.stdout
    assert "run the same command again" in result.stdout
    harness.assert_unchanged(before, inputs)
    partial = inputs / "judged" / "judge.jsonl"
    assert len(partial.read_text().splitlines()) == 1
    assert not (inputs / "judged" / "judge.json").exists()

    # the same command resumes after the kept item
    slow.reply = lambda n: "Rating: [[4]]"
    resumed = harness.run(judge_command(slow.url), cwd=inputs)
    assert resumed.code == 0, resumed.stderr
    data = json.loads((inputs / "judged" / "judge.json").read_text())
    assert [item["rating"] for item in data["items"]] == [5.0, 4.0, 4.0]
