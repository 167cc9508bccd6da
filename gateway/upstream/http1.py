"""A small HTTP/1.1 upstream client on asyncio + httptools (the C parser uvicorn uses).

Why it exists: CPU per request is the gateway's key metric and the upstream client was its
largest single cost; pyreqwest, the cheapest library, cannot abort a request cancelled before
its headers (see client.py). This client does only what the gateway needs (POST, keep-alive,
streaming, abort), with no task per request and no per-chunk work beyond the chunk itself.
Measured through each wrapper (uvloop, concurrency 32, 5,000 calls, three runs, client on one
core and loadtests/scenarios/upstream.py on the other; CPU of all the client's threads):

    ms CPU per call        http1        pyreqwest    aiohttp
    non-streamed POST      0.03-0.04    0.08-0.09    0.18-0.25
    stream, 18 events      0.04-0.07    0.21-0.25    0.27-0.36   (written at once)
    stream, 1 ms apart     0.25         0.46         0.63

Shape: `Http1Client` (one per deployment) keeps a `_Pool` per origin (in practice one: the
deployment's base URL). A `_Connection` is an asyncio protocol feeding httptools; it buffers
body chunks and wakes at most one waiting future. `Http1Response` is the caller's handle on
one exchange; it drops its connection reference when released, so a late `close()` can never
touch the connection's next exchange. Each connection has one timer, re-armed lazily: it fires
at the earliest time it was armed for and re-checks the current deadline (`first_byte_s`,
`read_s` of silence, `total_s`), so a steady stream costs no timer work per chunk.

Failure mode: connect failures and a connection lost (or garbled) before the headers become
`UpstreamUnavailable` (nothing was answered; retryable); no headers by `first_byte_s`
(queueing for a connection included), or `read_s` after the request was sent, `UpstreamTimeout`; a body that breaks, stalls past
`read_s` or runs past `total_s` `UpstreamInterrupted`. Every one of these aborts the connection.

Invariants: at most `max_connections` connections per origin, further callers queue FIFO;
a connection is pooled (LIFO) only after a complete response that allows keep-alive; an idle
connection the peer closed leaves the pool at once; cancelling `post()` or closing a response
whose body is unread aborts the transport, so the upstream sees the close within milliseconds.
Redirects are never followed and bodies are relayed as decoded from the transfer encoding
only (no decompression).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from functools import partial
from math import inf
from urllib.parse import urlsplit

import httptools

from gateway.config import Deployment, Timeouts
from gateway.errors import UpstreamError, UpstreamInterrupted, UpstreamTimeout, UpstreamUnavailable

HIGH_WATER_BYTES = 1024 * 1024  # unread body buffered before reading from the socket pauses
TIMER_SLACK_S = 0.001  # loops may fire a timer up to a clock tick early
_MAX_CACHED_TARGETS = 64

# Exchange states of a connection.
_IDLE, _HEAD, _BODY, _DONE, _BROKEN = range(5)


class _Headers(dict[str, str]):
    """Response headers under lower-cased names, looked up case-insensitively."""

    __slots__ = ()

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, parses its response into a chunk buffer."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.state = _IDLE
        self.status = 0
        self.headers = _Headers()
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.error: UpstreamError | None = None
        self.keep_alive = False
        self._until_eof = False  # the body ends when the connection does
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._holds_slot = True
        self._head_due = self._total_due = self._last_data_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = inf
        self._lost: asyncio.Future[None] | None = None

    # --- the exchange, driven by Http1Client and Http1Response ---------------------------------

    async def exchange(self, head: bytes, body: bytes, head_due: float) -> None:
        """Send one request; return once its status and headers are in."""
        transport = self.transport
        assert transport is not None
        self.state = _HEAD
        now = self.loop.time()
        timeouts = self.pool.timeouts
        # Silence before the headers is silence too: read_s bounds it, as in aiohttp and reqwest.
        head_due = min(head_due, now + timeouts.read_s)
        self._head_due = head_due
        self._total_due = now + timeouts.total_s
        if len(body) < 65536:  # one send; a big body is not worth copying
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        self._arm(head_due)
        waiter = self._waiter = self.loop.create_future()
        try:
            await waiter
        except BaseException:  # cancelled: the caller left, so the upstream must stop now
            self.abort()
            raise
        if self.error is not None:
            raise self.error

    def take(self) -> bytes:
        """All buffered body bytes (b"" when none), resuming the socket if it was paused."""
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def wait_body(self) -> None:
        """Wait for more body bytes or the end; raise the error that broke the body."""
        if self.state == _BODY:
            waiter = self._waiter = self.loop.create_future()
            await waiter
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """The caller is done: pool the connection if its exchange ended cleanly, else abort."""
        transport = self.transport
        if self.state != _DONE or transport is None:
            self.abort()
        elif self.keep_alive and not transport.is_closing() and not self.pool.closed:
            self.state = _IDLE  # the next response gets fresh headers in on_message_begin
            self.pool.put(self)
        else:
            self.state = _BROKEN
            transport.close()  # the body was read whole: a graceful close
            self._free_slot()

    def abort(self) -> None:
        """Drop the connection at once (the peer sees it close) and free its pool slot."""
        self.state = _BROKEN
        if self.transport is not None:
            self.transport.abort()
        self._free_slot()

    def usable(self) -> bool:
        """Whether this idle connection can carry a request (the peer has not closed it)."""
        transport = self.transport
        return self.state == _IDLE and transport is not None and not transport.is_closing()

    async def closed(self) -> None:
        """Wait until the transport has closed."""
        if self.transport is not None:
            if self._lost is None:
                self._lost = self.loop.create_future()
            await self._lost

    # --- asyncio protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state != _HEAD and state != _BODY:
            if state != _BROKEN:  # bytes nobody asked for: this connection is out of step
                self.keep_alive = False
                if state == _IDLE:
                    self.pool.discard(self)
                    self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.state == _DONE:  # junk after a complete response: keep it, never reuse
                self.keep_alive = False
            else:
                self._break(self._garbled())
                return
        if self.state == _HEAD:
            return
        self._last_data_s = self.loop.time()
        if self.buffered > HIGH_WATER_BYTES and not self._paused and self.state == _BODY:
            self._paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost settles the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        if state == _IDLE:  # the peer closed an idle connection: it must never be handed out
            self.state = _BROKEN
            self.pool.discard(self)
        elif state == _HEAD:
            self._break(self._failure(UpstreamUnavailable, "closed the connection unanswered"))
        elif state == _BODY:
            if self._until_eof:
                self.state = _DONE
                self.keep_alive = False
                self._wake()
            else:
                self._break(self._failure(UpstreamInterrupted, "broke off its response"))
        self.transport = None
        self._free_slot()
        self._cancel_timer()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state != _HEAD:
            raise ValueError("a second response")  # httptools turns this into a parser error
        self.headers = _Headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        previous = dict.get(headers, key)
        headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            return  # informational (103 Early Hints): the real response follows
        self.status = status
        self.state = _BODY
        headers = self.headers
        self._until_eof = (
            "content-length" not in headers
            and "transfer-encoding" not in headers
            and status not in (204, 304)
        )
        self._arm(min(self._total_due, self.loop.time() + self.pool.timeouts.read_s))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.state == _HEAD:
            return  # the end of an informational response
        self.state = _DONE
        self.keep_alive = self.parser.should_keep_alive()  # only valid inside the callback
        # The timer stays armed: it fires once, finds nothing due, and is not re-armed; the
        # next exchange's later deadline then needs no new timer (one per connection, lazily).

    # --- internals -----------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _break(self, error: UpstreamError) -> None:
        if self.state == _BROKEN:
            return
        self.error = error
        self.abort()
        self._wake()

    def _failure(self, kind: type[UpstreamError], what: str) -> UpstreamError:
        name = self.pool.deployment
        return kind(f"The upstream `{name}` {what}.", deployment=name)

    def _garbled(self) -> UpstreamError:
        if self.state == _HEAD:
            return self._failure(UpstreamUnavailable, "sent an unreadable response")
        return self._failure(UpstreamInterrupted, "broke off its response: unreadable body")

    def _free_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.pool.slot_freed()

    def _arm(self, due: float) -> None:
        if due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(due, self._on_timer)
            self._timer_at = due

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = inf

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = inf
        now = self.loop.time() + TIMER_SLACK_S
        if self.state == _HEAD:
            if now >= self._head_due:
                self._break(self._failure(UpstreamTimeout, "did not answer in time"))
                return
            self._arm(self._head_due)
        elif self.state == _BODY:
            if now >= self._total_due:
                self._break(self._failure(UpstreamInterrupted, "ran past its time limit"))
                return
            due = self._total_due
            if not self._paused:  # while we hold the reading back, silence is ours
                silent_due = self._last_data_s + self.pool.timeouts.read_s
                if now >= silent_due:
                    self._break(self._failure(UpstreamInterrupted, "went silent mid-response"))
                    return
                due = min(due, silent_due)
            self._arm(due)


class _Pool:
    """Connections to one origin: idle ones reused LIFO, at most `limit` open, waiters FIFO."""

    def __init__(
        self,
        deployment: str,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        timeouts: Timeouts,
        limit: int,
    ) -> None:
        self.deployment = deployment
        self.loop = asyncio.get_running_loop()
        self.timeouts = timeouts
        self.closed = False
        self._host, self._port, self._ssl = host, port, ssl_context
        self._limit = limit
        self._open = 0
        self._idle: list[_Connection] = []
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def take_idle(self) -> _Connection | None:
        """The most recently used live idle connection, if any."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.abort()
        return None

    async def acquire(self, due: float) -> _Connection:
        """A live connection: idle, new (when under the limit) or handed over by a release."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        if self.closed:
            raise self._failure(UpstreamUnavailable, "client is closed")
        if self._open < self._limit:
            self._open += 1
            return await self._connect(due)
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_at(due, self._expire, waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed something as we left
                self._pass_on(waiter.result())
            raise
        finally:
            timer.cancel()
        if conn is None:  # a slot was passed to us
            return await self._connect(due)
        if not conn.usable():  # it died on its way to us (and freed its slot)
            return await self.acquire(due)
        return conn

    def put(self, conn: _Connection) -> None:
        """Take back a connection whose exchange ended cleanly."""
        if not self._hand_to_waiter(conn):
            self._idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        """Forget an idle connection the peer closed."""
        if conn in self._idle:
            self._idle.remove(conn)

    def slot_freed(self) -> None:
        """A connection closed: its slot passes to the first waiter, if any."""
        if not self._hand_to_waiter(None):
            self._open -= 1

    def _hand_to_waiter(self, conn: _Connection | None) -> bool:
        """Give `conn` (or a free slot, None) to the first caller still waiting."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    async def close(self) -> None:
        """Close idle connections now, the others when released; fail queued callers."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self._failure(UpstreamUnavailable, "client is closed"))
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()
        await asyncio.gather(*(c.closed() for c in idle))

    def _pass_on(self, conn: _Connection | None) -> None:
        if conn is None:
            self.slot_freed()
        elif conn.usable():
            self.put(conn)

    def _expire(self, waiter: asyncio.Future[_Connection | None]) -> None:
        if not waiter.done():
            waiter.set_exception(self._failure(UpstreamTimeout, "did not answer in time"))

    async def _connect(self, due: float) -> _Connection:
        loop = self.loop
        connect_due = loop.time() + self.timeouts.connect_s
        try:
            async with asyncio.timeout_at(min(due, connect_due)):
                _, conn = await loop.create_connection(
                    partial(_Connection, self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except BaseException as exc:
            self.slot_freed()
            if isinstance(exc, TimeoutError):  # before OSError: it is one
                if due <= connect_due:
                    raise self._failure(UpstreamTimeout, "did not answer in time") from None
                raise self._failure(UpstreamUnavailable, "did not accept a connection") from None
            if isinstance(exc, OSError):  # refused, unreachable, DNS, TLS
                raise self._failure(
                    UpstreamUnavailable, f"could not be reached: {type(exc).__name__}"
                ) from None
            raise
        return conn

    def _failure(self, kind: type[UpstreamError], what: str) -> UpstreamError:
        return kind(f"The upstream `{self.deployment}` {what}.", deployment=self.deployment)


class Http1Response:
    """One response whose status and headers are in; the body is read or streamed once."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body (at most `limit` bytes), then the connection is released."""
        conn = self._conn
        if conn is None:
            return b""
        cap = inf if limit is None else limit
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                if data := conn.take():  # taking as it comes keeps flow control out of the way
                    parts.append(data)
                    size += len(data)
                if conn.state != _BODY or size >= cap:
                    break
                await conn.wait_body()
            if conn.error is not None:
                raise conn.error
        finally:
            self._release()
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        return body if limit is None else body[:limit]

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive (what is buffered is joined into one)."""
        conn = self._conn
        if conn is None:
            return
        while True:
            chunk = conn.take()
            if chunk:
                yield chunk
            elif conn.state == _DONE:
                break
            else:
                await conn.wait_body()
        self._release()

    async def close(self) -> None:
        """Release the connection, aborting the upstream request if the body is unread."""
        self._release()

    def _release(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finish()


class Http1Client:
    """POSTs over pooled HTTP/1.1 connections for one deployment (see the module docstring)."""

    def __init__(self, deployment: Deployment, ssl_context: ssl.SSLContext | None = None) -> None:
        self._name = deployment.name
        self._timeouts = deployment.timeouts
        self._limit = deployment.max_connections
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._targets: dict[str, tuple[_Pool, bytes]] = {}
        self._closed = False

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Http1Response:
        """Send the request and return once the status line and headers are in."""
        target = self._targets.get(url) or self._target(url)
        pool, start = target
        head = b"%scontent-length: %d\r\n%s\r\n" % (start, len(body), _header_lines(headers))
        due = pool.loop.time() + self._timeouts.first_byte_s
        conn = pool.take_idle() or await pool.acquire(due)
        await conn.exchange(head, body, due)
        return Http1Response(conn)

    async def close(self) -> None:
        """Close the pools: idle connections now, busy ones when their response is released."""
        self._closed = True
        await asyncio.gather(*(pool.close() for pool in self._pools.values()))

    def _target(self, url: str) -> tuple[_Pool, bytes]:
        """The pool and request-line bytes for `url` (cached: a deployment has few URLs)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        host = parts.hostname
        port = parts.port or (443 if tls else 80)
        origin = (parts.scheme, host, port)
        pool = self._pools.get(origin)
        if pool is None:
            if self._closed:
                raise UpstreamUnavailable(
                    f"The upstream `{self._name}` client is closed.", deployment=self._name
                )
            context = None
            if tls:
                context = self._ssl or _default_tls_context()
            pool = _Pool(self._name, host, port, context, self._timeouts, self._limit)
            self._pools[origin] = pool
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != (443 if tls else 80):
            authority += f":{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        start = f"POST {path} HTTP/1.1\r\nhost: {authority}\r\n".encode("ascii")
        if len(self._targets) < _MAX_CACHED_TARGETS:
            self._targets[url] = (pool, start)
        return pool, start


def _header_lines(headers: Mapping[str, str]) -> bytes:
    """`name: value\r\n` for each header, refusing line breaks (no header injection)."""
    if not headers:
        return b""
    text = "\r\n".join(map(": ".join, headers.items()))  # joins in C: cheaper than f-strings
    breaks = len(headers) - 1
    if text.count("\n") != breaks or text.count("\r") != breaks:
        raise ValueError("a request header holds a line break")
    return text.encode("latin-1") + b"\r\n"


def _default_tls_context() -> ssl.SSLContext:
    """Verified TLS (system CAs, hostname checked), offering HTTP/1.1 only by ALPN."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context
