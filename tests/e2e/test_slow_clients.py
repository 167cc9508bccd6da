"""Slow clients against the real server (uvicorn + httptools), RELIABILITY R34 (uvicorn #157).

One measured run, shared by the tests: another tenant's chat traffic (4 clients in a loop) for
`BASELINE_S` alone, then again for `TRICKLE_S` while 200 slow connections trickle — 100 send
a request head one byte every `DRIP_S` without ever ending it, 100 send a complete head
(`Content-Length: 100000`) and then the body one byte every `DRIP_S`. Each slow connection
notes when the gateway answered or closed it.

Outcomes: the bystanders are served throughout, at normal latency (the event loop is not held
by idle sockets). Read deadlines: uvicorn arms its keep-alive timer only *after* a response,
so the gateway's server protocol (`web/server_protocol.py`) adds one for heads, and bodies are
read under their own: heads and bodies each have a 10 s deadline (`GATEWAY_REQUEST_HEAD_TIMEOUT_S`,
`GATEWAY_REQUEST_BODY_TIMEOUT_S`), and both tests check a trickled one is cut off in time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field

import httpx
import pytest

from tests.e2e.routing_stack import CHAT_PATH, chat_body
from tests.e2e.stack import Stack, create_tenant

pytestmark = pytest.mark.parametrize("stack", ["embedded"], indirect=True)

SLOW_HEADS = SLOW_BODIES = 100
BASELINE_S, TRICKLE_S, DRIP_S = 3.0, 11.0, 0.5
DEADLINE_S = 10.0  # RELIABILITY R34: slow request heads closed within 10 s


@dataclass
class Run:
    baseline_s: list[float]
    during_s: list[float]
    statuses: list[int]
    head_closed_s: list[float | None] = field(default_factory=list)
    body_closed_s: list[float | None] = field(default_factory=list)

    def summary(self) -> str:
        def p(values: list[float], q: int) -> float:
            return statistics.quantiles(values, n=100)[q - 1] * 1000

        closed = sum(t is not None for t in self.head_closed_s + self.body_closed_s)
        return (
            f"bystander chat latency ms: baseline p50 {p(self.baseline_s, 50):.1f} "
            f"p99 {p(self.baseline_s, 99):.1f} (n={len(self.baseline_s)}); during 200 slow "
            f"connections p50 {p(self.during_s, 50):.1f} p99 {p(self.during_s, 99):.1f} "
            f"(n={len(self.during_s)}); slow connections closed by the gateway: {closed}/200"
        )


async def _traffic(base_url: str, key: str, seconds: float) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    statuses: list[int] = []
    headers = {"authorization": f"Bearer {key}"}
    end = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            sent = time.monotonic()
            response = await client.post(CHAT_PATH, json=chat_body("mistral-small-latest"))
            latencies.append(time.monotonic() - sent)
            statuses.append(response.status_code)

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(4)))
    return latencies, statuses


async def _slow(base_url: str, key: str, head: bytes, drip: bytes, until: float) -> float | None:
    """Open a connection, send `head`, then `drip` one byte at a time; when the gateway
    answered or closed it, in seconds from opening (None: it never did)."""
    host, port = base_url.removeprefix("http://").split(":")
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head.replace(b"KEY", key.encode()))
    closed = asyncio.ensure_future(reader.read(1))
    try:
        for byte in drip:
            if time.monotonic() > until:
                break
            done, _ = await asyncio.wait({closed}, timeout=DRIP_S)
            if done:
                return time.monotonic() - opened
            writer.write(bytes([byte]))
        return None
    except OSError:
        return time.monotonic() - opened
    finally:
        closed.cancel()
        writer.close()


HEAD_PREFIX = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer KEY\r\n"
)
SLOW_HEAD = (HEAD_PREFIX, b"x-padding: " + b"a" * 1000)
SLOW_BODY = (
    HEAD_PREFIX + b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n",
    b'{"model": "mistral-small-latest", "messages": [{"role": "user", "content": "' + b"a" * 1000,
)


async def _measure(stack: Stack, key: str) -> Run:
    baseline, statuses = await _traffic(stack.base_url, key, BASELINE_S)
    until = time.monotonic() + TRICKLE_S
    slow: list[Awaitable[float | None]] = [
        _slow(stack.base_url, stack.key, *kind, until)
        for kind in [SLOW_HEAD] * SLOW_HEADS + [SLOW_BODY] * SLOW_BODIES
    ]
    trickling = asyncio.gather(*slow)
    await asyncio.sleep(1.0)  # every slow connection is open and dripping
    during, more = await _traffic(stack.base_url, key, TRICKLE_S - 2.0)
    closed = await trickling
    return Run(baseline, during, statuses + more, closed[:SLOW_HEADS], closed[SLOW_HEADS:])


@pytest.fixture(scope="module")
def run(stack: Stack) -> Run:
    _, key = create_tenant(stack.env, f"bystander-{uuid.uuid4().hex[:8]}")
    measured = asyncio.run(_measure(stack, key))
    print(measured.summary())
    return measured


def test_other_tenants_are_served_while_200_slow_clients_trickle(run: Run) -> None:
    assert set(run.statuses) == {200}
    baseline, during = statistics.median(run.baseline_s), statistics.median(run.during_s)
    # Loose bounds (a shared 2-core box): the point is "not blocked", not a benchmark.
    assert during < max(3 * baseline, baseline + 0.1), run.summary()
    assert statistics.quantiles(run.during_s, n=100)[98] < 2.0, run.summary()


@pytest.mark.parametrize(
    "part",
    ["head", "body"],
)
def test_a_trickled_request_is_cut_off_within_the_deadline(run: Run, part: str) -> None:
    closed_s = run.head_closed_s if part == "head" else run.body_closed_s
    assert all(t is not None and t <= DEADLINE_S + 1 for t in closed_s), run.summary()
