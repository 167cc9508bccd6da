"""Render every error as OpenAI's `{"error": {"message", "type", "code", "param"}}`.

Our own errors carry their status, type and code. Starlette's routing errors (unknown path,
wrong method) are mapped to ours. Anything else is a bug: it becomes a plain 500 that names the
request id, is logged once here with its traceback, and never leaks internals to the client.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, MethodNotAllowed, NotFound, render_error_body

log = logging.getLogger("gateway.errors")


def error_parts(error: GatewayError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, extra raw headers, body) of one of our errors, for raw ASGI senders."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers().items()]
    return error.status, headers, error.body()


def internal_error_parts(request_id: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, extra raw headers, body) of the plain 500 a bug becomes."""
    body = render_error_body(
        f"The gateway hit an internal error. Quote request id {request_id} when reporting it.",
        "api_error",
        "internal_error",
        None,
    )
    return 500, [], body


def _response(error: GatewayError) -> Response:
    return Response(
        error.body(),
        status_code=error.status,
        headers=error.headers(),
        media_type="application/json",
    )


async def gateway_error(request: Request, exc: Exception) -> Response:
    """Our own errors: status, type and code from the class."""
    assert isinstance(exc, GatewayError)
    return _response(exc)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors, in our format."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _response(NotFound(f"Unknown route: {request.method} {request.url.path}."))
    if exc.status_code == 405:
        return _response(
            MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
        )
    body = render_error_body(str(exc.detail), "invalid_request_error", None, None)
    return Response(body, status_code=exc.status_code, media_type="application/json")


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: log it with the request id, answer a plain 500."""
    request_id = request.scope.get("state", {}).get("request_id", "-")
    log.error("unhandled error in request %s", request_id, exc_info=exc)
    status, _, body = internal_error_parts(request_id)
    return Response(body, status_code=status, media_type="application/json")
