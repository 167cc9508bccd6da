"""The upstream client contract, on every socket client (http1, the default, pyreqwest and
aiohttp), against a tiny asyncio HTTP/1.1 server that scripts each answer and reports what it
saw; then http1's own cases (TLS, the pool's bookkeeping)."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import Deployment, Timeouts
from gateway.errors import UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.client import UpstreamClient, UpstreamClientKind, make_client
from gateway.upstream.http1 import Http1Client

KINDS: list[UpstreamClientKind] = ["http1", "pyreqwest", "aiohttp"]
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


def deployment_for(max_connections: int = 4, **timeouts: float) -> Deployment:
    return Deployment(
        name="d",
        provider="mistral",
        base_url="http://127.0.0.1:1",
        region="eu",
        jurisdiction="eu",
        models={"m": "m"},
        timeouts=Timeouts(**timeouts),
        max_connections=max_connections,
    )


def client_for(
    kind: UpstreamClientKind, max_connections: int = 4, **timeouts: float
) -> UpstreamClient:
    return make_client(deployment_for(max_connections, **timeouts), kind=kind)


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
        "http1",
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


async def test_a_chunked_body_is_read_whole_and_the_connection_kept(
    upstream: Upstream, client: UpstreamClient
):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"ab") + chunk(b"c") + b"0\r\n\r\n")
        await writer.drain()

    upstream.answer = answer
    for _ in range(3):
        response = await client.post(upstream.url, HEADERS, b"{}")
        assert await response.read() == b"abc"
    assert upstream.connections == 1


async def test_a_connection_close_answer_is_not_reused(upstream: Upstream, client: UpstreamClient):
    upstream.answer = fixed("200 OK", "connection: close\r\n", b"ok")
    for _ in range(2):
        response = await client.post(upstream.url, HEADERS, b"{}")
        assert await response.read() == b"ok"
    assert upstream.connections == 2


async def test_an_idle_connection_the_upstream_closed_is_not_handed_out(
    upstream: Upstream, client: UpstreamClient
):
    async def answer_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await fixed("200 OK", "", b"ok")(reader, writer)
        writer.close()  # a keep-alive timeout on the upstream's side, after the answer

    upstream.answer = answer_then_hang_up
    response = await client.post(upstream.url, HEADERS, b"{}")
    assert await response.read() == b"ok"
    await until_closed(upstream)
    await asyncio.sleep(0.05)  # the close reaches the client while its connection is idle
    upstream.answer = fixed("200 OK", "", b"again")
    response = await client.post(upstream.url, HEADERS, b"{}")
    assert await response.read() == b"again"
    assert upstream.connections == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_callers_beyond_max_connections_wait_for_a_free_one(
    upstream: Upstream, kind: UpstreamClientKind
):
    go = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        await fixed("200 OK", "", b"ok")(reader, writer)

    upstream.answer = answer
    client = client_for(kind, max_connections=2)

    async def call() -> bytes:
        response = await client.post(upstream.url, HEADERS, b"{}")
        return await response.read()

    try:
        calls = [asyncio.create_task(call()) for _ in range(5)]
        async with asyncio.timeout(5):
            while len(upstream.heads) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert (len(upstream.heads), upstream.connections) == (2, 2)  # the others queue
        go.set()
        async with asyncio.timeout(5):
            assert await asyncio.gather(*calls) == [b"ok"] * 5
        assert upstream.connections == 2
    finally:
        await client.close()


async def test_a_large_body_arrives_whole(upstream: Upstream, client: UpstreamClient):
    body = bytes(range(256)) * 12_000  # ~3 MiB: past the flow-control high-water mark
    upstream.answer = fixed("200 OK", "", body)
    response = await client.post(upstream.url, HEADERS, b"{}")
    assert await response.read() == body
    response = await client.post(upstream.url, HEADERS, b"{}")
    received = bytearray()
    async for part in response.chunks():
        received += part
        await asyncio.sleep(0)  # a consumer slower than the socket
    assert received == body
    assert upstream.connections == 1


# --- http1 only --------------------------------------------------------------------------------


async def test_http1_queued_callers_time_out_at_first_byte(upstream: Upstream):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(STREAM_HEAD + chunk(b"data: 1\n\n"))  # a stream that holds on
        await writer.drain()
        await reader.read()

    upstream.answer = answer
    client = Http1Client(deployment_for(max_connections=1, first_byte_s=0.3))
    try:
        streaming = await client.post(upstream.url, HEADERS, b"{}")
        with pytest.raises(UpstreamTimeout):
            await client.post(upstream.url, HEADERS, b"{}")  # queued for the one connection
        assert len(upstream.heads) == 1
        await streaming.close()
        await until_closed(upstream)
    finally:
        await client.close()


async def test_http1_refuses_header_injection(upstream: Upstream):
    client = Http1Client(deployment_for())
    try:
        with pytest.raises(ValueError, match="line break"):
            await client.post(upstream.url, {"x-request-id": "a\r\nhost: evil"}, b"{}")
    finally:
        await client.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_http1_speaks_verified_tls(certificate: tuple[Path, Path]):
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    up = Upstream(answer=fixed("200 OK", "", b"secret"))
    server = await asyncio.start_server(up.handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    trusting = ssl.create_default_context(cafile=str(cert))
    client = Http1Client(deployment_for(), ssl_context=trusting)
    default = Http1Client(deployment_for())  # system CAs: our self-signed certificate fails
    try:
        for _ in range(2):
            response = await client.post(url, HEADERS, b"{}")
            assert await response.read() == b"secret"
        assert up.connections == 1
        assert b"host: 127.0.0.1:%d" % port in up.heads[0]
        with pytest.raises(UpstreamUnavailable, match="SSL"):
            await default.post(url, HEADERS, b"{}")
    finally:
        await client.close()
        await default.close()
        server.close()
        for task in list(up.handlers):
            task.cancel()
        await asyncio.gather(*up.handlers, return_exceptions=True)
