"""The optional API key: ``Authorization: Bearer <key>``, compared in constant time.

With a key set, every route but the public ones (``GET /health`` and the chat page at ``/``,
which holds no data and asks for the key) answers 401 in OpenAI's
error shape when the header is missing or holds another key. The comparison is
``hmac.compare_digest``, whose time does not depend on where the keys differ. CORS
preflight requests (``OPTIONS``) pass, so that a browser page allowed by ``cors_origins``
can then send the key.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from typing import Final

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from lego.protocols import ConfigError
from lego.serve.errors import error_response

__all__ = ["APIKeyMiddleware", "PUBLIC_PATHS", "check_api_key"]

PUBLIC_PATHS: Final = frozenset({"/", "/health"})
"""Paths served without the key (a load balancer's health check has none)."""


def check_api_key(api_key: str) -> str:
    """Validate an API key setting.

    Args:
        api_key: The key.

    Returns:
        The key.

    Raises:
        ConfigError: When it is empty or holds whitespace (no client could send it).

    Example:
        >>> check_api_key("sk-local-123")
        'sk-local-123'
    """
    if not api_key or any(c.isspace() for c in api_key) or not api_key.isprintable():
        raise ConfigError(
            "the API key must be a non-empty string without whitespace",
            key="api_key",
            hint="choose a key such as the output of `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`",
        )
    return api_key


class APIKeyMiddleware:
    """ASGI middleware that lets through only requests that carry the API key.

    Args:
        app: The application to protect.
        api_key: The key clients send as ``Authorization: Bearer <key>``.
        public_paths: Paths served without the key.
    """

    def __init__(
        self, app: ASGIApp, *, api_key: str, public_paths: Collection[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self._key = check_api_key(api_key).encode("utf-8")
        self._public = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, or answer 401 when it lacks the key."""
        if scope["type"] != "http" or scope["path"] in self._public or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        if header is None:
            message = "no API key given; send it in the header 'Authorization: Bearer <key>'"
        else:
            scheme, _, token = header.partition(" ")
            given = token.strip().encode("utf-8")
            if scheme.lower() == "bearer" and hmac.compare_digest(given, self._key):
                await self.app(scope, receive, send)
                return
            message = "the API key is not valid for this server"
        response = error_response(
            401,
            message,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)
