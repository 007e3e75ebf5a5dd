"""A judge model reached through any OpenAI-compatible chat endpoint, with the standard library.

[`JudgeClient`][lego.eval.judge_client.JudgeClient] sends one prompt as a user message to
``POST {base_url}/chat/completions`` (OpenAI's JSON shapes; a Bearer key when one is given)
and returns the reply's text. It uses ``urllib.request`` only, so lego-eval needs no HTTP
library. Connection errors, timeouts, HTTP 429 and 5xx are retried with exponential
backoff (``backoff``, ``2 * backoff``, ``4 * backoff``..., at most ``max_backoff``; a
``Retry-After`` header is honoured instead, up to ``max_retry_after`` seconds); after the
last try, or on any other HTTP error (400, 401, 404...), a
[`JudgeError`][lego.eval.judge_client.JudgeError] names the URL and says what to do.

Example:
    >>> client = JudgeClient("http://127.0.0.1:8000/v1", "gpt-4o-mini", max_retries=2)
    >>> client.url
    'http://127.0.0.1:8000/v1/chat/completions'
    >>> JudgeClient("localhost:8000", "judge")
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: the judge URL 'localhost:8000' is not an http(s) URL
    ...
"""

from __future__ import annotations

import email.utils
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lego.protocols import ConfigError, LegoError

__all__ = ["JudgeClient", "JudgeError"]


class JudgeError(LegoError):
    """The judge endpoint cannot be used: down after the retries, or it refused the request."""


@dataclass
class JudgeClient:
    """A chat-completions client for a judge model.

    Args:
        base_url: The API's base URL, e.g. ``http://127.0.0.1:8000/v1`` (the path before
            ``/chat/completions``).
        model: The judge model's name, sent as ``"model"``.
        api_key: Sent as ``Authorization: Bearer <api_key>`` when given.
        timeout: Seconds to wait for one reply.
        max_retries: Tries after the first one on connection errors, timeouts, 429 and 5xx.
        backoff: Seconds before the first retry; doubled at each further retry.
        max_backoff: The longest wait computed by doubling.
        max_retry_after: The longest ``Retry-After`` honoured (seconds).
        temperature: The judge's sampling temperature (0: its most likely verdict).
        max_tokens: The longest reply asked for.
        sleep: How to wait (tests pass a recorder).

    Raises:
        ConfigError: When the URL is not ``http(s)://host...``, the model name is empty or a
            number is out of range.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    max_retries: int = 4
    backoff: float = 1.0
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 1024
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    requests_sent: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"the judge URL {self.base_url!r} is not an http(s) URL",
                key="base_url",
                hint="give the API's base URL, e.g. http://127.0.0.1:8000/v1",
            )
        if not self.model.strip():
            raise ConfigError("the judge model's name is empty", key="model")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {self.timeout}", key="timeout")
        if self.max_retries < 0:
            raise ConfigError(
                f"max_retries must be >= 0, got {self.max_retries}", key="max_retries"
            )
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ConfigError("backoff times must be >= 0", key="backoff")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}", key="max_tokens")
        if self.api_key is not None and (not self.api_key.strip() or " " in self.api_key):
            raise ConfigError("the judge's API key must be a non-empty word", key="api_key")

    @property
    def url(self) -> str:
        """The chat-completions URL requests go to."""
        return self.base_url.rstrip("/") + "/chat/completions"

    def complete(self, prompt: str) -> str:
        """Send ``prompt`` as one user message and return the reply's text.

        Args:
            prompt: The rendered judge prompt.

        Returns:
            The first choice's message content (``""`` when it has none).

        Raises:
            JudgeError: When the endpoint stays unreachable or keeps answering 429 / 5xx
                after ``max_retries`` retries, refuses the request (another 4xx), or its
                reply is not a chat completion.
        """
        body = json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "stream": False,
            }
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no try made"
        tries = self.max_retries + 1
        for attempt in range(tries):
            wait: float | None = None
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            self.requests_sent += 1
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return self._content(response.read())
            except urllib.error.HTTPError as err:
                detail = _excerpt(_read_quietly(err))
                if err.code != 429 and err.code < 500:
                    raise self._refused(err.code, detail) from None
                last = f"HTTP {err.code}{': ' + detail if detail else ''}"
                wait = _retry_after(err.headers.get("Retry-After") if err.headers else None)
            except urllib.error.URLError as err:
                last = str(err.reason)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                last = str(err) or type(err).__name__
            if attempt + 1 < tries:
                if wait is None:
                    wait = min(self.backoff * 2**attempt, self.max_backoff)
                self.sleep(min(wait, self.max_retry_after))
        raise JudgeError(
            f"the judge at {self.url} did not answer after {tries} tries (last: {last})",
            key="base_url",
            hint="start the judge's server or correct the URL (the base URL ends before "
            "/chat/completions, e.g. http://127.0.0.1:8000/v1), then run again",
        )

    def _refused(self, status: int, detail: str) -> JudgeError:
        if status in (401, 403):
            hint = "give the judge's API key (legollm: --api-key-env VAR names the variable)"
        elif status == 404:
            hint = (
                "check the base URL (it ends before /chat/completions, often with /v1) and "
                "the judge model's name"
            )
        else:
            hint = "check the judge model's name and the endpoint's limits (max_tokens...)"
        return JudgeError(
            f"the judge at {self.url} refused the request: HTTP {status}"
            + (f": {detail}" if detail else ""),
            key="base_url",
            hint=hint,
        )

    def _content(self, raw: bytes) -> str:
        try:
            reply: Any = json.loads(raw)
            content = reply["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise JudgeError(
                f"the judge at {self.url} did not answer with a chat completion: {_excerpt(raw)!r}",
                key="base_url",
                hint="point the URL at an OpenAI-compatible API (e.g. http://host:port/v1)",
            ) from None
        return content if isinstance(content, str) else ""


def _read_quietly(err: urllib.error.HTTPError) -> bytes:
    """The error response's body (empty when unreadable); the connection is closed."""
    try:
        return err.read()
    except (OSError, http.client.HTTPException):
        return b""
    finally:
        err.close()


def _excerpt(raw: bytes, size: int = 200) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= size else text[:size] + "..."


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)
