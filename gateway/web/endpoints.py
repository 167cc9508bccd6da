"""The proxied `/v1` endpoints: chat, FIM and embeddings. Thin: authenticate, parse, forward.

Authentication comes first, so an unauthenticated caller costs one hash and a dict lookup and
never gets its body parsed.
"""

from __future__ import annotations

import asyncio

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.proxy import CLIENT_CLOSED, Relayed, Streamed, forward
from gateway.routing.residency import RESIDENCY_HEADER
from gateway.state import Gateway
from gateway.upstream.adapter import Endpoint
from gateway.web.wire import parse_json_object, validate


async def _proxy(request: Request, endpoint: Endpoint) -> Response:
    gw: Gateway = request.app.state.gateway
    principal = await gw.auth.authenticate(request.headers.get("authorization"))
    try:
        body = await request.body()
    except ClientDisconnect:  # gone while sending the body: nothing was admitted
        return Response(status_code=CLIENT_CLOSED)
    payload = parse_json_object(body)
    model = validate(endpoint, payload)
    # Until the answer starts, nothing else listens to the client: watch for it leaving, and
    # cancel the upstream call (and its retries) at once instead of finishing for nobody.
    handler = asyncio.current_task()
    assert handler is not None
    watcher = asyncio.get_running_loop().create_task(_cancel_on_disconnect(request, handler))
    try:
        result = await forward(
            gw,
            principal,
            endpoint,
            model,
            payload,
            request.state.request_id,
            request.headers.get(RESIDENCY_HEADER),
        )
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            handler.uncancel()  # our own cancellation: the client is gone, nobody reads this
            return Response(status_code=CLIENT_CLOSED)
        raise
    finally:
        watcher.cancel()
    return render(result)


async def _cancel_on_disconnect(request: Request, handler: asyncio.Task[object]) -> None:
    """Cancel `handler` when the client disconnects (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    handler.cancel()


class _ClosingStream(StreamingResponse):
    """A streaming response that always closes its `Streamed` when it ends, so a client that
    hangs up (even before the first chunk) settles, records and aborts the upstream at once."""

    def __init__(self, result: Streamed) -> None:
        super().__init__(
            result.chunks,
            status_code=result.status,
            headers=result.headers,
            media_type=result.media_type,
        )
        self._result = result

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # finish even if this task is being cancelled
                await self._result.close()


def render(result: Relayed | Streamed) -> Response:
    """The Starlette response for a proxy result."""
    if isinstance(result, Streamed):
        return _ClosingStream(result)
    return Response(
        result.body, status_code=result.status, headers=result.headers, media_type=result.media_type
    )


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    return await _proxy(request, Endpoint.CHAT)


async def fim_completions(request: Request) -> Response:
    """POST /v1/fim/completions (Mistral's fill-in-the-middle)."""
    return await _proxy(request, Endpoint.FIM)


async def embeddings(request: Request) -> Response:
    """POST /v1/embeddings."""
    return await _proxy(request, Endpoint.EMBEDDINGS)
