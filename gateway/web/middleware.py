"""The edge: the hot path's dispatch, then pure ASGI middleware for a request id on everything
and a cap on body size.

- `GatewayApp` sends a `POST` to a proxied route (`web/endpoints.py`) straight to its endpoint
  app, which sets its own request id, enforces the body cap as it reads and renders its own
  errors: Starlette's middleware stack, router and exception handling stay off the hot path.
- Everything else gets a gateway-generated id (`web/ids.py`) in `scope["state"]["request_id"]`,
  returned as `x-request-id` on every response, errors included.
- Bodies are capped: a declared `Content-Length` over the cap is refused before any byte is
  read; a chunked body is counted as it arrives and refused as soon as it passes the cap, so
  memory stays bounded by the cap either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RequestTimeout, RequestTooLarge
from gateway.web.ids import REQUEST_ID_HEADER, new_request_id


class GatewayApp(Starlette):
    """Starlette, with the proxied POST routes dispatched before its middleware stack."""

    def __init__(self, *, direct: Mapping[str, ASGIApp], **options: Any) -> None:
        super().__init__(**options)
        self._direct = dict(direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self._direct.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class EdgeMiddleware:
    """Request id, body-size cap and body deadline."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER, request_id.encode())

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
        await self.app(scope, _timed(receive, self.body_timeout_s), send_with_id)


def _timed(receive: Receive, limit_s: float) -> Receive:
    """`receive`, with the whole body due within `limit_s` (408 after); later receives (a
    response listening for the client leaving) wait as long as they need."""
    deadline: float | None = None
    complete = False

    async def timed() -> Message:
        nonlocal deadline, complete
        if complete:
            return await receive()
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + limit_s
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise RequestTimeout(limit_s) from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            complete = True
        return message

    return timed


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
