"""The upstream HTTP client: one long-lived, pooled client per deployment, behind one interface.

Four implementations, chosen by measurement (shared/ARCHITECTURE.md, the forward step) and by
`Settings.upstream_client`:
- `Http1Client` (gateway/upstream/http1.py), the default: our own HTTP/1.1 client on asyncio +
  httptools. It is the cheapest in CPU per request (numbers in its module docstring) and, unlike
  pyreqwest, aborts a request cancelled before its headers.
- `AiohttpClient` (`GATEWAY_UPSTREAM_CLIENT=aiohttp`): ~0.25 ms of CPU per request under
  concurrency on these machines, against ~2.8 ms for httpx's default transport.
- `PyreqwestClient` (`GATEWAY_UPSTREAM_CLIENT=pyreqwest`): Rust's reqwest, on its own tokio
  thread, does the HTTP work. A raw ASGI pass-through costs 0.24 ms CPU/request with it against
  0.47 ms with aiohttp. It is not the default because of the abort gap described below.
- `HttpxClient`, used when a test or embedder injects an `httpx` transport (`MockTransport`,
  `ASGITransport`), so in-process tests need no socket.

Failure mode: foreign exceptions never leave this module. Connection failures become
`UpstreamUnavailable` (502, retryable: nothing was sent), timeouts before the response
`UpstreamTimeout` (504), and a body that breaks after the status line `UpstreamInterrupted`.
Redirects are never followed: an upstream can only ever be the configured URL. Bodies are relayed
as received (no decompression), and no cookie jar or environment proxy is used.

Closing a response whose body is unread aborts the upstream request (its connection closes), and
so does cancelling a `post()` still waiting for the headers, except with pyreqwest (0.15): it
detaches the Rust task (drops its tokio JoinHandle without aborting it), so the request runs on
until the upstream answers or `read_s`/`total_s` expires, holding one of `max_connections` and
the upstream's capacity for a client that left. The same holds after a `first_byte_s` timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Literal, Protocol

import aiohttp
import httpx
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from gateway.config import Deployment
from gateway.errors import UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.http1 import Http1Client

ERROR_BODY_LIMIT_BYTES = 64 * 1024

UpstreamClientKind = Literal["http1", "pyreqwest", "aiohttp"]


class UpstreamResponse(Protocol):
    """A response whose status and headers have arrived; the body is read or streamed once."""

    status: int
    headers: Mapping[str, str]  # case-insensitive

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (at most `limit` bytes when given), then the connection is released."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive."""
        ...

    async def close(self) -> None:
        """Release the connection (aborting the upstream request if the body is unread)."""
        ...


class UpstreamClient(Protocol):
    """POSTs to one deployment over a pooled connection."""

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> UpstreamResponse:
        """Send the request and return once the status line and headers are in."""
        ...

    async def close(self) -> None:
        """Close the pool."""
        ...


# --- pyreqwest ---------------------------------------------------------------------------------

# PyreqwestError is the root of pyreqwest's tree; its timeouts also derive from TimeoutError,
# which is what `asyncio.timeout` raises for the first-byte deadline.


@contextmanager
def pyreqwest_errors_before_response(deployment: str) -> Iterator[None]:
    """Translate pyreqwest failures that happen before a response exists."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout(
            f"The upstream `{deployment}` did not answer in time.", deployment=deployment
        ) from None
    except PyreqwestError as exc:
        raise UpstreamUnavailable(
            f"Could not reach the upstream `{deployment}`: {type(exc).__name__}.",
            deployment=deployment,
        ) from None


@contextmanager
def pyreqwest_errors_in_body(deployment: str) -> Iterator[None]:
    """Translate pyreqwest failures while the body is being read."""
    try:
        yield
    except TimeoutError:
        raise UpstreamInterrupted(
            f"The upstream `{deployment}` went silent mid-response.", deployment=deployment
        ) from None
    except PyreqwestError as exc:
        raise UpstreamInterrupted(
            f"The upstream `{deployment}` broke off its response: {type(exc).__name__}.",
            deployment=deployment,
        ) from None


class _PyreqwestResponse:
    __slots__ = ("_deployment", "_open", "_reader", "_request", "headers", "status")

    def __init__(self, request: StreamRequest, response: Response, deployment: str) -> None:
        self._request = request  # leaving its context releases the connection, or aborts it
        self._reader = response.body_reader
        self._deployment = deployment
        self._open = True
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers  # a case-insensitive multi-value map

    async def read(self, limit: int | None = None) -> bytes:
        try:
            with pyreqwest_errors_in_body(self._deployment):
                if limit is None:
                    return (await self._reader.bytes()).to_bytes()
                body = await self._reader.read(limit)  # waits for `limit` bytes or the end
                return b"" if body is None else body.to_bytes()
        finally:
            await self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._reader
        with pyreqwest_errors_in_body(self._deployment):
            while (chunk := await reader.read_chunk()) is not None:
                yield chunk.to_bytes()

    async def close(self) -> None:
        if self._open:  # pyreqwest refuses a second exit
            self._open = False
            await self._request.__aexit__(None, None, None)


class PyreqwestClient:
    """A reqwest client with a keep-alive pool for one deployment (see the module docstring)."""

    def __init__(self, deployment: Deployment) -> None:
        timeouts = deployment.timeouts
        self._name = deployment.name
        self._first_byte_s = timeouts.first_byte_s
        self._client: Client = (
            ClientBuilder()
            .max_connections(deployment.max_connections)  # requests in flight; others wait
            .pool_max_idle_per_host(deployment.max_connections)
            .connect_timeout(timedelta(seconds=timeouts.connect_s))
            .read_timeout(timedelta(seconds=timeouts.read_s))  # per read: the longest silence
            .timeout(timedelta(seconds=timeouts.total_s))
            .follow_redirects(False)
            .referer(False)
            .gzip(False)  # off, so reqwest neither decompresses nor sends its accept-encoding
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .default_cookie_store(False)
            .no_proxy()  # reqwest reads HTTP(S)_PROXY by default; targets come from config only
            .build()  # its own user-agent goes out only if the caller sends none (ours always does)
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> UpstreamResponse:
        # A zero read buffer: by default pyreqwest reads up to 64 KiB of body before returning
        # the response, which holds back a stream's headers and first events.
        request = (
            self._client.post(url)
            .headers(headers)
            .body_bytes(body)
            .streamed_read_buffer_limit(0)
            .build_streamed()
        )
        with pyreqwest_errors_before_response(self._name):
            async with asyncio.timeout(self._first_byte_s):
                response = await request.__aenter__()
        return _PyreqwestResponse(request, response, self._name)

    async def close(self) -> None:
        await self._client.close()


# --- aiohttp -----------------------------------------------------------------------------------

_AIOHTTP_TIMEOUTS = (asyncio.TimeoutError, aiohttp.ServerTimeoutError)
# Every aiohttp error derives from ClientError; OSError covers the socket layer below it.
_AIOHTTP_FAILURES = (aiohttp.ClientError, OSError)


@contextmanager
def aiohttp_errors_before_response(deployment: str) -> Iterator[None]:
    """Translate aiohttp failures that happen before a response exists."""
    try:
        yield
    except _AIOHTTP_TIMEOUTS:
        raise UpstreamTimeout(
            f"The upstream `{deployment}` did not answer in time.", deployment=deployment
        ) from None
    except _AIOHTTP_FAILURES as exc:
        raise UpstreamUnavailable(
            f"Could not reach the upstream `{deployment}`: {type(exc).__name__}.",
            deployment=deployment,
        ) from None


@contextmanager
def aiohttp_errors_in_body(deployment: str) -> Iterator[None]:
    """Translate aiohttp failures while the body is being read."""
    try:
        yield
    except _AIOHTTP_TIMEOUTS:
        raise UpstreamInterrupted(
            f"The upstream `{deployment}` went silent mid-response.", deployment=deployment
        ) from None
    except _AIOHTTP_FAILURES as exc:
        raise UpstreamInterrupted(
            f"The upstream `{deployment}` broke off its response: {type(exc).__name__}.",
            deployment=deployment,
        ) from None


class _AiohttpResponse:
    __slots__ = ("_deployment", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, deployment: str) -> None:
        self._response = response
        self._deployment = deployment
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self, limit: int | None = None) -> bytes:
        try:
            with aiohttp_errors_in_body(self._deployment):
                if limit is None:
                    return await self._response.read()
                return await self._response.content.read(limit)
        finally:
            self._response.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        with aiohttp_errors_in_body(self._deployment):
            async for chunk in self._response.content.iter_any():
                yield chunk

    async def close(self) -> None:
        self._response.close()


class AiohttpClient:
    """The default client: an aiohttp session with a keep-alive pool for one deployment."""

    def __init__(self, deployment: Deployment) -> None:
        timeouts = deployment.timeouts
        self._name = deployment.name
        self._first_byte_s = timeouts.first_byte_s
        self._timeout = aiohttp.ClientTimeout(
            total=timeouts.total_s, sock_connect=timeouts.connect_s, sock_read=timeouts.read_s
        )
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=deployment.max_connections, ttl_dns_cache=300),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> UpstreamResponse:
        with aiohttp_errors_before_response(self._name):
            async with asyncio.timeout(self._first_byte_s):
                response = await self._session.post(
                    url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
                )
        return _AiohttpResponse(response, self._name)

    async def close(self) -> None:
        await self._session.close()


# --- httpx -------------------------------------------------------------------------------------


@contextmanager
def httpx_errors_before_response(deployment: str) -> Iterator[None]:
    """Translate httpx failures that happen before a response exists."""
    try:
        yield
    except httpx.TimeoutException:
        raise UpstreamTimeout(
            f"The upstream `{deployment}` did not answer in time.", deployment=deployment
        ) from None
    except (httpx.HTTPError, httpx.StreamError) as exc:  # the roots of httpx's error tree
        raise UpstreamUnavailable(
            f"Could not reach the upstream `{deployment}`: {type(exc).__name__}.",
            deployment=deployment,
        ) from None


@contextmanager
def httpx_errors_in_body(deployment: str) -> Iterator[None]:
    """Translate httpx failures while the body is being read."""
    try:
        yield
    except httpx.TimeoutException:
        raise UpstreamInterrupted(
            f"The upstream `{deployment}` went silent mid-response.", deployment=deployment
        ) from None
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise UpstreamInterrupted(
            f"The upstream `{deployment}` broke off its response: {type(exc).__name__}.",
            deployment=deployment,
        ) from None


class _HttpxResponse:
    __slots__ = ("_deployment", "_response", "headers", "status")

    def __init__(self, response: httpx.Response, deployment: str) -> None:
        self._response = response
        self._deployment = deployment
        self.status = response.status_code
        self.headers: Mapping[str, str] = response.headers

    async def read(self, limit: int | None = None) -> bytes:
        parts: list[bytes] = []
        size = 0
        try:
            with httpx_errors_in_body(self._deployment):
                async for chunk in self._response.aiter_raw():
                    parts.append(chunk)
                    size += len(chunk)
                    if limit is not None and size >= limit:
                        break
        finally:
            await self._response.aclose()
        body = b"".join(parts)
        return body if limit is None else body[:limit]

    async def chunks(self) -> AsyncIterator[bytes]:
        with httpx_errors_in_body(self._deployment):
            async for chunk in self._response.aiter_raw():
                yield chunk

    async def close(self) -> None:
        await self._response.aclose()


class HttpxClient:
    """httpx over an injected transport (tests, embedding); same contract as AiohttpClient."""

    def __init__(self, deployment: Deployment, transport: httpx.AsyncBaseTransport) -> None:
        timeouts = deployment.timeouts
        self._name = deployment.name
        self._first_byte_s = timeouts.first_byte_s
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=timeouts.connect_s, read=timeouts.read_s, write=timeouts.read_s, pool=None
            ),
        )

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> UpstreamResponse:
        request = self._client.build_request("POST", url, headers=headers, content=body)
        with httpx_errors_before_response(self._name):
            try:
                async with asyncio.timeout(self._first_byte_s):
                    response = await self._client.send(request, stream=True)
            except TimeoutError:
                raise httpx.ReadTimeout("no response headers in time", request=request) from None
        return _HttpxResponse(response, self._name)

    async def close(self) -> None:
        await self._client.aclose()


def make_client(
    deployment: Deployment,
    transport: httpx.AsyncBaseTransport | None = None,
    kind: UpstreamClientKind = "aiohttp",
) -> UpstreamClient:
    """The client for one deployment: `kind`, unless an httpx transport is injected."""
    if transport is not None:
        return HttpxClient(deployment, transport)
    if kind == "http1":
        return Http1Client(deployment)
    if kind == "pyreqwest":
        return PyreqwestClient(deployment)
    return AiohttpClient(deployment)
