"""The upstream client contract, on both socket clients (pyreqwest, the default, and aiohttp),
against a tiny asyncio HTTP/1.1 server that scripts each answer and reports what it saw."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.config import Deployment, Timeouts
from gateway.errors import UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.client import UpstreamClient, UpstreamClientKind, make_client

KINDS: list[UpstreamClientKind] = ["pyreqwest", "aiohttp"]
CLOSE_BOUND_S = 2.0  # generous: an abort is seen within milliseconds

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Upstream:
    """Answers each request with `answer`; records request heads and connection closes."""

    answer: Answer | None = None
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # the client closed the connection
                self.heads.append(head)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
                assert self.answer is not None
                await self.answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()
            self.handlers.discard(task)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    yield up
    server.close()
    for task in list(up.handlers):  # answers still waiting on a client that never closed
        task.cancel()
    await asyncio.gather(*up.handlers, return_exceptions=True)


def client_for(kind: UpstreamClientKind, **timeouts: float) -> UpstreamClient:
    deployment = Deployment(
        name="d",
        provider="mistral",
        base_url="http://127.0.0.1:1",
        region="eu",
        jurisdiction="eu",
        models={"m": "m"},
        timeouts=Timeouts(**timeouts),
        max_connections=4,
    )
    return make_client(deployment, kind=kind)


@pytest.fixture(params=KINDS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    c = client_for(request.param)
    yield c
    await c.close()


HEADERS = {"user-agent": "llm-gateway", "accept-encoding": "identity"}


def fixed(status: str, headers: str, body: bytes) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            f"HTTP/1.1 {status}\r\n{headers}content-length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()

    return answer


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


async def until_closed(upstream: Upstream) -> None:
    await asyncio.wait_for(upstream.closed.wait(), CLOSE_BOUND_S)


async def test_a_redirect_is_returned_not_followed(upstream: Upstream, client: UpstreamClient):
    upstream.answer = fixed("302 Found", "location: /elsewhere\r\n", b"")
    response = await client.post(upstream.url, HEADERS, b"{}")
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"
    assert await response.read() == b""
    assert len(upstream.heads) == 1


async def test_sends_our_headers_only_and_relays_bytes_as_encoded(
    upstream: Upstream, client: UpstreamClient
):
    body = gzip.compress(b'{"ok": true}')
    upstream.answer = fixed("200 OK", "content-encoding: gzip\r\nset-cookie: a=b\r\n", body)
    for _ in range(2):
        response = await client.post(upstream.url, HEADERS, b"{}")
        assert await response.read() == body  # not decompressed
    head = upstream.heads[-1].lower()
    assert head.count(b"user-agent:") == 1 and b"user-agent: llm-gateway" in head
    assert head.count(b"accept-encoding:") == 1 and b"accept-encoding: identity" in head
    assert b"cookie:" not in head  # no jar: the first answer's cookie is not sent back
    assert upstream.connections == 1  # kept alive


@pytest.mark.parametrize("kind", KINDS)
async def test_proxy_environment_variables_are_ignored(
    upstream: Upstream, kind: UpstreamClientKind, monkeypatch: pytest.MonkeyPatch
):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    upstream.answer = fixed("200 OK", "", b"ok")
    client = client_for(kind)
    try:
        response = await client.post(upstream.url, HEADERS, b"{}")
        assert await response.read() == b"ok"
    finally:
        await client.close()


async def test_chunks_arrive_as_the_upstream_sends_them(upstream: Upstream, client: UpstreamClient):
    first_seen = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await first_seen.wait()  # nothing more until the client has relayed the first event
        writer.write(chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        await writer.drain()

    upstream.answer = answer
    response = await client.post(upstream.url, HEADERS, b"{}")
    assert response.status == 200
    received: list[bytes] = []
    async with asyncio.timeout(5):
        async for part in response.chunks():
            received.append(part)
            first_seen.set()
    await response.close()
    assert b"".join(received) == b"data: 1\n\ndata: 2\n\n"
    assert received[0] == b"data: 1\n\n"


async def test_close_mid_body_aborts_the_upstream_request(
    upstream: Upstream, client: UpstreamClient
):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()  # returns at EOF: the client closed the connection

    upstream.answer = answer
    response = await client.post(upstream.url, HEADERS, b"{}")
    async for _ in response.chunks():
        break
    await response.close()
    await until_closed(upstream)


async def test_read_with_a_limit_returns_at_most_the_limit(
    upstream: Upstream, client: UpstreamClient
):
    upstream.answer = fixed("500 Internal Server Error", "", b"x" * 200_000)
    async with asyncio.timeout(10):
        for _ in range(6):  # more than max_connections: each read released its connection
            response = await client.post(upstream.url, HEADERS, b"{}")
            body = await response.read(1000)
            assert 0 < len(body) <= 1000


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            "pyreqwest",
            marks=pytest.mark.xfail(
                strict=True,
                reason="pyreqwest 0.15 detaches the request's tokio task on cancellation: it "
                "runs on until the upstream answers or read_s expires",
            ),
        ),
        "aiohttp",
    ],
)
async def test_cancelling_before_the_headers_aborts_the_upstream_request(
    upstream: Upstream, kind: UpstreamClientKind
):
    received = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set()
        await reader.read()  # never answers; returns when the client closes

    upstream.answer = answer
    client = client_for(kind, read_s=30)
    try:
        task = asyncio.create_task(client.post(upstream.url, HEADERS, b"{}"))
        await asyncio.wait_for(received.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until_closed(upstream)
    finally:
        await client.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_no_headers_in_time_is_a_timeout(upstream: Upstream, kind: UpstreamClientKind):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    upstream.answer = answer
    client = client_for(kind, first_byte_s=0.2)
    try:
        with pytest.raises(UpstreamTimeout):
            await client.post(upstream.url, HEADERS, b"{}")
    finally:
        await client.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_silence_mid_body_is_an_interruption(upstream: Upstream, kind: UpstreamClientKind):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))
        await writer.drain()
        await reader.read()

    upstream.answer = answer
    client = client_for(kind, read_s=0.3)
    try:
        response = await client.post(upstream.url, HEADERS, b"{}")
        with pytest.raises(UpstreamInterrupted, match="went silent"):
            async for _ in response.chunks():
                pass
        await response.close()
    finally:
        await client.close()


async def test_a_body_cut_short_is_an_interruption(upstream: Upstream, client: UpstreamClient):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        writer.transport.abort()

    upstream.answer = answer
    response = await client.post(upstream.url, HEADERS, b"{}")
    with pytest.raises(UpstreamInterrupted):
        await response.read()


async def test_a_refused_connection_is_unavailable(client: UpstreamClient):
    with pytest.raises(UpstreamUnavailable):
        await client.post("http://127.0.0.1:1/v1/chat/completions", HEADERS, b"{}")
