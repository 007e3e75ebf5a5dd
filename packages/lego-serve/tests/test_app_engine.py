"""The routes on the real Engine and a tiny lego-arch Llama (random, seeded weights).

The scripted double (conftest.py) makes the HTTP layer's faults easy to inject; these tests
check that the same routes, on the real engine, return what the model computes, and that
a client leaving frees its engine slot. Waits have generous limits only so that a broken
build fails instead of hanging; nothing asserts a duration.

lego-arch is not a dependency of lego-serve: these tests run where it is installed (the
workspace, nox's test-all session) and are skipped in lego-serve's own isolated session.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from starlette.testclient import TestClient

from lego.generate import generate
from lego.protocols.chat import get_chat_template
from lego.serve import Engine, create_app

arch = pytest.importorskip("lego.arch", reason="the real-model tests need lego-arch")

SPECIALS = {"<|im_start|>": 256, "<|im_end|>": 257, "<|endoftext|>": 258}
MESSAGES = [{"role": "user", "content": "Write a poem."}]
WAIT = 120.0  # seconds: a hang guard, never a measured time


class Latin1:
    vocab_size = 259
    special_tokens = SPECIALS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, ids: Sequence[int]) -> str:
        names = {i: name for name, i in SPECIALS.items()}
        return "".join(names[i] if i >= 256 else chr(i) for i in ids)


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    model = arch.build("llama-tiny", vocab_size=259)
    with torch.no_grad():  # weights large enough that greedy text does not repeat one token
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.3 if "embed" in name else 0.15)
    return model.eval()


@pytest.fixture(scope="module")
def engine(model: Any) -> Iterator[Engine]:
    engine = Engine(model=model, tokenizer=Latin1(), max_batch=4, eos_token_ids=[257, 258])
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[TestClient]:
    app = create_app(engine, model_name="tiny", chat_template="chatml")
    with TestClient(app) as test_client:
        yield test_client


def greedy(model: Any, prompt: list[int], max_tokens: int) -> list[int]:
    out = generate(model, torch.tensor([prompt]), max_new_tokens=max_tokens)[0, len(prompt) :]
    ids: list[int] = out.tolist()
    ends = [i for i, t in enumerate(ids) if t in (257, 258)]
    return ids[: ends[0]] if ends else ids


def chat_prompt() -> list[int]:
    return get_chat_template("chatml").encode(Latin1(), MESSAGES, add_generation_prompt=True)


def test_greedy_chat_and_its_stream_equal_lego_generate(client: TestClient, model: Any) -> None:
    expected = Latin1().decode(greedy(model, chat_prompt(), 20))
    assert expected
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 20, "temperature": 0}
    out = client.post("/v1/chat/completions", json=body).json()
    assert out["choices"][0]["message"]["content"] == expected
    assert out["usage"]["prompt_tokens"] == len(chat_prompt())
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
        raw = "".join(stream.iter_text())
    chunks = [json.loads(b[len("data: ") :]) for b in raw.split("\n\n")[:-2]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected


def test_echo_logprobs_equal_a_full_forward(client: TestClient, model: Any) -> None:
    prompt = list(b"Hello there")
    body = {"model": "tiny", "prompt": [prompt], "echo": True, "logprobs": 2, "max_tokens": 3}
    out = client.post("/v1/completions", json={**body, "temperature": 0}).json()
    logprobs = out["choices"][0]["logprobs"]
    generated = [ord(t) for t in logprobs["tokens"][len(prompt) :]]
    ids = prompt + generated
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    assert logprobs["token_logprobs"][0] is None
    for i in range(1, len(ids)):
        assert logprobs["token_logprobs"][i] == pytest.approx(
            float(reference[i - 1, ids[i]]), abs=1e-4
        )
        top = logprobs["top_logprobs"][i]
        best = int(reference[i - 1].argmax())
        assert top[chr(best)] == pytest.approx(float(reference[i - 1, best]), abs=1e-4)
    assert out["choices"][0]["text"] == "Hello there" + Latin1().decode(generated)


def test_a_client_that_leaves_frees_its_slot(engine: Engine, kit: Any) -> None:
    app = create_app(engine, model_name="tiny", chat_template="chatml")
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 200, "stream": True, "n": 2}
    body["temperature"] = 1.0  # sampled: long enough to still run when the client leaves
    sent = asyncio.run(
        kit.call(app, "/v1/chat/completions", [json.dumps(body).encode()], leave="first")
    )
    assert sent[0]["status"] == 200
    deadline = time.monotonic() + WAIT
    while engine.stats()["running"] or engine.stats()["queued"]:
        assert time.monotonic() < deadline, "the engine still runs the abandoned requests"
        time.sleep(0.01)
    completion = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert b"[DONE]" not in completion  # it was cut short, not finished
