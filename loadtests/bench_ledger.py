"""Ledger writer throughput and lag, on the gateway's real code, against real Redis and Postgres.

    .venv/bin/python loadtests/bench_ledger.py [--redis-url redis://127.0.0.1:6379/0]
        [--pg-dsn postgresql://postgres@127.0.0.1:5432/postgres] [--rows N]
        [--batch-sizes 100,500,1000] [--rate 1000] [--duration-s 20]

What runs is what a production gateway (or `gateway ledger`) runs: a `LedgerWriter` reading the
usage stream as one consumer of the `ledger` group (`RedisStreamJournal`, the client
`gateway/ledger/pipeline.py:redis_client` builds) and committing batches into Postgres
(`insert_usage`: INSERT .. ON CONFLICT (request_id) DO NOTHING RETURNING plus the
`usage_daily` upsert, one transaction), then XACK + XDEL. Records are realistic `UsageRecord`s
(mixed endpoints, models, tenants, a routing trace of one or two attempts), encoded as the
gateway encodes them.

Two phases:
- throughput: the stream is pre-filled with `--rows` records (appended as the gateway appends
  them, XADD + HINCRBY of the served count), then one writer drains it; rows/s committed, per
  batch size. The tables are emptied before each batch size.
- lag: a producer process appends at `--rate` records/s for `--duration-s` (the gateway's own
  append, `RedisStreamJournal.append`, one round trip each) while one writer (batch 500, the
  default, blocking reads of 1 s as in the gateway) consumes; for every record, the time from
  its append returning to its batch's commit (taken when the writer acknowledges the batch,
  right after the commit). Monotonic clocks are system-wide on Linux, so the two processes'
  timestamps compare.

Everything lives in a fresh database (`gw_bench_<hex>`, migrated with the gateway's own
migrations) and under a fresh Redis key prefix; both are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from redis.asyncio import Redis

from gateway.clock import SystemClock
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.migrate import upgrade
from gateway.ledger.journal import Entry, JournalReader
from gateway.ledger.pipeline import WRITER_BLOCK_S, redis_client
from gateway.ledger.record import UsageRecord, hour_of
from gateway.ledger.redis_stream import FIELD, RedisStreamJournal, served_key, stream_key
from gateway.ledger.writer import LedgerWriter
from gateway.settings import Settings

# (endpoint, model, deployment, stream, share of traffic)
MIX = (
    ("chat", "mistral-small-latest", "plateforme-eu", False, 0.35),
    ("chat", "mistral-small-latest", "plateforme-eu", True, 0.30),
    ("chat", "open-small", "vllm-fra", True, 0.15),
    ("embeddings", "mistral-embed", "plateforme-eu", False, 0.12),
    ("fim", "codestral-latest", "plateforme-eu", False, 0.08),
)
PRICES = {  # EUR micro-units per million tokens (input, output)
    "mistral-small-latest": (120_000, 500_000),
    "open-small": (50_000, 150_000),
    "mistral-embed": (100_000, 0),
    "codestral-latest": (260_000, 790_000),
}
LAG_BATCH = 500  # the default GATEWAY_LEDGER_BATCH_SIZE
TENANTS = [str(uuid.UUID(int=random.Random(i).getrandbits(128))) for i in range(50)]
KEYS = {tenant: str(uuid.UUID(int=random.Random(tenant).getrandbits(128))) for tenant in TENANTS}


def realistic_record(rng: random.Random, now_ms: int) -> UsageRecord:
    """One request's record as the gateway builds it (see gateway/ledger/ledger.py)."""
    endpoint, model, deployment, stream, _ = rng.choices(MIX, weights=[m[4] for m in MIX])[0]
    tenant = rng.choice(TENANTS)
    prompt = rng.randint(20, 2000)
    completion = 0 if endpoint == "embeddings" else rng.randint(1, 800)
    failed = rng.random() < 0.02
    price_in, price_out = PRICES[model]
    attempts = [
        {
            "deployment": deployment,
            "region": "eu-west",
            "jurisdiction": "eu",
            "reason": "balanced",
            "outcome": "ok",
            "waited_s": 0.0,
        }
    ]
    if rng.random() < 0.05:  # a retry on a second replica
        attempts.insert(0, attempts[0] | {"outcome": "upstream_unavailable", "status": 503})
    latency = rng.randint(80, 6000)
    return UsageRecord(
        request_id=uuid.uuid4().hex,
        tenant_id=tenant,
        key_id=KEYS[tenant],
        endpoint=endpoint,
        model=model,
        upstream_model=model,
        deployment=deployment,
        region="eu-west",
        stream=stream,
        status=503 if failed else 200,
        error_code="upstream_unavailable" if failed else None,
        prompt_tokens=0 if failed else prompt,
        completion_tokens=0 if failed else completion,
        token_source="provider",
        cost_micros=0
        if failed
        else (prompt * price_in + completion * price_out + 500_000) // 10**6,
        currency="EUR",
        unpriced=False,
        price_version_id=1,
        attempts=len(attempts),
        residency="eu",
        jurisdictions="eu",
        route={"policy": "eu", "eligible": [deployment], "attempts": attempts},
        upstream_id=None if failed else f"cmpl-{uuid.uuid4().hex[:24]}",
        gateway_latency_ms=latency + 3,
        upstream_latency_ms=latency,
        ttft_ms=rng.randint(100, 600) if stream else None,
        started_at_ms=now_ms - latency,
        finished_at_ms=now_ms,
    )


class TimedReader:
    """The writer's journal, noting when each batch is acknowledged (i.e. just committed)."""

    def __init__(self, journal: JournalReader) -> None:
        self.journal = journal
        self._batches: dict[str, list[str]] = {}  # first entry id -> request ids
        self.committed_mono: dict[str, float] = {}  # request id -> commit time
        self.batch_sizes: list[int] = []
        self._target: int | None = None
        self._all_committed = asyncio.Event()

    async def read(self, max_count: int, block_s: float) -> list[Entry]:
        entries = await self.journal.read(max_count, block_s)
        if entries:
            ids = [orjson.loads(payload)["request_id"] for _, payload in entries]
            self._batches[entries[0][0]] = ids
        return entries

    async def ack(self, ids: list[str]) -> None:
        now = time.monotonic()
        for request_id in self._batches.pop(ids[0], []):
            self.committed_mono.setdefault(request_id, now)
        self.batch_sizes.append(len(ids))
        await self.journal.ack(ids)
        self._check()

    async def wait_committed(self, count: int, timeout_s: float) -> None:
        """Wait until `count` records have been committed."""
        self._target = count
        self._check()
        await asyncio.wait_for(self._all_committed.wait(), timeout_s)

    def _check(self) -> None:
        if self._target is not None and len(self.committed_mono) >= self._target:
            self._all_committed.set()


# --- setup and cleanup ---------------------------------------------------------------------------


def create_database(dsn: str) -> str:
    name = f"gw_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_dsn(dsn: str, name: str) -> str:
    return dsn.rsplit("/", 1)[0] + f"/{name}"


def async_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


def truncate(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE usage_events, usage_daily")


def table_counts(dsn: str) -> tuple[int, int]:
    """(rows in usage_events, requests summed in usage_daily)."""
    with psycopg.connect(dsn) as conn:
        events = conn.execute("SELECT count(*) FROM usage_events").fetchone()
        daily = conn.execute("SELECT coalesce(sum(requests), 0) FROM usage_daily").fetchone()
    return int(events[0]) if events else 0, int(daily[0]) if daily else 0


async def delete_prefix(redis: Redis, prefix: str) -> int:
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)
    return len(keys)


# --- phase 1: throughput ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    batch_size: int
    rows: int
    seconds: float
    cpu_s: float
    batch_ms: list[float]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


async def fill(redis: Redis, prefix: str, rows: int, rng: random.Random) -> None:
    """Append `rows` records as the gateway does (XADD + HINCRBY), 1000 per pipeline."""
    key, served = stream_key(prefix), served_key(prefix)
    now_ms = int(time.time() * 1000)
    for start in range(0, rows, 1000):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(1000, rows - start)):
            record = realistic_record(rng, now_ms)
            pipe.xadd(key, {FIELD: record.encode()})
            pipe.hincrby(served, hour_of(record.started_at_ms), 1)
        await pipe.execute()


async def throughput(settings: Settings, dsn: str, batch_size: int, rows: int) -> Throughput:
    redis = Redis.from_url(settings.redis_url or "")
    await fill(redis, settings.redis_key_prefix, rows, random.Random(batch_size))
    engine = make_engine(settings)
    client = redis_client(settings, timeout_s=WRITER_BLOCK_S + 2.0)
    reader = RedisStreamJournal(client, key_prefix=settings.redis_key_prefix, consumer="bench")
    writer = LedgerWriter(
        reader, make_sessionmaker(engine), SystemClock(), batch_size=batch_size, block_s=0.01
    )
    batch_ms: list[float] = []
    await writer.write_batch()  # warm up (group, pool, statement cache): not timed
    warm_rows = writer.written
    started, cpu = time.perf_counter(), time.process_time()
    while writer.written < rows:
        before = time.perf_counter()
        if not await writer.write_batch():
            raise RuntimeError(f"stream empty after {writer.written} of {rows} rows")
        batch_ms.append((time.perf_counter() - before) * 1000)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    await client.aclose()
    await redis.aclose()
    await engine.dispose()
    events, daily = table_counts(dsn)
    assert events == daily == rows, (events, daily, rows)
    return Throughput(batch_size, rows - warm_rows, seconds, cpu_s, batch_ms)


# --- phase 2: lag at a fixed rate ------------------------------------------------------------------


def produce(redis_url: str, prefix: str, rate: float, duration_s: float, out: Any) -> None:
    """Producer process: append at `rate`/s with the gateway's own append, each in a task of
    its own as the gateway's requests do (so a slow round trip does not slow the rate); send
    back (request id, monotonic time the append returned) pairs and how many appends started
    more than 50 ms late."""

    async def run() -> tuple[list[tuple[str, float]], int]:
        redis = Redis.from_url(redis_url, socket_timeout=1.0, max_connections=1000)
        journal = RedisStreamJournal(redis, key_prefix=prefix)
        rng = random.Random(1)
        appended: list[tuple[str, float]] = []

        async def append(record: UsageRecord) -> None:
            await journal.append(record.encode(), hour_of(record.started_at_ms))
            appended.append((record.request_id, time.monotonic()))

        tasks, late = [], 0
        start = time.monotonic() + 0.2
        for i in range(int(rate * duration_s)):
            wait = start + i / rate - time.monotonic()
            late += wait < -0.05
            await asyncio.sleep(max(0.0, wait))  # yield even when behind: let appends run
            record = realistic_record(rng, int(time.time() * 1000))
            tasks.append(asyncio.get_running_loop().create_task(append(record)))
        await asyncio.gather(*tasks)
        await redis.aclose()
        return appended, late

    out.send(asyncio.run(run()))
    out.close()


@dataclass(frozen=True)
class Lag:
    rate: float
    achieved_rate: float
    duration_s: float
    records: int
    late_appends: int
    lags_ms: list[float]
    batch_sizes: list[int]


async def lag(settings: Settings, rate: float, duration_s: float) -> Lag:
    engine = make_engine(settings)
    client = redis_client(settings, timeout_s=WRITER_BLOCK_S + 2.0)
    reader = TimedReader(
        RedisStreamJournal(client, key_prefix=settings.redis_key_prefix, consumer="bench-lag")
    )
    writer = LedgerWriter(
        reader,
        make_sessionmaker(engine),
        SystemClock(),
        batch_size=LAG_BATCH,
        block_s=WRITER_BLOCK_S,
    )
    await writer.write_batch(block_s=0.01)  # create the group, warm the pool
    task = asyncio.get_running_loop().create_task(writer.run_forever())
    receive, send = multiprocessing.Pipe(duplex=False)
    producer = multiprocessing.get_context("spawn").Process(
        target=produce,
        args=(settings.redis_url, settings.redis_key_prefix, rate, duration_s, send),
    )
    producer.start()
    appended, late = await asyncio.to_thread(receive.recv)
    producer.join()
    await reader.wait_committed(len(appended), timeout_s=30)
    while not task.done():  # as LedgerPipeline.stop: Python 3.11 can swallow one cancel
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    await client.aclose()
    await engine.dispose()
    lags = [(reader.committed_mono[rid] - at) * 1000 for rid, at in appended]
    times = sorted(at for _, at in appended)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    return Lag(rate, achieved, duration_s, len(appended), late, lags, reader.batch_sizes)


# --- report ----------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_report(results: list[Throughput], lagged: Lag) -> None:
    print("\nthroughput: one LedgerWriter draining a pre-filled stream into Postgres")
    header = (
        f"{'batch':>6} {'rows':>7} {'seconds':>8} {'rows/s':>8} {'batch p50 ms':>13} "
        f"{'batch p99 ms':>13} {'CPU µs/row':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.batch_size:>6} {r.rows:>7} {r.seconds:>8.2f} {r.rows_per_s:>8.0f} "
            f"{statistics.median(r.batch_ms):>13.1f} {pct(r.batch_ms, 0.99):>13.1f} "
            f"{r.cpu_s / r.rows * 1e6:>11.0f}"
        )
    lags = lagged.lags_ms
    print(
        f"\nlag: {lagged.rate:.0f} records/s for {lagged.duration_s:.0f} s (achieved "
        f"{lagged.achieved_rate:.0f}/s, {lagged.records} records, {lagged.late_appends} started "
        f"> 50 ms late), one writer, batch {LAG_BATCH}, reads blocking {WRITER_BLOCK_S:g} s"
    )
    header = f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean batch':>11}"
    print(header)
    print("-" * len(header))
    print(
        f"{pct(lags, 0.50):>8.1f} {pct(lags, 0.90):>8.1f} {pct(lags, 0.99):>8.1f} "
        f"{max(lags):>8.1f} {statistics.mean(lagged.batch_sizes):>11.1f}"
    )


async def main(args: argparse.Namespace) -> None:
    name = create_database(args.pg_dsn)
    dsn = database_dsn(args.pg_dsn, name)
    prefix = f"bench:{uuid.uuid4().hex[:10]}:"
    redis = Redis.from_url(args.redis_url)
    try:
        await asyncio.to_thread(upgrade, async_url(dsn))
        results = []
        for batch_size in args.batch_sizes:
            truncate(dsn)
            settings = Settings(
                database_url=async_url(dsn),
                redis_url=args.redis_url,
                redis_key_prefix=f"{prefix}{batch_size}:",
            )
            results.append(await throughput(settings, dsn, batch_size, args.rows))
            print(f"batch {batch_size}: {results[-1].rows_per_s:.0f} rows/s", flush=True)
        truncate(dsn)
        settings = Settings(
            database_url=async_url(dsn), redis_url=args.redis_url, redis_key_prefix=f"{prefix}lag:"
        )
        lagged = await lag(settings, args.rate, args.duration_s)
        print_report(results, lagged)
    finally:
        deleted = await delete_prefix(redis, prefix)
        await redis.aclose()
        drop_database(args.pg_dsn, name)
        print(f"\ndeleted {deleted} keys under {prefix!r} and database {name}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--pg-dsn",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database to connect to for CREATE/DROP DATABASE",
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows per batch size")
    parser.add_argument(
        "--batch-sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100, 500, 1000],
        help="comma-separated (default 100,500,1000)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="records/s in the lag phase")
    parser.add_argument("--duration-s", type=float, default=20.0, help="length of the lag phase")
    return parser


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    try:  # the gateway runs on uvloop when it is installed (gateway serve)
        import uvloop
    except ImportError:
        asyncio.run(coroutine)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coroutine)


if __name__ == "__main__":
    run(main(_parser().parse_args()))
