"""Server-sent events: OpenAI's chunk sequence for chat and text completions."""

from __future__ import annotations

import json
from typing import Any

from starlette.testclient import TestClient

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def events(client: TestClient, path: str, **fields: Any) -> list[Any]:
    """Every ``data:`` payload of a stream, ``[DONE]`` as the string."""
    out: list[Any] = []
    with client.stream("POST", path, json={**fields, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = "".join(response.iter_text())
    assert raw.endswith("data: [DONE]\n\n")
    for block in raw.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_chat_stream_chunks_as_openai_sends_them(client: TestClient) -> None:
    chunks = events(
        client,
        "/v1/chat/completions",
        **CHAT,
        max_tokens=6,
        stream_options={"include_usage": True},
    )
    assert chunks[-1] == "[DONE]"
    *body, usage_chunk, _ = chunks
    assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in body)
    assert len({c["id"] for c in chunks[:-1]}) == 1
    assert all(c["usage"] is None for c in body)
    texts = [c["choices"][0]["delta"].get("content", "") for c in body]
    assert "".join(texts) == "Hello "
    last = body[-1]["choices"][0]
    assert (last["delta"], last["finish_reason"]) == ({}, "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6


def test_stream_without_usage_has_no_usage_field(client: TestClient) -> None:
    chunks = events(client, "/v1/chat/completions", **CHAT, max_tokens=2)
    assert all("usage" not in c for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_streamed_text_equals_the_plain_response_with_stop_strings(client: TestClient) -> None:
    fields = {**CHAT, "max_tokens": 20, "stop": ["o w"]}
    plain = client.post("/v1/chat/completions", json=fields).json()
    chunks = events(client, "/v1/chat/completions", **fields)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert streamed == plain["choices"][0]["message"]["content"] == "Hell"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_n_streams_interleave_each_with_its_role_first(client: TestClient) -> None:
    chunks = events(client, "/v1/chat/completions", **CHAT, max_tokens=3, n=2)
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert "".join(m["delta"].get("content", "") for m in mine) == "Hel"
        assert mine[-1]["finish_reason"] == "length"


def test_chat_stream_logprobs_per_token(client: TestClient) -> None:
    chunks = events(client, "/v1/chat/completions", **CHAT, max_tokens=2, logprobs=True)
    entries = [
        e["token"]
        for c in chunks[:-1]
        if c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert entries == ["H", "e"]


def test_completion_stream_with_echo_and_usage(client: TestClient) -> None:
    chunks = events(
        client,
        "/v1/completions",
        model="tiny",
        prompt="ab",
        echo=True,
        max_tokens=3,
        stream_options={"include_usage": True},
    )
    body = chunks[:-2]
    assert all(c["object"] == "text_completion" for c in body)
    assert "".join(c["choices"][0]["text"] for c in body) == "abHel"
    assert body[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-2]["choices"] == []
    assert chunks[-2]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_completion_stream_legacy_logprobs_offsets_run_on(client: TestClient) -> None:
    chunks = events(
        client,
        "/v1/completions",
        model="tiny",
        prompt=[[104, 105]],
        echo=True,
        logprobs=1,
        max_tokens=2,
    )
    pieces = [c["choices"][0]["logprobs"] for c in chunks[:-1] if c["choices"][0]["logprobs"]]
    tokens = [t for p in pieces for t in p["tokens"]]
    offsets = [o for p in pieces for o in p["text_offset"]]
    assert tokens == ["h", "i", "H", "e"]
    assert offsets == [0, 1, 2, 3]
    assert pieces[0]["token_logprobs"] == [None, -1.0]


def test_completion_stream_of_nothing_to_generate(client: TestClient) -> None:
    chunks = events(client, "/v1/completions", model="tiny", prompt="ab", echo=True, max_tokens=0)
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == "ab"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
