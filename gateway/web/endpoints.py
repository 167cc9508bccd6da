"""The proxied `/v1` endpoints (chat, FIM, embeddings) as raw ASGI: the request hot path.

Each endpoint is an ASGI app that talks to the server directly, without Starlette's `Request`,
`Response`, router or exception middleware: those cost more per request than authentication,
limits and the ledger together (docs/performance.md). `GatewayApp` hands matching POSTs
straight here; the Starlette router holds the same apps, so other methods get its 405.

Order: authenticate first (an unauthenticated caller costs one hash and a dict lookup and never
gets its body read), then read the body under the size cap, parse, forward, relay. Every
response carries `x-request-id`; every error is rendered in OpenAI's format by
`web/errors.py`. Until the answer is complete the client leaving cancels the call at once (the
upstream request and its retries with it): our server protocol calls a hook from
`connection_lost` (`server_protocol.DisconnectSlot`); under any other server a watcher task waits
on `receive()` for `http.disconnect`. A stream is always closed, so a client that hangs up still
settles and is recorded. Under our server protocol a body that came with its head is read
without a deadline (`BODY_COMPLETE`), and a whole answer goes out in one write
(`WHOLE_RESPONSE`); under any other server, through the ASGI messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from starlette.types import Message, Receive, Scope, Send

from gateway.errors import GatewayError, RequestTimeout, RequestTooLarge
from gateway.proxy import Relayed, Streamed, forward
from gateway.routing.residency import RESIDENCY_HEADER
from gateway.state import Gateway
from gateway.upstream.adapter import Endpoint
from gateway.web.errors import error_parts, internal_error_parts
from gateway.web.ids import REQUEST_ID_HEADER, new_request_id
from gateway.web.server_protocol import (
    BODY_COMPLETE,
    ON_DISCONNECT,
    WHOLE_RESPONSE,
    DisconnectSlot,
    WholeResponse,
    header_block,
)
from gateway.web.wire import parse_json_object, validate

log = logging.getLogger("gateway.errors")

_AUTHORIZATION = b"authorization"
_CONTENT_LENGTH = b"content-length"
_RESIDENCY = RESIDENCY_HEADER.encode()
_REQUEST_ID = REQUEST_ID_HEADER.decode()
Headers = list[tuple[bytes, bytes]]


class _ClientGone(Exception):
    """The client disconnected while its body was being read: nothing was admitted."""


class ProxyEndpoint:
    """One proxied route, e.g. `POST /v1/chat/completions`."""

    __slots__ = ("body_timeout_s", "endpoint", "max_body_bytes")

    def __init__(self, endpoint: Endpoint, *, max_body_bytes: int, body_timeout_s: float) -> None:
        self.endpoint = endpoint
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.setdefault("state", {})
        request_id = state.get("request_id") or new_request_id()
        state["request_id"] = request_id
        id_header = (REQUEST_ID_HEADER, request_id.encode())
        handler = asyncio.current_task()
        assert handler is not None
        watcher: asyncio.Task[None] | None = None
        left = _Left(handler)
        slot: DisconnectSlot | None = scope.get(ON_DISCONNECT)
        try:
            authorization = residency = length = None
            for name, value in scope["headers"]:
                if name == _AUTHORIZATION:
                    authorization = value
                elif name == _CONTENT_LENGTH:
                    length = value
                elif name == _RESIDENCY:
                    residency = value
            gw: Gateway = scope["app"].state.gateway
            principal = await gw.auth.authenticate(
                authorization.decode("latin-1") if authorization is not None else None
            )
            if scope.get(BODY_COMPLETE):  # all here: nothing to wait for, no deadline needed
                body = await _read_body(receive, length, self.max_body_bytes)
            else:
                try:
                    async with asyncio.timeout(self.body_timeout_s):  # a trickled body is cut off
                        body = await _read_body(receive, length, self.max_body_bytes)
                except TimeoutError:
                    raise RequestTimeout(self.body_timeout_s) from None
            payload = parse_json_object(body)
            model = validate(self.endpoint, payload)
            if slot is not None:
                slot.hook = left
            else:
                watcher = asyncio.get_running_loop().create_task(
                    _cancel_on_disconnect(receive, left)
                )
            result = await forward(
                gw,
                principal,
                self.endpoint,
                model,
                payload,
                request_id,
                residency.decode("latin-1") if residency is not None else None,
            )
            if isinstance(result, Streamed):
                await _send_stream(result, send, id_header)
            else:
                whole: WholeResponse | None = scope.get(WHOLE_RESPONSE)
                if whole is None or not _write_whole(whole, result, request_id):
                    await _send_whole(result, send, id_header)
        except asyncio.CancelledError:
            if left.fired:
                handler.uncancel()  # our own cancellation: the client is gone, nobody reads
                return
            raise
        except _ClientGone:
            return
        except GatewayError as error:
            status, headers, body = error_parts(error)
            await _send_error(send, status, headers, body, id_header)
        except Exception as exc:  # a bug: logged once here, a plain 500 for the client
            log.error("unhandled error in request %s", request_id, exc_info=exc)
            status, headers, body = internal_error_parts(request_id)
            await _send_error(send, status, headers, body, id_header)
        finally:
            if slot is not None and slot.hook is left:
                slot.hook = None
            if watcher is not None:
                watcher.cancel()


async def _read_body(receive: Receive, length: bytes | None, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass `limit`: a declared
    `Content-Length` before any byte is read, a chunked one as it arrives."""
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise RequestTooLarge(limit)
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise RequestTooLarge(limit)
        return body
    parts = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class _Left:
    """Cancels the handler when its client leaves, and remembers that it did."""

    __slots__ = ("fired", "handler")

    def __init__(self, handler: asyncio.Task[None]) -> None:
        self.handler = handler
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self.handler.cancel()


async def _cancel_on_disconnect(receive: Receive, left: _Left) -> None:
    """Call `left` when the client disconnects (its body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left()


def _head(
    status: int, media_type: str, headers: dict[str, str], id_header: tuple[bytes, bytes]
) -> Message:
    raw: Headers = [(b"content-type", media_type.encode("latin-1")), id_header]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return {"type": "http.response.start", "status": status, "headers": raw}


def _write_whole(whole: WholeResponse, result: Relayed, request_id: str) -> bool:
    """The whole answer in one write through our server protocol (False: send it the ASGI
    way); same headers, in the same order, as `_send_whole`."""
    headers = [
        ("content-type", result.media_type),
        (_REQUEST_ID, request_id),
        *result.headers.items(),
    ]
    return whole(result.status, header_block(headers), result.body)


async def _send_whole(result: Relayed, send: Send, id_header: tuple[bytes, bytes]) -> None:
    start = _head(result.status, result.media_type, result.headers, id_header)
    start["headers"].append((b"content-length", str(len(result.body)).encode()))
    await send(start)
    await send({"type": "http.response.body", "body": result.body})


async def _send_stream(result: Streamed, send: Send, id_header: tuple[bytes, bytes]) -> None:
    """Relay a stream chunk by chunk; always close it, even when this task is cancelled."""
    try:
        await send(_head(result.status, result.media_type, result.headers, id_header))
        async for chunk in result.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        # Shielded: a client that hung up cancels this task, and the close must still settle,
        # record and abort the upstream.
        await asyncio.shield(_close(result))


async def _close(result: Streamed) -> None:
    with contextlib.suppress(Exception):
        await result.close()


async def _send_error(
    send: Send,
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    id_header: tuple[bytes, bytes],
) -> None:
    raw: Headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        id_header,
        *headers,
    ]
    with contextlib.suppress(OSError):  # the client left; there is nobody to tell
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


def proxy_endpoints(max_body_bytes: int, body_timeout_s: float) -> dict[str, ProxyEndpoint]:
    """Path → endpoint app for every proxied route."""
    paths = {
        "/v1/chat/completions": Endpoint.CHAT,
        "/v1/fim/completions": Endpoint.FIM,
        "/v1/embeddings": Endpoint.EMBEDDINGS,
    }
    return {
        path: ProxyEndpoint(endpoint, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
        for path, endpoint in paths.items()
    }
