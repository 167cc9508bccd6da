"""`RedisBatcher`: the hot path's Redis commands, pipelined on one connection of its own.

Concept: redis-py spends far more CPU per command on its own plumbing (pool checkout, locks,
retry wrappers, `asyncio.wait_for` per read, a task per write, per-command response
callbacks) than on the command's bytes: 0.13 ms of the gateway's 0.4 ms per request went
there even with one pipeline per event-loop turn. The four commands a request sends (EVALSHA
reserve, EVALSHA settle, XADD, HINCRBY) need none of it, so they go over one plain asyncio
connection: each command is packed by hiredis as it is queued, each turn's queue is ONE
`write`, and replies are parsed by hiredis's C reader as they arrive and handed, in order, to
the callers' futures (Redis answers a connection's commands in the order sent). Nothing waits
for a batch to fill: the write is scheduled for the end of the current turn, so a lone request
costs one round trip. Each command keeps its own result (a reply or its own `ResponseError`,
`NoScriptError` for a script Redis lost).

The connection is opened as the redis-py client given would open one (its URL's host and port
or Unix socket, TLS settings, username and password or credential provider, database), lazily
on the first command and again after it is lost. Standalone Redis only: a Cluster client
splits work by slot, and keeps its own per-command calls.

Failure mode: every written batch is due within the client's `socket_timeout`; when the oldest
unanswered batch is late, every command still waiting fails with `TimeoutError` and the
connection is dropped (its late replies would otherwise be handed to the next callers). A lost
connection, a refused connect or a failed AUTH fails the commands waiting on it with
`ConnectionError`. Nothing is retried here: a command that may have run is not sent twice (a
reserve taken twice would be a limit broken); callers decide (the limiter answers
`LimiterUnavailable`, the journal spools). A caller that is cancelled (its client left) only
stops waiting: its command still runs with the batch.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_TIMEOUT_S = 5.0
_INCOMPLETE = object()  # hiredis: no whole reply buffered yet


class RedisBatcher:
    """Queue commands; write each event-loop turn's queue as one pipelined batch."""

    def __init__(self, redis: Redis, *, max_batch: int = 512) -> None:
        pool = redis.connection_pool
        self._endpoint = _Endpoint(pool.connection_class, pool.connection_kwargs)
        self._max_batch = max_batch
        self._queue: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._waiting: list[tuple[bytes, asyncio.Future[Any]]] = []  # for a connection
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def bound_s(self) -> float:
        """The longest a command can wait for its answer before it fails by itself: a connect
        (handshake included) within the connect timeout, then its batch due within the read
        timeout."""
        return self._endpoint.connect_timeout_s + self._endpoint.timeout_s

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Queue one command (e.g. `"EVALSHA", sha, 1, key, arg`); the future gets its reply
        or its exception once the batch it joined has been answered."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_exception(RedisConnectionError("the Redis batcher is closed"))
            return future
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((hiredis.pack_command(command), future))
        if len(self._queue) >= self._max_batch:
            self._flush()
        return future

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        connection = self._connection
        if connection is not None and connection.open:
            connection.send(batch)
            return
        self._waiting += batch
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(), name="redis.batch.connect"
            )

    async def _connect(self) -> None:
        try:
            connection = await self._endpoint.connect()
        except Exception as exc:
            failure = exc if isinstance(exc, RedisConnectionError | RedisTimeoutError) else None
            _fail(self._waiting, failure or RedisConnectionError(f"connect failed: {exc!r}"))
            self._waiting = []
            return
        finally:
            self._connecting = None
        if self._closed:
            connection.close()
            _fail(self._waiting, RedisConnectionError("the Redis batcher is closed"))
            self._waiting = []
            return
        self._connection = connection
        waiting, self._waiting = self._waiting, []
        if waiting:
            connection.send(waiting)

    async def drain(self) -> None:
        """Wait until every command queued so far has its answer (or its failure)."""
        self._flush()
        while self._connecting is not None or self._waiting or self._unanswered():
            futures = [future for _, future in self._waiting]
            if self._connection is not None:
                futures += self._connection.unanswered()
            if self._connecting is not None:
                futures.append(self._connecting)  # type: ignore[arg-type]
            await asyncio.gather(*futures, return_exceptions=True)

    def _unanswered(self) -> bool:
        return self._connection is not None and bool(self._connection.unanswered())

    async def aclose(self) -> None:
        """Answer what is queued, then close the connection (shutdown)."""
        await self.drain()
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _fail(batch: list[tuple[bytes, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # retrieved here: a waiter that left never reads it


class _Endpoint:
    """Where and how to connect, read off a redis-py connection pool's settings."""

    def __init__(self, connection_class: type, kwargs: dict[str, Any]) -> None:
        self.unix_path: str | None = (
            kwargs.get("path") if issubclass(connection_class, UnixDomainSocketConnection) else None
        )
        self.host: str = kwargs.get("host", "localhost")
        self.port: int = int(kwargs.get("port", 6379))
        self.ssl: ssl.SSLContext | None = None
        if issubclass(connection_class, SSLConnection):
            # redis-py's own reading of the ssl_* settings (CA, certificates, verification).
            self.ssl = connection_class(**kwargs).ssl_context.get()
        self.username: str | None = kwargs.get("username")
        self.password: str | None = kwargs.get("password")
        self.credential_provider = kwargs.get("credential_provider")
        self.db = int(kwargs.get("db") or 0)
        self.timeout_s = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT_S)
        self.connect_timeout_s = float(kwargs.get("socket_connect_timeout") or self.timeout_s)

    async def connect(self) -> _Connection:
        """A ready connection: connected, authenticated, on the right database."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.unix_path is not None:
                    _, connection = await loop.create_unix_connection(
                        lambda: _Connection(self.timeout_s), self.unix_path, ssl=self.ssl
                    )
                else:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(self.timeout_s), self.host, self.port, ssl=self.ssl
                    )
                try:
                    await self._handshake(connection)
                except BaseException:
                    connection.close()
                    raise
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to Redis") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc}") from exc
        return connection

    async def _handshake(self, connection: _Connection) -> None:
        username, password = self.username, self.password
        if self.credential_provider is not None:
            credentials = await self.credential_provider.get_credentials_async()
            username, password = (None, *credentials)[-2:]
        commands: list[tuple[Any, ...]] = []
        if password is not None:
            commands.append(
                ("AUTH", password) if username is None else ("AUTH", username, password)
            )
        if self.db:
            commands.append(("SELECT", self.db))
        if not commands:
            return
        loop = asyncio.get_running_loop()
        batch = [(hiredis.pack_command(c), loop.create_future()) for c in commands]
        connection.send(batch)
        try:
            for _, future in batch:
                await future
        except ResponseError as exc:  # a wrong password or database: not a Redis outage
            raise RedisConnectionError(f"Redis refused the connection set-up: {exc}") from exc


class _Connection(asyncio.Protocol):
    """One Redis connection: batches written in order, replies handed out in order."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader(replyError=ResponseError, notEnoughData=_INCOMPLETE)
        self._futures: collections.deque[asyncio.Future[Any]] = collections.deque()
        # One [deadline, replies still due] per batch written, oldest first.
        self._due: collections.deque[list[Any]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.open = True

    def send(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        """Write `batch` at once; each future gets its own reply."""
        assert self._transport is not None
        self._transport.write(b"".join([packed for packed, _ in batch]))
        self._futures.extend([future for _, future in batch])
        self._due.append([self._loop.time() + self._timeout_s, len(batch)])
        if self._timer is None:
            self._timer = self._loop.call_at(self._due[0][0], self._check_due)

    def unanswered(self) -> list[asyncio.Future[Any]]:
        """The futures still waiting for a reply."""
        return list(self._futures)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        futures, due = self._futures, self._due
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._drop(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is _INCOMPLETE:
                return
            if not futures:  # a reply nobody asked for: this connection is out of step
                self._drop(RedisConnectionError("unexpected reply from Redis"))
                return
            future = futures.popleft()
            head = due[0]
            head[1] -= 1
            if head[1] == 0:
                due.popleft()
            if future.done():  # its caller left; the command ran all the same
                continue
            if isinstance(reply, ResponseError):
                if reply.args and str(reply.args[0]).startswith("NOSCRIPT"):
                    reply = NoScriptError(*reply.args)
                future.set_exception(reply)
                future.exception()
            else:
                future.set_result(reply)

    def _check_due(self) -> None:
        self._timer = None
        if not self._due:
            return
        deadline = self._due[0][0]
        if deadline <= self._loop.time():
            self._drop(RedisTimeoutError("Timeout reading from Redis"))
        else:
            self._timer = self._loop.call_at(deadline, self._check_due)

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop(RedisConnectionError("Connection closed by Redis"), lost=True)

    def close(self) -> None:
        """Close the connection; commands still waiting fail."""
        self._drop(RedisConnectionError("connection closed"))

    def _drop(self, exc: Exception, *, lost: bool = False) -> None:
        self.open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        futures, self._futures = self._futures, collections.deque()
        self._due.clear()
        for future in futures:
            if not future.done():
                future.set_exception(exc)
                future.exception()
        if not lost and self._transport is not None:
            self._transport.abort()  # unread replies must never reach a later caller
