"""Helpers the chaos tests (test_chaos_*.py) share on top of ledger_stack and stack.

- Two tiers: the fast one (default) sizes every fault for the normal suite (a freeze of 2-3 s,
  a lock of 3 s); `GATEWAY_TEST_LONG=1` (`scripts/chaos.sh`) runs the issue's durations.
  `sized(fast, long)` picks one.
- `report(name, **numbers)` prints one `chaos:` line per test and, when
  `GATEWAY_CHAOS_REPORT` names a file, appends the numbers to it as a JSON line, which
  `scripts/chaos.sh` turns into its summary.
- `metrics(url)`: the gateway's `/metrics`, parsed; `slower_than` counts a histogram's
  observations above one of its bucket bounds (an oracle from the gateway's own side).
- `percentile`: nearest-rank, for latency summaries.
- `redis_server_of`: a `RestartableRedis` as the `RedisServer` that `production()` expects.
- `Partition`: a relay to Redis that a test cuts silently (packets dropped, nothing refused).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.contract.cluster import RestartableRedis
from tests.e2e.test_ledger_durability import LONG
from tests.services import RedisServer, free_port

REPORT_FILE = os.environ.get("GATEWAY_CHAOS_REPORT")


def sized(fast: float, long: float) -> float:
    """`long` under GATEWAY_TEST_LONG=1, else `fast`."""
    return long if LONG else fast


def report(name: str, **numbers: object) -> None:
    """Print the test's measured numbers; append them to GATEWAY_CHAOS_REPORT if set."""
    print(f"\nchaos: {name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))
    if REPORT_FILE:
        line = {"test": name, "long": LONG, **{k: str(v) for k, v in numbers.items()}}
        with Path(REPORT_FILE).open("ab") as out:
            out.write(orjson.dumps(line) + b"\n")


def percentile(values: Iterable[float], q: float) -> float:
    """The nearest-rank `q`-th percentile (0 < q <= 100) of a non-empty sample."""
    ordered = sorted(values)
    assert ordered, "no samples"
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics(base_url: str) -> Samples:
    """Every sample of the gateway's /metrics: (name, sorted labels) -> value."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= set(lab))


def slower_than(samples: Samples, histogram: str, bound_s: float) -> float:
    """How many observations of `histogram` exceeded `bound_s` (one of its bucket bounds)."""
    count = total(samples, f"{histogram}_count")
    within = sum(
        v
        for (n, lab), v in samples.items()
        if n == f"{histogram}_bucket" and math.isclose(float(dict(lab)["le"]), bound_s)
    )
    return count - within


def redis_server_of(redis: RestartableRedis) -> RedisServer:
    """The private Redis as the shared-server type (`production()` cleans its prefix)."""
    return RedisServer("127.0.0.1", redis.port)


def statuses(values: Iterable[int]) -> dict[int, int]:
    """Status -> count."""
    return dict(sorted(Counter(values).items()))


class Partition:
    """A TCP relay to a server (Redis) that can go silent: while `cut`, bytes in either
    direction are read and dropped, connections stay open, nothing is refused (a silent
    network partition, like `iptables -j DROP`). Runs its own event loop in a thread; on exit
    every relayed connection is closed and its tasks have ended."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cut = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._run, name="partition", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self._ready.set()
        await self._stop.wait()
        server.close()
        relays = set(self._relays)
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        loop = asyncio.get_running_loop()
        pipes = {
            loop.create_task(self._pipe(reader, up_writer)),
            loop.create_task(self._pipe(up_reader, writer)),
        }
        try:  # either side closing (or failing) ends the relay
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for end in (writer, up_writer):
                end.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if not self.cut.is_set():
                sink.write(data)
                await sink.drain()

    def __enter__(self) -> Partition:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut.clear()
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
