"""Errors in OpenAI's JSON shape, with the status code that goes with each.

Every failed request gets one body, as OpenAI's API sends it::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "n", "code": null}}

[`APIError`][lego.serve.errors.APIError] carries the status code, the OpenAI error type, the
request field at fault (``param``) and a machine-readable ``code``;
[`error_response()`][lego.serve.errors.error_response] renders it. The status codes:

======  =========================  ==================================================
status  type                       when
======  =========================  ==================================================
400     ``invalid_request_error``  malformed JSON, a wrong type or value (``param`` names
                                   the field), a prompt longer than the context
401     ``invalid_request_error``  no API key, or a wrong one (code ``invalid_api_key``)
404     ``invalid_request_error``  an unknown route, or an unknown model (code
                                   ``model_not_found``)
405     ``invalid_request_error``  a known route with the wrong method
413     ``invalid_request_error``  a body over the size limit (code ``request_too_large``)
500     ``server_error``           a bug: the message says so, never a traceback
503     ``server_error``           the engine's queue is full (code ``engine_overloaded``,
                                   with a ``Retry-After`` header)
======  =========================  ==================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from starlette.responses import JSONResponse

from lego.protocols import LegoError

__all__ = [
    "APIError",
    "INVALID_REQUEST",
    "SERVER_ERROR",
    "error_body",
    "error_response",
    "bad_request",
]

INVALID_REQUEST: Final = "invalid_request_error"
"""OpenAI's error type for everything the client got wrong."""

SERVER_ERROR: Final = "server_error"
"""OpenAI's error type for failures on the server's side."""


class APIError(LegoError):
    """A request that fails with an OpenAI-shaped error.

    Args:
        status: The HTTP status code.
        message: What was wrong, for the client.
        type: OpenAI's error type (``"invalid_request_error"``, ``"server_error"``).
        param: The request field at fault (``"messages[0].content"``, ``"n"``), or None.
        code: A machine-readable code (``"model_not_found"``), or None.
        headers: Extra response headers (e.g. ``Retry-After``).

    Example:
        >>> err = APIError(400, "n must be at least 1, got 0", param="n")
        >>> err.status, err.param, err.type
        (400, 'n', 'invalid_request_error')
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, key=param)
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, object]]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        """The error as a Starlette response (status, body and headers)."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_api_error,
            (self.status, self.message, self.type, self.param, self.code, self.headers),
        )


def _rebuild_api_error(
    status: int,
    message: str,
    type: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str],
) -> APIError:
    return APIError(status, message, type=type, param=param, code=code, headers=headers)


def error_body(
    message: str,
    *,
    type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, dict[str, object]]:
    """Build OpenAI's error body.

    Args:
        message: What was wrong.
        type: OpenAI's error type.
        param: The request field at fault, or None.
        code: A machine-readable code, or None.

    Returns:
        ``{"error": {"message", "type", "param", "code"}}``.

    Example:
        >>> error_body("unknown model 'x'", param="model", code="model_not_found")["error"]
        {'message': "unknown model 'x'", 'type': 'invalid_request_error', 'param': 'model', \
'code': 'model_not_found'}
    """
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI-shaped error response.

    Args:
        status: The HTTP status code.
        message: What was wrong.
        type: OpenAI's error type.
        param: The request field at fault, or None.
        code: A machine-readable code, or None.
        headers: Extra response headers.

    Returns:
        The JSON response.
    """
    return APIError(status, message, type=type, param=param, code=code, headers=headers).response()


def bad_request(message: str, param: str | None = None, *, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error`` naming the field at fault.

    Args:
        message: What was wrong and what is accepted.
        param: The request field, e.g. ``"temperature"``.
        code: A machine-readable code, or None.

    Returns:
        The error, to raise.

    Example:
        >>> bad_request("temperature must be between 0 and 2, got 3", "temperature").status
        400
    """
    return APIError(400, message, param=param, code=code)
