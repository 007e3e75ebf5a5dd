"""Errors, limits, the API key, CORS, time-outs and disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from lego.protocols import CompatibilityError, ConfigError
from lego.serve.app import create_app

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_malformed_bodies_are_400s_and_the_server_goes_on(client: TestClient) -> None:
    path = "/v1/chat/completions"
    assert "not valid JSON" in error_of(client.post(path, content=b'{"model": '), 400)["message"]
    assert "JSON object" in error_of(client.post(path, content=b"[1, 2]"), 400)["message"]
    assert "empty" in error_of(client.post(path, content=b""), 400)["message"]
    assert "UTF-8" in error_of(client.post(path, content=b'{"a": "\xff"}'), 400)["message"]
    wrong = error_of(client.post(path, json={**CHAT, "n": "two"}), 400)
    assert (wrong["param"], wrong["type"]) == ("n", "invalid_request_error")
    assert error_of(client.post(path, json={**CHAT, "stop": list("abcde")}), 400)["param"] == "stop"
    good = client.post(path, json={**CHAT, "max_tokens": 2})
    assert good.status_code == 200
    assert good.json()["choices"][0]["message"]["content"] == "He"


def test_prompt_beyond_the_context_names_the_limit(client: TestClient) -> None:
    long = {"model": "tiny", "prompt": "x" * 200}
    err = error_of(client.post("/v1/completions", json=long), 400)
    assert err["code"] == "context_length_exceeded"
    assert "96 tokens" in err["message"]


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    assert "POST /v1/nothing" in error_of(client.post("/v1/nothing", json={}), 404)["message"]
    response = client.get("/v1/chat/completions")
    error_of(response, 405)
    assert response.headers["allow"] == "POST"


def test_body_over_the_limit_is_413(make: Any, engine: Any) -> None:
    with make(engine, max_body_bytes=200) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 500}]}
        err = error_of(client.post("/v1/chat/completions", json=big), 413)
        assert err["code"] == "request_too_large"
        assert (
            client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1}).status_code == 200
        )
    assert engine.requests[0].params.max_tokens == 1  # the big one never reached the engine


def test_body_over_the_limit_without_content_length(engine: Any, kit: Any) -> None:
    """A chunked body is counted while it is read."""
    app = create_app(engine, model_name="tiny", chat_template="chatml", max_body_bytes=100)
    chunks = [b'{"model": "tiny", "prompt": "' + b"x" * 60, b"x" * 60 + b'"}']
    sent = asyncio.run(kit.call(app, "/v1/completions", chunks))
    assert sent[0]["status"] == 413
    assert engine.requests == []


def test_full_engine_is_503_with_retry_after_and_cancels_the_rest(make: Any, kit: Any) -> None:
    engine = kit.ScriptedEngine(max_queue=2)
    with make(engine) as client:
        response = client.post("/v1/chat/completions", json={**CHAT, "n": 3})
        err = error_of(response, 503)
    assert response.headers["retry-after"] == "1"
    assert (err["type"], err["code"]) == ("server_error", "engine_overloaded")
    assert len(engine.requests) == 2
    assert all(r.cancelled for r in engine.requests)


def test_engine_refusal_is_400(client: TestClient, engine: Any) -> None:
    engine.submit_error = ConfigError("logit_bias names token id 300", key="logit_bias")
    err = error_of(client.post("/v1/chat/completions", json=CHAT), 400)
    assert (err["param"], err["message"]) == ("logit_bias", "logit_bias names token id 300")


def test_a_bug_is_500_without_a_traceback(make: Any, engine: Any) -> None:
    engine.submit_error = RuntimeError("secret internals")
    with make(engine) as client:
        response = client.post("/v1/chat/completions", json=CHAT)
        err = error_of(response, 500)
        assert "secret" not in response.text
        assert "Traceback" not in response.text
        assert (err["type"], err["code"]) == ("server_error", "internal_error")
        engine.submit_error = None
        assert (
            client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1}).status_code == 200
        )


def test_a_failed_generation_is_500_or_an_error_event(client: TestClient, engine: Any) -> None:
    engine.fail_after = 2
    err = error_of(client.post("/v1/chat/completions", json=CHAT), 500)
    assert err["code"] == "generation_failed"
    assert "the model broke" in err["message"]
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as stream:
        raw = "".join(stream.iter_text())
    blocks = raw.split("\n\n")
    assert blocks[-2:] == ["data: [DONE]", ""]
    error = json.loads(blocks[-3][len("data: ") :])
    assert error["error"]["code"] == "generation_failed"


def test_api_key(make: Any, engine: Any) -> None:
    with make(engine, api_key="sk-test-1") as client:
        assert error_of(client.get("/v1/models"), 401)["code"] == "invalid_api_key"
        wrong = {"Authorization": "Bearer sk-test-2"}
        assert error_of(client.get("/v1/models", headers=wrong), 401)["code"] == "invalid_api_key"
        basic = {"Authorization": "Basic sk-test-1"}
        error_of(client.get("/v1/models", headers=basic), 401)
        error_of(client.post("/tokenize", json={"prompt": "x"}), 401)
        right = {"Authorization": "Bearer sk-test-1"}
        assert client.get("/v1/models", headers=right).status_code == 200
        assert client.get("/health").status_code == 200
    with pytest.raises(ConfigError, match="API key"):
        create_app(engine, model_name="tiny", api_key="two words")


def test_cors_off_by_default_and_on_for_named_origins(make: Any, engine: Any) -> None:
    origin = {"Origin": "http://localhost:3000"}
    with make(engine) as client:
        assert "access-control-allow-origin" not in client.get("/v1/models", headers=origin).headers
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    preflight["Access-Control-Request-Headers"] = "authorization,content-type"
    with make(engine, cors_origins=["http://localhost:3000"], api_key="k") as client:
        response = client.options("/v1/chat/completions", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = client.options(
            "/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers


def test_time_limit_ends_the_response_with_length(make: Any, engine: Any) -> None:
    engine.hang_after = 3
    with make(engine, request_timeout_s=0.2) as client:
        out = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10}).json()
        (choice,) = out["choices"]
        assert choice["message"]["content"] == "Hel"
        assert choice["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == 3
        assert engine.requests[0].cancelled
        with client.stream(
            "POST", "/v1/completions", json={"model": "tiny", "prompt": "x", "stream": True}
        ) as stream:
            raw = "".join(stream.iter_text())
    assert raw.endswith("data: [DONE]\n\n")
    assert '"finish_reason":"length"' in raw
    assert engine.requests[1].cancelled


def test_settings_are_checked(engine: Any, kit: Any) -> None:
    with pytest.raises(ConfigError, match="model_name"):
        create_app(engine, model_name="")
    with pytest.raises(ConfigError, match="max_body_bytes"):
        create_app(engine, model_name="tiny", max_body_bytes=0)
    with pytest.raises(ConfigError, match="request_timeout_s"):
        create_app(engine, model_name="tiny", request_timeout_s=0)
    with pytest.raises(ConfigError, match="chat template"):
        create_app(engine, model_name="tiny", chat_template="nope")
    with pytest.raises(CompatibilityError, match="eos_token"):
        create_app(engine, model_name="tiny", eos_token="</s>")
    bare = kit.ScriptedEngine()
    bare.tokenizer.special_tokens = {}
    with pytest.raises(CompatibilityError, match=r"<\|im_start\|>"):
        create_app(bare, model_name="tiny", chat_template="chatml")


# -- disconnects, driven through the raw ASGI interface (conftest.asgi_call) --------


def test_disconnect_cancels_a_streamed_request(engine: Any, kit: Any) -> None:
    engine.hang_after = 2
    app = create_app(engine, model_name="tiny", chat_template="chatml")
    body = json.dumps({**CHAT, "stream": True, "n": 2}).encode()
    sent = asyncio.run(kit.call(app, "/v1/chat/completions", [body], leave="first"))
    assert sent[0]["status"] == 200
    assert len(engine.requests) == 2
    assert all(r.cancelled for r in engine.requests)
    assert all(r.finished for r in engine.requests)


def test_disconnect_cancels_a_plain_request(engine: Any, kit: Any) -> None:
    engine.hang_after = 2
    app = create_app(engine, model_name="tiny", chat_template="chatml")
    body = json.dumps({"model": "tiny", "prompt": ["a", "b"], "max_tokens": 9}).encode()
    asyncio.run(kit.call(app, "/v1/completions", [body], leave="now"))
    assert len(engine.requests) == 2
    assert all(r.cancelled for r in engine.requests)


def test_a_client_that_leaves_at_once_has_its_stream_cancelled(engine: Any, kit: Any) -> None:
    engine.hang_after = 0
    app = create_app(engine, model_name="tiny", chat_template="chatml")
    body = json.dumps({**CHAT, "stream": True}).encode()
    asyncio.run(kit.call(app, "/v1/chat/completions", [body], leave="now"))
    assert len(engine.requests) == 1
    assert engine.requests[0].cancelled
