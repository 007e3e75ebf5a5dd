"""The chat page at ``/``: served whole, public, under a hash-based Content-Security-Policy."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from lego.serve.page import chat_page


def test_the_page_is_served_without_the_key(make: Any, engine: Any) -> None:
    with make(engine, api_key="sk-secret") as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.text.startswith("<!doctype html>")
        assert page.headers["x-content-type-options"] == "nosniff"
        # the API still needs the key
        assert client.get("/v1/models").status_code == 401


def test_the_policy_allows_exactly_the_pages_own_script_and_style() -> None:
    body, headers = chat_page()
    text = body.decode()
    policy = dict(part.split(" ", 1) for part in headers["Content-Security-Policy"].split("; "))
    for kind in ("script", "style"):
        (block,) = re.findall(rf"<{kind}>(.*?)</{kind}>", text, flags=re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert policy[f"{kind}-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    # nothing is loaded from elsewhere: no src= or href= outside the page itself
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)


def test_only_get_reaches_the_page(client: Any) -> None:
    response = client.post("/", json={})
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
