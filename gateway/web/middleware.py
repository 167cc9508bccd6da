"""Pure ASGI middleware at the edge: a request id on everything, and a cap on body size.

Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched and the cost
is a couple of function calls per request.

- Every request gets a gateway-generated id (time-ordered hex, unique): it is the ledger key,
  never the client's or the upstream's id. It is stored in `scope["state"]["request_id"]` and
  returned as `x-request-id` on every response, errors included.
- Bodies are capped: a declared `Content-Length` over the cap is refused before any byte is
  read; a chunked body is counted as it arrives and refused as soon as it passes the cap, so
  memory stays bounded by the cap either way.
"""

from __future__ import annotations

import os
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RequestTooLarge

_REQUEST_ID = b"x-request-id"


def new_request_id() -> str:
    """A 32-hex-char id: 48 bits of milliseconds then 80 random bits, so ids sort by time."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


class EdgeMiddleware:
    """Request id and body-size cap."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_REQUEST_ID, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    # Refused before reading; raising into the app renders the 413 in our format.
                    receive = _refuse(limit)
                break
        else:
            receive = _counting(receive, limit)
        await self.app(scope, receive, send_with_id)


def _refuse(limit: int) -> Receive:
    async def receive() -> Message:
        raise RequestTooLarge(limit)

    return receive


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge(limit)
        return message

    return counted
