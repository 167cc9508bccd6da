"""The ledger's CLI commands: `gateway ledger` (a standalone writer) and `gateway reconcile`.

Both need production mode (Redis): in embedded mode the writer runs inside `gateway serve`
and the served counts live in that process.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta

from gateway.clock import SystemClock
from gateway.config import GatewayConfig
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.heap import freeze_startup_heap
from gateway.ledger.pipeline import LedgerPipeline, redis_client
from gateway.ledger.reconcile import reconcile, render
from gateway.ledger.redis_stream import RedisStreamJournal
from gateway.settings import Settings


async def run_ledger_writer(settings: Settings, config: GatewayConfig) -> None:
    """Consume the usage stream into the database until SIGTERM or SIGINT, then stop cleanly
    (an unacknowledged batch is re-delivered to another writer: nothing is lost)."""
    if settings.redis_url is None:
        raise SystemExit("error: `gateway ledger` needs GATEWAY_REDIS_URL (production mode)")
    engine = make_engine(settings)
    pipeline = LedgerPipeline(
        settings, config, make_sessionmaker(engine), SystemClock(), run_writer=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await pipeline.start()
    freeze_startup_heap()
    print("ledger writer running", flush=True)
    try:
        await stop.wait()
    finally:
        await pipeline.stop()
        await engine.dispose()
        writer = pipeline.writer
        if writer is not None:
            print(f"ledger writer stopped: {writer.written} rows written", flush=True)


async def run_reconcile(settings: Settings, hours: int) -> tuple[list[str], bool]:
    """The reconciliation report over the last `hours` hours; True when complete."""
    if settings.redis_url is None:
        raise SystemExit(
            "error: `gateway reconcile` needs GATEWAY_REDIS_URL; in embedded mode the counts "
            "are in the running gateway (admin API)"
        )
    engine = make_engine(settings)
    client = redis_client(settings, timeout_s=5.0)
    try:
        journal = RedisStreamJournal(client, key_prefix=settings.redis_key_prefix)
        until = datetime.now(UTC) + timedelta(hours=1)
        since = until - timedelta(hours=hours + 1)
        report = await reconcile(
            make_sessionmaker(engine),
            await journal.served(),
            await journal.pending_payloads(),
            since,
            until,
        )
    finally:
        await client.aclose()
        await engine.dispose()
    return render(report), not any(r.missing > 0 for r in report)
