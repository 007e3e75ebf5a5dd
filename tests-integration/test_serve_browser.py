"""lego-serve's chat page in a real headless Chromium (Debian's ``chromium``, Playwright).

The page is served by the app at ``/`` and talks to ``/v1/chat/completions`` with
``stream=true``. The model is the tiny random Llama of ``test_serve_openai_client.py``,
slowed down per forward pass so that a reply is still streaming when the test presses
stop. What the test checks: a typed message appears, the reply grows while it streams,
stop ends it (the page says so and the server frees the slot), a reload keeps the
conversation, a wrong API key shows the server's error, and a reply cannot inject HTML.
Waits have generous limits so that a broken page fails instead of hanging; nothing
asserts a duration.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_serve_openai_client import EOS, ByteTokenizer, Server, _model
from torch import nn

from lego.serve import Engine, create_app

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CHROMIUM = os.environ.get("LEGO_CHROMIUM") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (apt-get install -y chromium; .ci/run installs it)"
)
WAIT_MS = 60_000
API_KEY = "sk-page-test"


class Slow(nn.Module):
    """The model with a pause per forward pass: a reply streams for a few seconds."""

    def __init__(self, model: nn.Module, pause: float) -> None:
        super().__init__()
        self.model = model
        self.pause = pause

    @property
    def config(self) -> Any:
        return self.model.config

    def new_kv_cache(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.new_kv_cache(*args, **kwargs)  # type: ignore[operator]

    def forward(self, input_ids: torch.Tensor, /, **kwargs: Any) -> torch.Tensor:
        time.sleep(self.pause)
        out: torch.Tensor = self.model(input_ids, **kwargs)
        return out


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Engine]]:
    engine = Engine(
        model=Slow(_model(), pause=0.05),
        tokenizer=ByteTokenizer(),
        max_batch=2,
        eos_token_ids=[257, EOS],
    )
    engine.start()
    app = create_app(engine, model_name="tiny-llama", chat_template="chatml", api_key=API_KEY)
    try:
        with Server(app) as url:
            yield url, engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def _open(
    browser: Any, url: str, *, key: str = API_KEY, max_tokens: str | None = "200", page: Any = None
) -> Any:
    """The chat page with the key set; ``max_tokens`` None keeps the page's default."""
    page = page or browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url + "/")
    page.click("#settings-button")
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    if max_tokens is not None:
        page.fill("#max-tokens", max_tokens)
    page.fill("#temperature", "0")
    return page


def _assistant_text(page: Any) -> str:
    text: str = page.locator(".message.assistant .content").last.inner_text()
    return text


def _until(check: Any, what: str) -> None:
    """Poll from Python: the page's policy forbids the eval that wait_for_function uses."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_page_is_self_contained(served: tuple[str, Engine], browser: Any) -> None:
    url, _ = served
    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    response = page.goto(url + "/")
    assert response.status == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy  # the inline script runs by its hash only
    assert page.title() == "LegoLLM chat"
    # everything the page loads comes from the server itself: no CDN, no build step
    assert requests
    assert all(r.startswith(url) for r in requests), requests
    page.close()


def test_type_stream_stop_reload(served: tuple[str, Engine], browser: Any, tmp_path: Path) -> None:
    url, engine = served
    page = _open(browser, url)
    _until(lambda: page.inner_text("#model-name") == "tiny-llama", "the model's name")
    page.fill("#input", "Tell me a story.")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.user")
    assert page.inner_text(".message.user .content") == "Tell me a story."

    # the reply grows while it streams: two different non-empty lengths seen
    _until(lambda: len(_assistant_text(page)) > 3, "the first streamed characters")
    first = len(_assistant_text(page))
    _until(lambda: len(_assistant_text(page)) > first, "more streamed characters")
    assert page.is_enabled("#stop-button")
    assert not page.is_enabled("#send-button")
    shots = os.environ.get("LEGO_SCREENSHOT_DIR")  # docs/assets/serve-chat.png came from here
    page.screenshot(path=str(Path(shots or tmp_path) / "serve-chat.png"))

    page.click("#stop-button")
    page.wait_for_selector(".message.assistant .meta")
    assert page.inner_text(".message.assistant .meta").startswith("stopped")
    assert page.is_enabled("#send-button")
    stopped = _assistant_text(page)
    assert stopped  # what arrived before stop stays on the page
    # the server noticed the client leaving and freed its slot
    deadline = time.monotonic() + WAIT_MS / 1000
    while engine.stats()["running"] or engine.stats()["queued"]:
        assert time.monotonic() < deadline, engine.stats()
        time.sleep(0.05)

    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.inner_text(".message.user .content") == "Tell me a story."
    assert _assistant_text(page) == stopped
    page.close()


def test_a_wrong_key_shows_the_servers_error(served: tuple[str, Engine], browser: Any) -> None:
    url, _ = served
    page = _open(browser, url, key="sk-wrong")
    page.fill("#input", "hello")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.error")
    assert "API key" in page.inner_text(".message.error .content")
    assert page.is_enabled("#send-button")
    page.close()


def test_replies_are_markdown_but_never_html(served: tuple[str, Engine], browser: Any) -> None:
    url, _ = served
    page = browser.new_page()
    page.goto(url + "/")
    html = page.evaluate(
        "renderMarkdown('**bold** <img src=x onerror=alert(1)>\\n```py\\nx = 1 < 2\\n```\\n"
        "- a\\n- b\\n[link](javascript:alert(1)) [ok](https://example.org)')"
    )
    assert "<strong>bold</strong>" in html
    assert "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<pre><code>x = 1 &lt; 2</code></pre>" in html
    assert "<ul><li>a</li><li>b</li></ul>" in html
    assert 'href="javascript' not in html
    assert '<a href="https://example.org"' in html
    page.close()


def test_max_tokens_left_empty_gives_the_rest_of_the_context(
    served: tuple[str, Engine], browser: Any
) -> None:
    """A model whose context is smaller than any fixed default still answers."""
    url, engine = served
    page = browser.new_page()
    bodies: list[str] = []
    page.on(
        "request",
        lambda r: bodies.append(r.post_data or "") if r.url.endswith("/completions") else None,
    )
    _open(browser, url, max_tokens=None, page=page)
    _until(lambda: page.inner_text("#model-name") == "tiny-llama", "the model's name")
    assert page.input_value("#max-tokens") == ""  # no default that may not fit
    assert page.get_attribute("#max-tokens", "max") == str(engine.max_seq_len)
    page.fill("#input", "hi")
    page.press("#input", "Enter")
    _until(lambda: len(_assistant_text(page)) > 0, "the first streamed characters")
    page.click("#stop-button")
    page.wait_for_selector(".message.assistant .meta")
    (body,) = bodies
    sent = json.loads(body)
    assert "max_tokens" not in sent  # the server gives the reply the rest of the context
    assert sent["messages"][-1] == {"role": "user", "content": "hi"}
    page.close()
