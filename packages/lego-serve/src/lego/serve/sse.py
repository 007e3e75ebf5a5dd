"""Server-sent events exactly as OpenAI streams them.

Each chunk is one event, ``data: {json}`` and a blank line; the stream ends with
``data: [DONE]``. The JSON is compact and keeps non-ASCII text as is (UTF-8), and the
engine only ever hands over whole characters, so no event splits one.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["event", "DONE", "HEADERS", "MEDIA_TYPE"]

MEDIA_TYPE: Final = "text/event-stream"
"""The stream's content type."""

HEADERS: Final = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""Headers that keep proxies from caching or buffering the stream."""

DONE: Final = b"data: [DONE]\n\n"
"""The last event of every stream."""


def event(data: Any) -> bytes:
    r"""Encode one chunk as a server-sent event.

    Args:
        data: A JSON-serialisable object.

    Returns:
        ``b"data: {json}\n\n"``.

    Example:
        >>> event({"text": "é"})
        b'data: {"text":"\xc3\xa9"}\n\n'
    """
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return b"data: " + body.encode("utf-8") + b"\n\n"
