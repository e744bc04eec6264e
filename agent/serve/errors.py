"""Errors of the serving API, each with its HTTP status and OpenAI's error JSON shape.

OpenAI's clients read ``{"error": {"message", "type", "param", "code"}}``; every refusal of ``qtha serve`` has
this shape and a message that says what to change. Nothing else ever reaches a client: an unexpected exception
becomes a 500 with a request id to look up in the log, never a stack trace.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "EngineUnavailable",
    "NotFound",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "Unauthorized",
    "error_body",
]


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response in OpenAI's shape."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class ApiError(Exception):
    """A refusal with an HTTP status (subclasses fix status and type)."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(ApiError, ValueError):
    """400: a field is missing, unknown or out of range (``param`` names it)."""

    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    """401: no or a wrong bearer token."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class NotFound(ApiError, LookupError):
    """404: an unknown route, model or request id."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLarge(ApiError):
    """413: the body or the rendered prompt is longer than the server accepts."""

    status = 413
    type = "invalid_request_error"
    code = "too_long"


def _retry_soon(self: ApiError) -> dict[str, str]:
    """The headers of a refusal the client should retry in a second (queue full, not ready)."""
    return {"retry-after": "1"}


class QueueFull(ApiError):
    """429: every decoding slot is busy and the queue is full; retry after a moment."""

    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    headers = _retry_soon


class EngineUnavailable(ApiError):
    """503: no model is loaded yet, the server is shutting down, or it holds too many connections."""

    status = 503
    type = "server_error"
    code = "unavailable"

    headers = _retry_soon


class RequestTimeout(ApiError):
    """504: the request ran past ``serve.request_timeout_s`` and was cancelled."""

    status = 504
    type = "server_error"
    code = "timeout"
