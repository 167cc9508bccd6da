"""The server protocol's hang-up hook: called once when the client leaves mid-response, never
after the response is complete; a handler can always find its connection's slot in the scope.
And its one-write whole response: the same bytes uvicorn's `send` writes, in one write, with
the cycle completed as uvicorn completes it (keep-alive, pipelining, `connection: close`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.web.server_protocol import (
    BODY_COMPLETE,
    ON_DISCONNECT,
    WHOLE_RESPONSE,
    DeadlineHttpToolsProtocol,
    DisconnectSlot,
    header_block,
)

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        self.writes += 1

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _serve(answer: bool) -> tuple[list[str], DisconnectSlot | None]:
    """One request; its app sets the slot's hook, answers (or not), and the client leaves."""
    calls: list[str] = []
    slots: list[DisconnectSlot] = []
    released = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        slot = scope[ON_DISCONNECT]
        slots.append(slot)
        slot.hook = lambda: calls.append("hook")
        await receive()
        if answer:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        await released.wait()

    config = Config(app=app, lifespan="off", log_level="warning")
    protocol = DeadlineHttpToolsProtocol(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    for _ in range(5):  # let the app run up to its wait
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    protocol.connection_lost(None)  # a second report must not call it again
    released.set()
    for _ in range(5):
        await asyncio.sleep(0)
    return calls, slots[0] if slots else None


async def test_the_hook_is_called_once_when_the_client_leaves_before_the_answer() -> None:
    calls, slot = await _serve(answer=False)
    assert isinstance(slot, DisconnectSlot)
    assert calls == ["hook"]
    assert slot.hook is None


async def test_the_hook_is_not_called_once_the_answer_is_complete() -> None:
    calls, slot = await _serve(answer=True)
    assert isinstance(slot, DisconnectSlot)
    assert calls == []


HEADERS = [("content-type", "application/json"), ("x-request-id", "abc"), ("x-a", "1\t2")]


async def _answer(request: bytes, whole: bool) -> tuple[_Transport, DeadlineHttpToolsProtocol]:
    """Serve `request` (one or more pipelined) answering each with HEADERS and its path as the
    body: through `WHOLE_RESPONSE`, or as uvicorn's two ASGI messages."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        body = scope["path"].encode()
        if whole:
            assert scope[WHOLE_RESPONSE](200, header_block(HEADERS), body)
            return
        raw = [(k.encode(), v.encode()) for k, v in HEADERS]
        raw.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    config = Config(app=app, lifespan="off", log_level="warning", access_log=False)
    state = ServerState()
    state.default_headers = [(b"date", b"Thu, 03 Dec 2026 12:00:00 GMT"), (b"server", b"uvicorn")]
    protocol = DeadlineHttpToolsProtocol(config, state, {})
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(20):
        await asyncio.sleep(0)
    return transport, protocol


@pytest.mark.parametrize(
    "request_bytes",
    [
        REQUEST,
        REQUEST.replace(b"host: t", b"host: t\r\nconnection: close"),
        REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"),
        REQUEST + REQUEST.replace(b"completions", b"second"),  # pipelined: two cycles
    ],
    ids=["keep-alive", "connection-close", "http-1.0", "pipelined"],
)
async def test_a_whole_response_is_the_bytes_uvicorn_writes_in_one_write(
    request_bytes: bytes,
) -> None:
    ours, protocol = await _answer(request_bytes, whole=True)
    theirs, their_protocol = await _answer(request_bytes, whole=False)
    assert ours.written == theirs.written
    assert ours.writes == request_bytes.count(b"POST")  # one write per response
    assert theirs.writes == 2 * ours.writes
    assert ours.closing == theirs.closing
    assert protocol.server_state.total_requests == their_protocol.server_state.total_requests
    if not ours.closing:  # kept alive: the idle timer runs, as after uvicorn's own send
        assert protocol.timeout_keep_alive_task is not None
    protocol.connection_lost(None)
    their_protocol.connection_lost(None)


async def test_a_whole_response_declines_once_the_response_has_started() -> None:
    results: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        results.append(scope[WHOLE_RESPONSE](200, b"", b"late"))
        await send({"type": "http.response.body", "body": b""})

    config = Config(app=app, lifespan="off", access_log=False)
    protocol = DeadlineHttpToolsProtocol(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    for _ in range(10):
        await asyncio.sleep(0)
    assert results == [False]
    assert b"late" not in transport.written
    protocol.connection_lost(None)


@pytest.mark.parametrize(
    "headers",
    [[("x-a", "1\r\nx-injected: 1")], [("x-a", "nul\x00")], [("bad name", "1")], [("x:y", "1")]],
)
def test_header_block_refuses_what_uvicorn_refuses(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="invalid HTTP header"):
        header_block(headers)


def test_header_block_writes_name_value_lines() -> None:
    assert header_block([("a", "1"), ("b", "x\ty")]) == b"a: 1\r\nb: x\ty\r\n"


async def test_a_whole_response_wakes_a_task_waiting_on_receive() -> None:
    """As after uvicorn's `send`: a watcher waiting for the client to leave learns that the
    response is over (`http.disconnect`) instead of waiting forever."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        watcher = asyncio.create_task(receive())
        await asyncio.sleep(0)
        assert scope[WHOLE_RESPONSE](200, b"", b"ok")
        seen.append((await asyncio.wait_for(watcher, 1))["type"])

    config = Config(app=app, lifespan="off", access_log=False)
    protocol = DeadlineHttpToolsProtocol(config, ServerState(), {})
    protocol.connection_made(_Transport())
    protocol.data_received(REQUEST)
    for _ in range(10):
        await asyncio.sleep(0)
    assert seen == ["http.disconnect"]
    protocol.connection_lost(None)


async def test_a_body_that_came_with_its_head_is_marked_complete_one_still_coming_is_not() -> None:
    seen: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(bool(scope.get(BODY_COMPLETE)))
        await receive()

    config = Config(app=app, lifespan="off", access_log=False)
    for request, chunks in ((REQUEST, 1), (REQUEST, 2)):  # whole, then the body's last byte late
        protocol = DeadlineHttpToolsProtocol(config, ServerState(), {})
        protocol.connection_made(_Transport())
        protocol.data_received(request[:-1] if chunks == 2 else request)
        for _ in range(5):
            await asyncio.sleep(0)
        if chunks == 2:
            protocol.data_received(request[-1:])
        protocol.connection_lost(None)
    assert seen == [True, False]


async def _kept_alive(head_timeout_s: float) -> tuple[DeadlineHttpToolsProtocol, _Transport]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        assert scope[WHOLE_RESPONSE](200, b"", b"ok")

    config = Config(app=app, lifespan="off", access_log=False)
    protocol = DeadlineHttpToolsProtocol(config, ServerState(), {})
    protocol.head_timeout_s = head_timeout_s
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def test_a_head_left_unfinished_after_answers_is_cut_off_at_its_deadline() -> None:
    protocol, transport = await _kept_alive(head_timeout_s=0.2)
    for _ in range(2):  # served, then idle past the first deadline: still open
        protocol.data_received(REQUEST)
        await asyncio.sleep(0.15)
    assert not transport.closing
    protocol.data_received(REQUEST[:20])  # a head that never ends
    await asyncio.sleep(0.1)
    assert not transport.closing  # its own deadline (from its first byte) is not reached yet
    await asyncio.sleep(0.25)
    assert transport.closing
    protocol.connection_lost(None)
