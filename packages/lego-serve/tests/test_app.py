"""The routes through Starlette's TestClient, on the scripted engine (see conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.testclient import TestClient

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
REPLY = "Hello world! How are you?"  # the scripted engine's reply (conftest.REPLY)


def token_logprob(step: int) -> float:
    return -0.25 * (step + 1)  # conftest.token_logprob


def post(client: TestClient, path: str, **fields: Any) -> Any:
    response = client.post(path, json=fields)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_double_matches_these_constants(kit: Any) -> None:
    assert kit.REPLY == REPLY
    assert kit.token_logprob(3) == token_logprob(3)


def test_models_health_and_model_card(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert models["data"][0]["max_model_len"] == 96
    assert client.get("/v1/models/tiny").json()["id"] == "tiny"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["max_queue"] == 64


def test_chat_completion_body_and_usage(client: TestClient, engine: Any) -> None:
    out = post(client, "/v1/chat/completions", **CHAT, max_tokens=5, temperature=0)
    assert out["object"] == "chat.completion"
    assert out["id"].startswith("chatcmpl-")
    assert out["model"] == "tiny"
    (choice,) = out["choices"]
    assert choice["message"] == {"role": "assistant", "content": REPLY[:5]}
    assert choice["finish_reason"] == "length"
    assert choice["logprobs"] is None
    prompt = len(engine.requests[0].prompt_ids)
    assert out["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 5,
        "total_tokens": prompt + 5,
    }
    assert engine.requests[0].params.temperature == 0.0


def test_stop_string_is_cut_and_finishes_with_stop(client: TestClient) -> None:
    out = post(client, "/v1/chat/completions", **CHAT, max_tokens=20, stop=["wor", "zzz"])
    (choice,) = out["choices"]
    assert choice["message"]["content"] == "Hello "
    assert choice["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 9


def test_n_choices_get_consecutive_seeds(client: TestClient, engine: Any) -> None:
    out = post(client, "/v1/chat/completions", **CHAT, max_tokens=3, n=3, seed=11)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert [r.params.seed for r in engine.requests] == [11, 12, 13]
    prompt = len(engine.requests[0].prompt_ids)
    assert out["usage"]["prompt_tokens"] == prompt  # one prompt, counted once
    assert out["usage"]["completion_tokens"] == 9


def test_chat_logprobs(client: TestClient) -> None:
    out = post(client, "/v1/chat/completions", **CHAT, max_tokens=2, logprobs=True, top_logprobs=2)
    content = out["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["H", "e"]
    assert [e["logprob"] for e in content] == [token_logprob(0), token_logprob(1)]
    assert content[0]["bytes"] == [72]
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["H", "I"]
    assert content[0]["top_logprobs"][1]["logprob"] == -9.0


def test_completions_prompt_list_choice_order(client: TestClient, engine: Any) -> None:
    out = post(client, "/v1/completions", model="tiny", prompt=["a", "bc"], n=2, max_tokens=2)
    assert out["object"] == "text_completion"
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in out["choices"]] == ["He"] * 4
    assert [r.prompt_ids for r in engine.requests] == [(97,), (97,), (98, 99), (98, 99)]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11}


def test_completions_echo_with_legacy_logprobs(client: TestClient) -> None:
    """lm-evaluation-harness's loglikelihood request: token ids, echo, logprobs=1, 1 token."""
    out = post(
        client,
        "/v1/completions",
        model="tiny",
        prompt=[[104, 105, 33]],
        echo=True,
        logprobs=1,
        max_tokens=1,
        temperature=0,
        seed=1234,
    )
    (choice,) = out["choices"]
    assert choice["text"] == "hi!H"
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == ["h", "i", "!", "H"]
    assert logprobs["token_logprobs"] == [None, -1.0, -1.0, token_logprob(0)]
    assert logprobs["top_logprobs"] == [None, {"i": -1.0}, {"!": -1.0}, {"H": token_logprob(0)}]
    assert logprobs["text_offset"] == [0, 1, 2, 3]
    assert out["usage"]["prompt_tokens"] == 3


def test_completions_logprobs_include_the_chosen_token(client: TestClient) -> None:
    out = post(client, "/v1/completions", model="tiny", prompt="x", logprobs=0, max_tokens=2)
    logprobs = out["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["H", "e"]
    assert logprobs["top_logprobs"] == [{"H": token_logprob(0)}, {"e": token_logprob(1)}]
    assert logprobs["text_offset"] == [0, 1]


def test_completions_max_tokens_zero_echo_needs_no_engine(client: TestClient, engine: Any) -> None:
    out = post(client, "/v1/completions", model="tiny", prompt="abc", echo=True, max_tokens=0)
    assert out["choices"][0]["text"] == "abc"
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 0
    assert engine.requests == []


def test_completions_score_the_prompt_with_max_tokens_zero(client: TestClient) -> None:
    out = post(
        client,
        "/v1/completions",
        model="tiny",
        prompt=[[1, 2]],
        echo=True,
        logprobs=1,
        max_tokens=0,
    )
    logprobs = out["choices"][0]["logprobs"]
    assert logprobs["token_logprobs"] == [None, -1.0]
    assert out["usage"]["completion_tokens"] == 0


def test_tokenize_detokenize_and_tokenizer_info(client: TestClient) -> None:
    """What lm-evaluation-harness's remote tokenizer calls."""
    info = client.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>"
    assert info["bos_token"] is None
    assert info["model_max_length"] == 96
    eos = post(client, "/tokenize", prompt=info["eos_token"], add_special_tokens=False)
    assert eos["tokens"] == [258]
    out = post(client, "/tokenize", model="tiny", prompt="hi", return_token_strs=True)
    assert out == {"count": 2, "max_model_len": 96, "tokens": [104, 105], "token_strs": ["h", "i"]}
    chat = post(client, "/tokenize", messages=[{"role": "user", "content": "hi"}])
    assert chat["tokens"][0] == 256  # <|im_start|>
    assert chat["tokens"][-10:] == list(b"assistant\n")
    assert post(client, "/detokenize", tokens=[104, 105, 258]) == {"prompt": "hi<|endoftext|>"}
    bad = client.post("/detokenize", json={"tokens": [1, 999]})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "tokens")
    other = client.post("/tokenize", json={"model": "gpt-4", "prompt": "x"})
    assert other.status_code == 404


def test_utf8_text_is_returned_whole(make: Any, kit: Any) -> None:
    engine = kit.ScriptedEngine(reply="café ok")
    with make(engine) as client:
        out = post(client, "/v1/chat/completions", **CHAT, max_tokens=7)
    assert out["choices"][0]["message"]["content"] == "café ok"


def test_chat_without_template_is_refused(make: Any, kit: Any) -> None:
    with make(kit.ScriptedEngine(), chat_template=None) as client:
        response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 400
        assert "no chat template" in response.json()["error"]["message"]
        assert post(client, "/v1/completions", model="tiny", prompt="x", max_tokens=1)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_every_response_is_plain_json(client: TestClient, path: str) -> None:
    body = dict(CHAT) if "chat" in path else {"model": "tiny", "prompt": "x"}
    response = client.post(path, content=json.dumps({**body, "max_tokens": 2}))
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.text)["choices"]
