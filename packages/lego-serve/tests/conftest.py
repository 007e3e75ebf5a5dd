"""A test double of the serving engine, for the HTTP layer's unit tests.

``ScriptedEngine`` implements the part of ``lego.serve.engine.Engine`` the HTTP layer uses
(``submit``, ``stats``, ``tokenizer``, ``vocab_size``, ``max_seq_len``, ``eos_token_ids``)
without a model: every request "generates" the characters of a fixed reply, one byte token
at a time, with the engine's event rules (stop strings cut and never returned, text that
could start a stop string held back, log-probabilities when asked, one ``Finish`` last).
It keeps every request, so tests can check what the HTTP layer asked for (sampling settings,
seeds) and what it cancelled. It can also hang (to test time-outs and disconnects), fail a
request, raise in ``submit``, or report a full queue.

Why a double and not a real engine on a tiny model: lego-serve's own tests must run with
only its declared dependencies (lego-arch is not one), and the double makes the HTTP
behaviour exact (texts, log-probabilities, cancellations) and makes faults easy to inject.
The same routes run on the real engine and a tiny lego-arch model in test_app_engine.py, and
behind uvicorn with the ``openai`` client in tests-integration/test_serve_openai_client.py.

``asgi_call`` sends one request through the raw ASGI interface and can disconnect the
client at a chosen moment (Starlette's TestClient cannot).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from starlette.testclient import TestClient

from lego.protocols import ConfigError
from lego.serve.app import create_app
from lego.serve.engine import EngineFull, Event, Finish, PromptLogprobs, SamplingParams, TokenOutput

SPECIALS = {"<|im_start|>": 256, "<|im_end|>": 257, "<|endoftext|>": 258}
REPLY = "Hello world! How are you?"


class ByteTokenizer:
    """Bytes 0..255 as Latin-1 characters, and three special tokens."""

    vocab_size = 259
    special_tokens = SPECIALS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, ids: Sequence[int]) -> str:
        names = {i: name for name, i in SPECIALS.items()}
        return "".join(names.get(i, chr(i)) if i >= 256 else chr(i) for i in ids)


def token_logprob(step: int) -> float:
    """The double's log-probability of its ``step``-th generated token."""
    return -0.25 * (step + 1)


class ScriptedRequest:
    def __init__(self, engine: ScriptedEngine, prompt: list[int], params: SamplingParams):
        self.engine = engine
        self.prompt_ids = tuple(prompt)
        self.params = params
        self.cancelled = False
        self.finished = False
        self.yielded = 0

    def cancel(self) -> None:
        self.cancelled = True

    def script(self) -> Iterator[Event]:
        params = self.params
        if params.prompt_logprobs is not None:
            k = params.prompt_logprobs
            yield PromptLogprobs(
                token_ids=self.prompt_ids,
                logprobs=(None, *(-1.0 for _ in self.prompt_ids[1:])),
                top_logprobs=(
                    None,
                    *(((t, -1.0), (t + 1, -2.0))[:k] for t in self.prompt_ids[1:]),
                ),
            )
        reply = self.engine.reply
        text = ""
        sent = 0
        for step in range(params.max_tokens):
            if self.engine.fail_after is not None and step == self.engine.fail_after:
                yield Finish("error", "", len(self.prompt_ids), step, error="the model broke")
                return
            char = reply[step % len(reply)]
            text += char
            hit = min((text.find(s) for s in params.stop if s in text), default=-1)
            logprob = token_logprob(step) if params.logprobs is not None else None
            top = None
            if params.logprobs is not None:
                top = ((ord(char), token_logprob(step)), (ord(char) + 1, -9.0))[: params.logprobs]
            if hit >= 0:
                yield TokenOutput(ord(char), "", logprob, top)
                yield Finish("stop", text[sent:hit], len(self.prompt_ids), step + 1)
                return
            safe = len(text)
            for stop in params.stop:  # hold back a tail that could start a stop string
                for size in range(min(len(stop) - 1, len(text)), 0, -1):
                    if stop.startswith(text[-size:]):
                        safe = min(safe, len(text) - size)
                        break
            piece = text[sent:safe]
            sent = max(sent, safe)
            yield TokenOutput(ord(char), piece, logprob, top)
        yield Finish("length", text[sent:], len(self.prompt_ids), params.max_tokens)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            for event in self.script():
                if self.engine.hang_after is not None and self.yielded >= self.engine.hang_after:
                    await asyncio.Event().wait()  # never set: only cancellation ends it
                await asyncio.sleep(0)
                if self.cancelled:
                    yield Finish("cancelled", "", len(self.prompt_ids), self.yielded)
                    return
                self.yielded += 1
                yield event
        finally:
            self.finished = True


class ScriptedEngine:
    """The HTTP layer's view of ``lego.serve.engine.Engine``, without a model."""

    def __init__(self, *, reply: str = REPLY, max_seq_len: int = 96, max_queue: int = 64):
        self.tokenizer = ByteTokenizer()
        self.vocab_size = 259
        self.max_seq_len = max_seq_len
        self.context_length = max_seq_len
        self.eos_token_ids = (258,)
        self.max_queue = max_queue
        self.reply = reply
        self.requests: list[ScriptedRequest] = []
        self.hang_after: int | None = None
        self.fail_after: int | None = None
        self.submit_error: Exception | None = None

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> ScriptedRequest:
        if self.submit_error is not None:
            raise self.submit_error
        if len(self.requests) >= self.max_queue:
            raise EngineFull("the engine's queue is full", key="max_queue")
        if len(prompt_ids) + params.max_tokens > self.max_seq_len:
            raise ConfigError("the prompt plus max_tokens does not fit", key="max_tokens")
        request = ScriptedRequest(self, list(prompt_ids), params)
        self.requests.append(request)
        return request

    def stats(self) -> dict[str, int]:
        return {"running": 0, "queued": 0, "max_batch": 4, "max_queue": self.max_queue}


@pytest.fixture
def tokenizer() -> ByteTokenizer:
    return ByteTokenizer()


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


def make_client(engine: ScriptedEngine, **options: Any) -> TestClient:
    options.setdefault("chat_template", "chatml")
    app = create_app(engine, model_name="tiny", **options)  # type: ignore[arg-type]
    return TestClient(app)


@pytest.fixture
def client(engine: ScriptedEngine) -> Iterator[TestClient]:
    with make_client(engine) as test_client:
        yield test_client


@pytest.fixture
def make() -> Any:
    return make_client


@pytest.fixture
def kit() -> Any:
    """The double's classes and constants (test modules cannot import conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        REPLY=REPLY,
        ScriptedEngine=ScriptedEngine,
        token_logprob=token_logprob,
        make=make_client,
        call=asgi_call,
    )


async def asgi_call(
    app: Any, path: str, chunks: list[bytes], *, leave: str | None = None
) -> list[dict[str, Any]]:
    """Send one POST; ``leave``: disconnect at once (``"now"``) or after the first body bytes
    (``"first"``). Returns the messages the app sent."""
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    gone = asyncio.Event()
    if leave == "now":
        gone.set()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if leave == "first" and message["type"] == "http.response.body" and message["body"]:
            gone.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    # a guard against a hang in a broken build, not a timing assertion
    await asyncio.wait_for(app(scope, receive, send), timeout=30)
    return sent
