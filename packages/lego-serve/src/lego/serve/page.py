"""The web chat page served at ``/``: one self-contained file, with a strict policy.

``static/index.html`` holds the page: HTML, CSS and JavaScript in one file, no build step and
no CDN, so the server serves everything the browser loads. It streams replies from
``POST /v1/chat/completions`` (server-sent events), has a stop button (the request is
aborted and the server cancels it), settings (temperature, top-p, max tokens, system prompt,
an API key kept only in the page), keeps the conversation in the browser's
``sessionStorage`` and shows replies as Markdown after escaping them.

The response carries a Content-Security-Policy that allows only this page's own inline
script and style (by their SHA-256) and requests to the server itself, so that even a bug
in the Markdown formatting could not run injected script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

__all__ = ["chat_page"]

_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def chat_page() -> tuple[bytes, dict[str, str]]:
    """The page's bytes and the headers to send with it.

    Returns:
        ``(body, headers)``: the UTF-8 HTML and ``Content-Security-Policy``,
        ``X-Content-Type-Options``, ``Referrer-Policy`` and ``Cache-Control`` headers.

    Example:
        >>> body, headers = chat_page()
        >>> body.startswith(b"<!doctype html>")
        True
        >>> "connect-src 'self'" in headers["Content-Security-Policy"]
        True
    """
    text = resources.files("lego.serve").joinpath("static/index.html").read_text("utf-8")
    scripts = [body for kind, body in _BLOCK.findall(text) if kind == "script"]
    styles = [body for kind, body in _BLOCK.findall(text) if kind == "style"]
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(_digest(s) for s in scripts),
            "style-src " + " ".join(_digest(s) for s in styles),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return text.encode("utf-8"), headers
