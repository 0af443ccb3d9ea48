"""API errors: one JSON shape `{"error": {"code", "message"}}`, statuses from workflow codes, nothing secret."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.control.errors import WorkflowError

log = logging.getLogger(__name__)

STATUS = {
    "bad-request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not-found": 404,
    "method-not-allowed": 405,
    "conflict": 409,
    "too-large": 413,
    "unsupported-media-type": 415,
    "invalid": 422,
    "idp-unavailable": 503,
}


class ApiError(Exception):
    """An error answered to the client as is; `message` must never contain a credential."""

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)


def bad_request(message: str) -> ApiError:
    """Malformed input: bad JSON, unknown fields, wrong types."""
    return ApiError("bad-request", message)


def error_response(status: int, code: str, message: str) -> web.Response:
    """The JSON error body."""
    resp = web.json_response({"error": {"code": code, "message": message}}, status=status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="gateway"'
    return resp


def from_exception(exc: BaseException) -> ApiError | None:
    """Map known exceptions to API errors; None for a bug (answered as 500 without details)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, WorkflowError):
        return ApiError(exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(exc.status, "bad-request")
        return ApiError(code, exc.reason or "request refused", status=exc.status)
    return None
