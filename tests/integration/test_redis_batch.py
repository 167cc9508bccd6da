"""`RedisBatcher` against the run's real Redis, and against scripted fake servers for the
failures a real one will not produce on demand (a late reply, a dropped connection, a refused
AUTH): every caller gets its own reply, never another's, and a failure fails only the
commands it touched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.redis_batch import RedisBatcher
from tests.services import RedisServer

Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def client(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.Redis.from_url(redis_srv.url, socket_timeout=2.0)
    yield redis
    await redis.aclose()


async def test_each_caller_gets_its_own_reply_in_one_batch(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    batcher = RedisBatcher(client)
    counter, text = f"{redis_prefix}batch:counter", f"{redis_prefix}batch:text"
    try:
        futures = [batcher.call("INCRBY", counter, n) for n in range(1, 101)]
        futures.append(batcher.call("SET", text, "é"))
        futures.append(batcher.call("GET", text))
        replies = await asyncio.gather(*futures)
    finally:
        await batcher.aclose()
    assert replies[:100] == [n * (n + 1) // 2 for n in range(1, 101)]  # sent in order
    assert replies[100:] == [b"OK", "é".encode()]


async def test_an_error_reply_fails_only_its_own_command(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    batcher = RedisBatcher(client)
    text, counter = f"{redis_prefix}batch:str", f"{redis_prefix}batch:n"
    await client.set(text, "not a number")
    try:
        before = batcher.call("INCR", counter)
        wrong = batcher.call("INCR", text)
        missing = batcher.call("EVALSHA", "0" * 40, 0)
        after = batcher.call("INCR", counter)
        assert await before == 1
        with pytest.raises(ResponseError, match="not an integer"):
            await wrong
        with pytest.raises(NoScriptError):
            await missing
        assert await after == 2
    finally:
        await batcher.aclose()


async def test_selects_the_database_of_the_url(redis_srv: RedisServer, redis_prefix: str) -> None:
    url = f"redis://{redis_srv.host}:{redis_srv.port}/7"
    client = aioredis.Redis.from_url(url)
    batcher = RedisBatcher(client)
    key = f"{redis_prefix}batch:db"
    try:
        assert await batcher.call("SET", key, "seven") == b"OK"
        assert await client.get(key) == b"seven"  # redis-py on /7 sees it
    finally:
        await batcher.aclose()
        db7 = aioredis.Redis.from_url(url)
        await db7.delete(key)
        await db7.aclose()
        await client.aclose()


async def test_a_caller_that_leaves_does_not_shift_the_replies(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    batcher = RedisBatcher(client)
    key = f"{redis_prefix}batch:left"
    try:
        gone = batcher.call("INCR", key)
        gone.cancel()
        assert await batcher.call("INCR", key) == 2  # the cancelled command ran all the same
        assert await batcher.call("GET", key) == b"2"
    finally:
        await batcher.aclose()


async def test_a_closed_batcher_refuses_new_commands(client: aioredis.Redis) -> None:
    batcher = RedisBatcher(client)
    assert await batcher.call("PING") == b"PONG"
    await batcher.aclose()
    with pytest.raises(RedisConnectionError):
        await batcher.call("PING")


class FakeRedis:
    """A TCP server speaking just enough RESP: `handler(n, reader, writer)` serves the n-th
    connection (1-based)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeRedis:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    def client(self, **options: object) -> aioredis.Redis:
        return aioredis.Redis(host="127.0.0.1", port=self.port, **options)  # type: ignore[arg-type]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(self.connections, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_command(reader: asyncio.StreamReader) -> list[bytes]:
    """One RESP array of bulk strings, as clients send commands."""
    count = int((await reader.readline())[1:])
    parts = []
    for _ in range(count):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


async def test_a_late_reply_times_out_and_never_reaches_the_next_caller() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_command(reader)
            if n == 1:
                await asyncio.sleep(0.3)  # far past the 0.05 s timeout
            writer.write(f":{n}\r\n".encode())
            await writer.drain()

    async with FakeRedis(handler) as fake:
        batcher = RedisBatcher(fake.client(socket_timeout=0.05))
        try:
            with pytest.raises(RedisTimeoutError):
                await batcher.call("INCR", "k")
            assert await batcher.call("INCR", "k") == 2  # answered on a new connection
            await asyncio.sleep(0.35)  # the first connection's late reply would arrive now
            assert await batcher.call("INCR", "k") == 2
        finally:
            await batcher.aclose()
        assert fake.connections == 2


async def test_a_lost_connection_fails_its_commands_and_the_next_one_reconnects() -> None:
    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_command(reader)
            if n == 1:
                return  # hang up with the command unanswered
            writer.write(b"+PONG\r\n")
            await writer.drain()

    async with FakeRedis(handler) as fake:
        batcher = RedisBatcher(fake.client(socket_timeout=2.0))
        try:
            with pytest.raises(RedisConnectionError):
                await batcher.call("PING")
            assert await batcher.call("PING") == b"PONG"
        finally:
            await batcher.aclose()


async def test_nothing_listening_is_a_connection_error() -> None:
    async with FakeRedis(lambda *_: asyncio.sleep(0)) as fake:
        port = fake.port
    batcher = RedisBatcher(aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=0.2))
    try:
        with pytest.raises(RedisConnectionError):
            await batcher.call("PING")
    finally:
        await batcher.aclose()


async def test_authenticates_and_a_refused_password_is_a_connection_error() -> None:
    seen: list[list[bytes]] = []

    async def handler(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            command = await read_command(reader)
            seen.append(command)
            if command[0] == b"AUTH":
                ok = command[1:] == [b"gw", b"right"]
                writer.write(b"+OK\r\n" if ok else b"-WRONGPASS invalid password\r\n")
            else:
                writer.write(b"+PONG\r\n")
            await writer.drain()

    async with FakeRedis(handler) as fake:
        good = RedisBatcher(fake.client(username="gw", password="right", socket_timeout=1.0))
        bad = RedisBatcher(fake.client(username="gw", password="wrong", socket_timeout=1.0))
        try:
            assert await good.call("PING") == b"PONG"
            with pytest.raises(RedisConnectionError, match="WRONGPASS"):
                await bad.call("PING")
        finally:
            await good.aclose()
            await bad.aclose()
    assert [b"AUTH", b"gw", b"right"] in seen
    assert [b"PING"] in seen
    assert seen.count([b"PING"]) == 1  # the refused connection never sent its command
