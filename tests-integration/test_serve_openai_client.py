"""lego-serve end to end: a real Engine on a tiny lego-arch model, uvicorn on 127.0.0.1 and
the official ``openai`` client (and, for lm-evaluation-harness, its exact HTTP requests).

The model has random (seeded) weights and a byte-level tokenizer with ChatML's special
tokens; every expected value comes from the same model in process (``lego.generate`` and a
full forward), never from the server. Waits have generous limits only so that a broken
server fails a test instead of hanging it; nothing asserts a duration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import torch
import uvicorn

import lego.arch
from lego.generate import generate
from lego.protocols.chat import get_chat_template
from lego.serve import Engine, create_app

API_KEY = "sk-lego-test"
EOS = 258
SPECIALS = {"<|im_start|>": 256, "<|im_end|>": 257, "<|endoftext|>": 258}
WAIT = 120.0  # seconds: a hang guard, never a measured time
MESSAGES: Any = [{"role": "user", "content": "Tell me a story."}]


class ByteTokenizer:
    """Bytes as Latin-1 characters (every id is one whole character) and ChatML specials."""

    vocab_size = 259
    special_tokens = SPECIALS

    def encode(self, text: str) -> list[int]:
        return list(text.encode("latin-1"))

    def decode(self, ids: Sequence[int]) -> str:
        names = {i: name for name, i in SPECIALS.items()}
        return "".join(names[i] if i >= 256 else chr(i) for i in ids)


def _model() -> Any:
    torch.manual_seed(0)
    model = lego.arch.build("llama-tiny", vocab_size=259)
    with torch.no_grad():  # weights large enough that greedy text does not repeat one token
        for name, parameter in model.named_parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0, 0.3 if "embed" in name else 0.15)
    return model.eval()


class Server:
    """uvicorn serving the app in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)


@pytest.fixture(scope="module")
def model() -> Any:
    return _model()


@pytest.fixture(scope="module")
def base_url(model: Any) -> Iterator[str]:
    engine = Engine(model=model, tokenizer=ByteTokenizer(), max_batch=4, eos_token_ids=[257, EOS])
    engine.start()
    app = create_app(
        engine,
        model_name="tiny-llama",
        chat_template="chatml",
        eos_token="<|endoftext|>",
        api_key=API_KEY,
    )
    try:
        with Server(app) as url:
            yield url
    finally:
        engine.close()


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=WAIT)


def chat_prompt() -> list[int]:
    return get_chat_template("chatml").encode(ByteTokenizer(), MESSAGES, add_generation_prompt=True)


def greedy(model: Any, prompt: list[int], max_tokens: int) -> list[int]:
    """lego.generate's greedy tokens, cut at the first end-of-sequence id."""
    out = generate(model, torch.tensor([prompt]), max_new_tokens=max_tokens)[0, len(prompt) :]
    ids = out.tolist()
    ends = [i for i, t in enumerate(ids) if t in (257, EOS)]
    return ids[: ends[0]] if ends else ids


def reference_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """log_softmax of a full forward, ``(len(ids), V)`` float64."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)


def test_greedy_chat_equals_lego_generate(client: openai.OpenAI, model: Any) -> None:
    out = client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
    )
    expected = ByteTokenizer().decode(greedy(model, chat_prompt(), 24))
    assert len(expected) > 0
    (choice,) = out.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(chat_prompt())
    assert choice.finish_reason == ("length" if out.usage.completion_tokens == 24 else "stop")


def test_stream_joins_to_the_same_text_with_a_usage_chunk(client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {"model": "tiny-llama", "messages": MESSAGES, "max_tokens": 24}
    plain = client.chat.completions.create(**fields, temperature=0)
    chunks = list(
        client.chat.completions.create(
            **fields, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert plain.usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])


def test_stop_string_is_not_leaked(client: openai.OpenAI, model: Any) -> None:
    text = ByteTokenizer().decode(greedy(model, chat_prompt(), 24))
    stop = text[6:9]
    out = client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stop=[stop],
    )
    assert out.choices[0].message.content == text[: text.index(stop)]
    assert out.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stop=stop,
        stream=True,
    )
    joined = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert joined == text[: text.index(stop)]


def test_n_with_a_seed_is_reproducible(client: openai.OpenAI) -> None:
    fields: dict[str, Any] = {
        "model": "tiny-llama",
        "messages": MESSAGES,
        "max_tokens": 16,
        "temperature": 1.0,
        "n": 3,
        "seed": 42,
    }
    first = [c.message.content for c in client.chat.completions.create(**fields).choices]
    again = [c.message.content for c in client.chat.completions.create(**fields).choices]
    assert first == again
    assert len(first) == 3
    assert len(set(first)) > 1  # seeds 42, 43, 44 sample differently


def test_chat_logprobs_equal_a_full_forward(client: openai.OpenAI, model: Any) -> None:
    out = client.chat.completions.create(
        model="tiny-llama",
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    prompt = chat_prompt()
    generated = greedy(model, prompt, 8)
    reference = reference_logprobs(model, prompt + generated)
    assert out.choices[0].logprobs is not None
    content = out.choices[0].logprobs.content
    assert content is not None
    assert [e.token for e in content] == [ByteTokenizer().decode([t]) for t in generated]
    for j, entry in enumerate(content):
        row = reference[len(prompt) - 1 + j]
        assert entry.logprob == pytest.approx(float(row[generated[j]]), abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(float(row.max()), abs=1e-4)


def test_completions_echo_logprobs_score_the_prompt(client: openai.OpenAI, model: Any) -> None:
    prompt = list(b"The cat sat on the mat.")
    out = client.completions.create(
        model="tiny-llama", prompt=[prompt], echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    (choice,) = out.choices
    logprobs = choice.logprobs
    assert logprobs is not None
    assert logprobs.tokens is not None
    assert logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None
    assert logprobs.tokens[: len(prompt)] == [chr(t) for t in prompt]
    assert choice.text.startswith("The cat sat on the mat.")
    reference = reference_logprobs(model, prompt)
    first: object = logprobs.token_logprobs[0]  # null in the JSON: no context
    assert first is None
    for i in range(1, len(prompt)):
        assert logprobs.token_logprobs[i] == pytest.approx(
            float(reference[i - 1, prompt[i]]), abs=1e-4
        )
        assert chr(prompt[i]) in logprobs.top_logprobs[i]
    assert len(logprobs.tokens) == len(prompt) + 1


def test_sixteen_concurrent_clients_each_get_their_own_output(base_url: str) -> None:
    def ask(k: int) -> str:
        local = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=WAIT
        )
        out = local.completions.create(
            model="tiny-llama", prompt=f"Story number {k}:", max_tokens=12, temperature=0
        )
        return out.choices[0].text

    alone = [ask(k) for k in range(16)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, range(16)))
    assert together == alone
    assert len(set(alone)) > 1


def test_errors_raise_the_clients_typed_exceptions(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny-llama", messages=MESSAGES, n=0)
    assert bad.value.status_code == 400
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 256"):
        client.completions.create(model="tiny-llama", prompt="x" * 300)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llama", messages=MESSAGES, stop=list("abcde"))
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert [m.id for m in client.models.list()] == ["tiny-llama"]  # still serving


def test_lm_eval_local_completions_requests(base_url: str, model: Any) -> None:
    """The requests lm-evaluation-harness's ``local-completions`` model sends with
    ``tokenizer_backend=remote`` (lm_eval.utils.RemoteTokenizer and
    LocalCompletionsAPI._create_payload / parse_logprobs), and the answers it reads."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=WAIT) as http:
        info = http.get("/tokenizer_info").json()
        eos = http.post(
            "/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False}
        )
        assert eos.json()["tokens"][0] == EOS
        assert info.get("bos_token") is None  # lm-eval then prefixes with the EOS id

        def encode(text: str) -> list[int]:
            body = {"prompt": text, "add_special_tokens": False}
            return list(http.post("/tokenize", json=body).json()["tokens"])

        requests = [("Question: 2+2? Answer:", " 4"), ("The sky is", " blue"), ("", " hello")]
        batch, ctxlens = [], []
        for context, continuation in requests:
            ctx = encode(context) if context else [EOS]
            cont = encode(continuation)
            batch.append(ctx + cont)
            ctxlens.append(len(ctx))
        payload = {
            "model": "tiny-llama",
            "prompt": batch,
            "temperature": 0,
            "max_tokens": 1,
            "logprobs": 1,
            "seed": 1234,
            "echo": True,
        }
        out = http.post("/v1/completions", json=payload).json()
        assert http.post("/detokenize", json={"tokens": batch[0]}).json()["prompt"] == (
            "Question: 2+2? Answer: 4"
        )
    choices = sorted(out["choices"], key=lambda c: c["index"])
    assert len(choices) == 3
    for choice, ids, ctxlen in zip(choices, batch, ctxlens, strict=True):
        token_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        top = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        reference = reference_logprobs(model, ids)
        expected = sum(float(reference[i - 1, ids[i]]) for i in range(ctxlen, len(ids)))
        assert sum(token_logprobs) == pytest.approx(expected, abs=1e-3)
        expected_greedy = all(
            int(reference[i - 1].argmax()) == ids[i] for i in range(ctxlen, len(ids))
        )
        is_greedy = all(t == max(d.values()) for t, d in zip(token_logprobs, top, strict=True))
        assert is_greedy == expected_greedy
