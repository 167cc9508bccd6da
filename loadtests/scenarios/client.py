"""A small, fast HTTP/1.1 load client: raw asyncio protocol + httptools' C response parser.

Why not aiohttp or httpx: the load generator shares a core with the upstream (and Redis), and
it must stay far cheaper than what it measures. One keep-alive connection per in-flight request,
bodies pre-rendered as bytes; per request we record the status, the time to the first body byte
(for a stream: the first SSE event, so TTFT) and the time to the end of the response.

Two drivers:
- `closed_loop(target, connections, duration_s)`: each connection sends its next request as soon
  as the previous answer ends (throughput at a fixed concurrency).
- `fixed_rate(target, rate_per_s, duration_s)`: requests leave on a fixed schedule whatever the
  answers do (an open loop: latency at a fixed load, no coordinated omission while the target
  keeps up).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

RequestFactory = Callable[[int], bytes]  # sequence number -> whole request bytes


@dataclass
class Sample:
    status: int
    first_byte_s: float  # request written -> first body byte
    total_s: float  # request written -> response complete
    retry_after: str | None = None


@dataclass
class RunResult:
    samples: list[Sample] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def ok(self) -> list[Sample]:
        return [s for s in self.samples if 200 <= s.status < 300]

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.samples:
            out[s.status] = out.get(s.status, 0) + 1
        return out

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `request()` sends one request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Sample] | None = None
        self.sent_ns = 0
        self.first_ns = 0
        self.status = 0
        self.retry_after: str | None = None
        self._header: bytes = b""
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if not self.first_ns:
            self.first_ns = time.perf_counter_ns()

    def on_message_complete(self) -> None:
        end = time.perf_counter_ns()
        first = self.first_ns or end
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(
                Sample(
                    self.status,
                    (first - self.sent_ns) / 1e9,
                    (end - self.sent_ns) / 1e9,
                    self.retry_after,
                )
            )

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(self, data: bytes) -> Sample:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.first_ns = 0
        self.status = 0
        self.retry_after = None
        self.sent_ns = time.perf_counter_ns()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int, host: str = "127.0.0.1") -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host, port)
    return conn


async def closed_loop(
    port: int, make: RequestFactory, connections: int, duration_s: float, timeout_s: float = 30
) -> RunResult:
    """`connections` loops, each sending its next request when the previous answer ends."""
    result = RunResult()
    counter = iter(range(1 << 62))
    deadline = 0.0

    async def one_loop() -> None:
        conn: _Connection | None = None
        while time.perf_counter() < deadline:
            try:
                if conn is None or conn.closed:
                    conn = await connect(port)
                result.samples.append(
                    await asyncio.wait_for(conn.request(make(next(counter))), timeout_s)
                )
            except (OSError, httptools.HttpParserError, TimeoutError) as exc:
                result.error(exc)
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
        if conn is not None:
            conn.close()

    start = time.perf_counter()
    deadline = start + duration_s
    await asyncio.gather(*(one_loop() for _ in range(connections)))
    result.elapsed_s = time.perf_counter() - start
    return result


async def fixed_rate(
    port: int, make: RequestFactory, rate_per_s: float, duration_s: float, timeout_s: float = 30
) -> RunResult:
    """Requests on a fixed schedule (open loop), each on an idle keep-alive connection."""
    result = RunResult()
    idle: list[_Connection] = []
    loop = asyncio.get_running_loop()

    async def one(seq: int) -> None:
        conn = idle.pop() if idle else None
        try:
            if conn is None or conn.closed:
                conn = await connect(port)
            result.samples.append(await asyncio.wait_for(conn.request(make(seq)), timeout_s))
            idle.append(conn)
        except (OSError, httptools.HttpParserError, TimeoutError) as exc:
            result.error(exc)
            if conn is not None:
                conn.close()

    # Two connections ready, so the first requests do not pay a connect.
    for _ in range(2):
        idle.append(await connect(port))
    count = int(rate_per_s * duration_s)
    interval = 1.0 / rate_per_s
    start = loop.time() + 0.01
    started = time.perf_counter()
    tasks = []
    for seq in range(count):
        delay = start + seq * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(seq)))
    await asyncio.gather(*tasks)
    result.elapsed_s = time.perf_counter() - started
    for conn in idle:
        conn.close()
    return result


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on sorted values; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]
