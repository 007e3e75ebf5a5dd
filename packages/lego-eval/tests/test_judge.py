"""LLM-as-judge against fake judges served from http.server on 127.0.0.1 in the test.

Each fake judge is a function of the request's JSON returning ``(status, headers, body)``;
its verdicts are deterministic, so every count is known in advance.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from lego.eval import (
    JudgeClient,
    JudgeError,
    Question,
    judge_answers,
    load_answers,
    load_questions,
    load_template,
)
from lego.eval.judge import default_template, pairwise_outcome, parse_preference, parse_rating
from lego.protocols import ConfigError, DataError

Reply = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[dict[str, Any]], Reply]


def completion(text: str) -> Reply:
    body = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
    }
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


class FakeJudge:
    """A judge server: records every request, answers with ``behaviour``."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(size))
                judge.requests.append(payload)
                judge.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    status, headers, body = 404, {}, b'{"error": "no such path"}'
                else:
                    status, headers, body = judge.behaviour(payload)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], FakeJudge]]:
    started: list[FakeJudge] = []

    def start(behaviour: Behaviour) -> FakeJudge:
        judge = FakeJudge(behaviour)
        started.append(judge)
        return judge

    yield start
    for judge in started:
        if judge.thread.is_alive():
            judge.close()


def client(judge: FakeJudge, sleeps: list[float] | None = None, **options: Any) -> JudgeClient:
    record = sleeps if sleeps is not None else []
    return JudgeClient(judge.base_url, "fake-judge", sleep=record.append, **options)


def prompt_of(payload: dict[str, Any]) -> str:
    messages = payload["messages"]
    assert [m["role"] for m in messages] == ["user"]
    return str(messages[0]["content"])


def shown_answers(prompt: str) -> tuple[str, str]:
    """The answers in the first and second position of the default pairwise template."""
    first = re.search(r"\[Assistant A's answer\]\n(.*?)\n\[End", prompt, re.S)
    second = re.search(r"\[Assistant B's answer\]\n(.*?)\n\[End", prompt, re.S)
    assert first is not None
    assert second is not None
    return first.group(1), second.group(1)


def rating_by_length(payload: dict[str, Any]) -> Reply:
    answer = re.search(r"\[The assistant's answer\]\n(.*?)\n\[End", prompt_of(payload), re.S)
    assert answer is not None
    return completion(f"Looks fine.\nRating: [[{len(answer.group(1)) % 10 + 1}]]")


def prefers_longer(payload: dict[str, Any]) -> Reply:
    first, second = shown_answers(prompt_of(payload))
    verdict = "A" if len(first) > len(second) else "B" if len(second) > len(first) else "C"
    return completion(f"Compared both answers. [[{verdict}]]")


QUESTIONS = [Question(question=f"question {i}?") for i in range(4)]
SHORT = ["a", "bb", "ccc", "dddd"]
LONG = ["a long answer", "another long answer", "long", "a much longer answer"]


def test_single_ratings_are_parsed_and_averaged(
    serve: Callable[[Behaviour], FakeJudge], tmp_path: Path
) -> None:
    judge = serve(rating_by_length)
    result = judge_answers(
        QUESTIONS,
        SHORT,
        client(judge, api_key="sk-test"),
        results_path=tmp_path / "judge.jsonl",
    )
    assert result.ratings == [2.0, 3.0, 4.0, 5.0]
    assert result.mean_rating == pytest.approx(3.5)
    assert result.invalid_verdicts == 0
    assert judge.requests[0]["model"] == "fake-judge"
    assert judge.requests[0]["temperature"] == 0.0
    assert judge.headers[0]["Authorization"] == "Bearer sk-test"
    assert "question 0?" in prompt_of(judge.requests[0])
    lines = (tmp_path / "judge.jsonl").read_text().splitlines()
    assert [json.loads(line)["rating"] for line in lines] == [2.0, 3.0, 4.0, 5.0]
    data = result.to_dict()
    assert data["valid"] == 4
    assert data["min_rating"] == 2.0
    assert data["max_rating"] == 5.0
    assert "| mean rating (1-10) | 3.50 |" in result.to_markdown()


def test_garbage_verdicts_are_counted_invalid_never_a_crash(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    replies = iter(["no verdict here", "Rating: [[11]]", "Rating: 7", "[[0]]"])
    judge = serve(lambda payload: completion(next(replies)))
    result = judge_answers(QUESTIONS, SHORT, client(judge))
    assert result.invalid_verdicts == 4
    assert result.mean_rating is None
    assert "| invalid verdicts | 4 |" in result.to_markdown()
    assert "| mean rating (1-10) | n/a |" in result.to_markdown()


def test_pairwise_a_better_judge_is_consistent(serve: Callable[[Behaviour], FakeJudge]) -> None:
    judge = serve(prefers_longer)
    result = judge_answers(QUESTIONS, LONG, client(judge), mode="pairwise", baseline=SHORT)
    # model A's answer is the longer one in every pair
    assert (result.wins, result.losses, result.ties) == (4, 0, 0)
    assert result.consistent == 4
    assert result.to_dict()["position_consistency"] == 1.0
    assert len(judge.requests) == 8  # every pair judged twice
    first, swapped = (shown_answers(prompt_of(r)) for r in judge.requests[:2])
    assert first == (LONG[0], SHORT[0])
    assert swapped == (SHORT[0], LONG[0])
    reversed_ = judge_answers(QUESTIONS, SHORT, client(judge), mode="pairwise", baseline=LONG)
    assert (reversed_.wins, reversed_.losses) == (0, 4)


def test_a_judge_that_always_prefers_position_a_gives_only_ties(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    judge = serve(lambda payload: completion("The first one. [[A]]"))
    result = judge_answers(QUESTIONS, LONG, client(judge), mode="pairwise", baseline=SHORT)
    data = result.to_dict()
    assert (data["wins"], data["losses"], data["ties"]) == (0, 0, 4)
    assert data["tie_rate"] == 1.0
    assert data["position_consistency"] == 0.0
    assert data["invalid_pairs"] == 0
    assert "| position-consistent pairs | 0 (0.000) |" in result.to_markdown()


def test_pairwise_invalid_verdicts_leave_the_pair_out_of_the_rates(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    count = iter(range(100))

    def every_third_garbage(payload: dict[str, Any]) -> Reply:
        return completion("hmm" if next(count) % 3 == 0 else "[[C]]")

    judge = serve(every_third_garbage)
    result = judge_answers(QUESTIONS, LONG, client(judge), mode="pairwise", baseline=SHORT)
    data = result.to_dict()
    # calls 0, 3, 6 are garbage: pairs 0 (call 0), 1 (call 3), 3 (call 6) are invalid
    assert data["invalid_verdicts"] == 3
    assert data["invalid_pairs"] == 3
    assert data["valid_pairs"] == 1
    assert data["ties"] == 1
    assert data["tie_rate"] == 1.0
    assert data["position_consistency"] == 1.0


def test_a_judge_that_fails_twice_is_retried_with_backoff_and_retry_after(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    failures = iter(
        [
            (503, {}, b"overloaded"),
            (429, {"Retry-After": "7"}, b'{"error": "slow down"}'),
        ]
    )

    def flaky(payload: dict[str, Any]) -> Reply:
        return next(failures, None) or completion("Rating: [[6]]")

    judge = serve(flaky)
    sleeps: list[float] = []
    result = judge_answers(QUESTIONS[:1], SHORT[:1], client(judge, sleeps, backoff=0.5))
    assert result.ratings == [6.0]
    assert len(judge.requests) == 3
    assert sleeps == [0.5, 7.0]  # exponential backoff, then the server's Retry-After


def test_backoff_doubles_up_to_its_cap(serve: Callable[[Behaviour], FakeJudge]) -> None:
    judge = serve(lambda payload: (500, {}, b"broken"))
    sleeps: list[float] = []
    with pytest.raises(JudgeError, match=r"did not answer after 5 tries \(last: HTTP 500"):
        client(judge, sleeps, backoff=1.0, max_backoff=3.0).complete("hi")
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    assert len(judge.requests) == 5


def test_a_refusal_is_not_retried_and_says_what_to_do(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    judge = serve(lambda payload: (401, {}, b'{"error": "bad key"}'))
    with pytest.raises(JudgeError, match="HTTP 401") as caught:
        client(judge).complete("hi")
    assert "API key" in (caught.value.hint or "")
    assert len(judge.requests) == 1
    wrong_path = JudgeClient(judge.base_url.removesuffix("/v1"), "fake-judge")
    with pytest.raises(JudgeError, match="HTTP 404"):
        wrong_path.complete("hi")


def test_a_reply_that_is_not_a_chat_completion_is_an_error(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    judge = serve(lambda payload: (200, {}, b"<html>hello</html>"))
    with pytest.raises(JudgeError, match="did not answer with a chat completion"):
        client(judge).complete("hi")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_down_judge_keeps_the_partial_results_and_a_rerun_resumes(
    serve: Callable[[Behaviour], FakeJudge], tmp_path: Path
) -> None:
    out = tmp_path / "judge.jsonl"
    answered = iter(range(100))

    def two_then_down(payload: dict[str, Any]) -> Reply:
        if next(answered) >= 2:
            return 503, {}, b"going down"
        return completion("Rating: [[9]]")

    judge = serve(two_then_down)
    sleeps: list[float] = []
    with pytest.raises(JudgeError) as caught:
        judge_answers(QUESTIONS, SHORT, client(judge, sleeps, max_retries=2), results_path=out)
    message = str(caught.value)
    assert judge.base_url + "/chat/completions" in message
    assert f"2 of 4 items judged are kept in {out}" in message
    assert len(sleeps) == 2
    assert len(out.read_text().splitlines()) == 2
    judge.close()

    # nothing listens any more: connection refused, retried, then the same clear error
    down = JudgeClient(f"http://127.0.0.1:{free_port()}/v1", "fake-judge", max_retries=1,
                       sleep=sleeps.append)  # fmt: skip
    with pytest.raises(JudgeError, match="did not answer after 2 tries") as caught:
        judge_answers(QUESTIONS, SHORT, down, results_path=out)
    assert "2 of 4 items judged are kept" in str(caught.value)

    # the judge is back (another port): only the two missing items are judged
    again = serve(lambda payload: completion("Rating: [[3]]"))
    called: list[str] = []

    def answer(question: str) -> str:
        called.append(question)
        return "generated"

    result = judge_answers(QUESTIONS, answer, client(again), results_path=out)
    assert len(again.requests) == 2
    assert called == ["question 2?", "question 3?"]  # answers generated only when needed
    assert result.ratings == [9.0, 9.0, 3.0, 3.0]
    assert len(out.read_text().splitlines()) == 4
    # a finished file: a third run sends nothing
    judge_answers(QUESTIONS, answer, client(again), results_path=out)
    assert len(again.requests) == 2


def test_a_torn_last_line_is_judged_again(
    serve: Callable[[Behaviour], FakeJudge], tmp_path: Path
) -> None:
    out = tmp_path / "judge.jsonl"
    judge = serve(lambda payload: completion("Rating: [[5]]"))
    judge_answers(QUESTIONS[:2], SHORT[:2], client(judge), results_path=out)
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) - 10])  # a crash in the middle of the second line
    result = judge_answers(QUESTIONS[:2], SHORT[:2], client(judge), results_path=out)
    assert len(judge.requests) == 3
    assert result.ratings == [5.0, 5.0]
    assert out.read_bytes() == whole


def test_resuming_with_other_settings_is_refused(
    serve: Callable[[Behaviour], FakeJudge], tmp_path: Path
) -> None:
    out = tmp_path / "judge.jsonl"
    judge = serve(lambda payload: completion("Rating: [[5]] [[A]]"))
    judge_answers(QUESTIONS[:2], SHORT[:2], client(judge), results_path=out)
    before = out.read_bytes()
    other = JudgeClient(judge.base_url, "another-judge")
    with pytest.raises(ConfigError, match="another judge_model"):
        judge_answers(QUESTIONS[:2], SHORT[:2], other, results_path=out)
    with pytest.raises(ConfigError, match="another mode"):
        judge_answers(
            QUESTIONS[:2], SHORT[:2], client(judge), mode="pairwise", baseline=LONG[:2],
            results_path=out,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="another answer to question 2"):
        judge_answers(QUESTIONS[:2], ["a", "changed"], client(judge), results_path=out)
    with pytest.raises(ConfigError, match="another model_a"):
        judge_answers(
            QUESTIONS[:2], SHORT[:2], client(judge), results_path=out, names=("m2", "baseline")
        )
    changed = [Question(question="something else"), QUESTIONS[1]]
    with pytest.raises(ConfigError, match="not question 1 of this run"):
        judge_answers(changed, SHORT[:2], client(judge), results_path=out)
    assert out.read_bytes() == before


def test_templates_are_checked_at_load(tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("Q: {question}\nA: {answr}\nRating: [[N]]")
    with pytest.raises(ConfigError, match=r"unknown field \{answr\}") as caught:
        load_template(unknown, "single")
    assert caught.value.path == str(unknown)
    missing = tmp_path / "missing.txt"
    missing.write_text("{question} {answer_a}")
    with pytest.raises(ConfigError, match=r"lacks the field \{answer_b\}") as caught:
        load_template(missing, "pairwise")
    assert caught.value.path == str(missing)
    braces = tmp_path / "braces.txt"
    braces.write_text('{question} {answer} reply as {"rating": 5}')
    with pytest.raises(ConfigError, match=r"not a valid template|unknown field"):
        load_template(braces, "single")
    braces.write_text('{question} {answer} reply as {{"rating": 5}}')
    assert load_template(braces, "single").render(question="q", answer="a") == (
        'q a reply as {"rating": 5}'
    )
    positional = tmp_path / "positional.txt"
    positional.write_text("{} {question} {answer}")
    with pytest.raises(ConfigError, match="unknown field"):
        load_template(positional, "single")


def test_a_reference_template_needs_references(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    judge = serve(rating_by_length)
    template = default_template("single", reference=True)
    with pytest.raises(ConfigError, match="has no reference"):
        judge_answers(QUESTIONS, SHORT, client(judge), template=template)
    assert judge.requests == []
    with_refs = [Question(question=q.question, reference="ref") for q in QUESTIONS]
    judge_answers(with_refs, SHORT, client(judge))  # the reference template by default
    assert "[Reference answer]\nref\n" in prompt_of(judge.requests[0])


def test_questions_and_answers_files_name_the_bad_line(tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "a?"}\n\n{"question": "b?", "reference": 3}\n')
    with pytest.raises(DataError, match="line 3: field 'reference' must be a string") as caught:
        load_questions(questions)
    assert caught.value.path == str(questions)
    assert caught.value.line == 3
    questions.write_text('{"question": "a?"}\nnot json\n')
    with pytest.raises(DataError) as caught:
        load_questions(questions)
    assert caught.value.line == 2
    questions.write_text('{"question": "a?"}\n{"question": "b?"}\n')
    loaded = load_questions(questions)
    assert [q.question for q in loaded] == ["a?", "b?"]
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question": "a?", "answer": "1"}\n{"question": "c?", "answer": "2"}\n')
    with pytest.raises(DataError, match="line 2: the question differs"):
        load_answers(answers, loaded)
    answers.write_text('{"question": "a?", "answer": "1"}\n')
    with pytest.raises(DataError, match="1 answers for 2 questions"):
        load_answers(answers, loaded)


def test_the_client_refuses_bad_settings() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        JudgeClient("ftp://x/v1", "m")
    with pytest.raises(ConfigError, match="name is empty"):
        JudgeClient("http://x/v1", " ")
    with pytest.raises(ConfigError, match="max_retries"):
        JudgeClient("http://x/v1", "m", max_retries=-1)


def test_verdict_parsing() -> None:
    assert parse_rating("first [[2]], on reflection Rating: [[ 8 ]]") == 8.0
    assert parse_rating("Rating: [[7.5]]") == 7.5
    assert parse_rating("Rating: 7") is None
    assert parse_preference("[[a]]") == "A"
    assert parse_preference("[[C]]") == "tie"
    assert parse_preference("[[tie]]") == "tie"
    assert parse_preference("A is better") is None
    assert pairwise_outcome("B", "A") == ("b", True)
    assert pairwise_outcome("tie", "tie") == ("tie", True)
    assert pairwise_outcome("A", "tie") == ("tie", False)
    assert pairwise_outcome(None, "A") == (None, None)


def test_a_reply_slower_than_the_timeout_is_retried(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    released = threading.Event()
    calls = iter(range(100))

    def slow_first(payload: dict[str, Any]) -> Reply:
        if next(calls) == 0:
            released.wait(60)  # longer than the client's timeout: the client gives up
        return completion("Rating: [[4]]")

    judge = serve(slow_first)
    sleeps: list[float] = []
    try:
        reply = client(judge, sleeps, timeout=0.5, backoff=0.25).complete("hi")
    finally:
        released.set()
    assert reply == "Rating: [[4]]"
    assert sleeps == [0.25]
    assert len(judge.requests) == 2


def test_retry_after_as_an_http_date_is_honoured(
    serve: Callable[[Behaviour], FakeJudge],
) -> None:
    failures = iter([(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, b"")])
    judge = serve(lambda payload: next(failures, None) or completion("[[A]]"))
    sleeps: list[float] = []
    assert client(judge, sleeps, backoff=3.0).complete("hi") == "[[A]]"
    assert sleeps == [0.0]  # a date in the past: no wait, not the backoff
