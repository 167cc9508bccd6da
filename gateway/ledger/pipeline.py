"""The ledger pipeline's parts for one process, built from settings: journal, writer, prices.

Embedded mode: a `MemoryJournal` feeds an in-process writer to SQLite; records still queued at
shutdown (database down) go to the spool file and are replayed at the next start.
Production: records are XADDed to the Redis usage stream (spooled to a local file while Redis
is down, replayed when it returns) and consumed by ledger writers: one per gateway process by
default (`GATEWAY_LEDGER_WRITER`), or standalone `gateway ledger` processes.

`LedgerPipeline.start()` seeds the routing file's list prices, loads the price book and starts
the background tasks; `stop()` writes what it can, spools the rest and closes its clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import UTC, datetime

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.db.prices import load_price_book, seed_prices
from gateway.ledger.budget_watch import BudgetWatcher
from gateway.ledger.journal import Journal, JournalReader, MemoryJournal
from gateway.ledger.pricing import PriceCatalog
from gateway.ledger.redis_stream import RedisStreamJournal
from gateway.ledger.spool import FileSpool, SpoolingJournal
from gateway.ledger.writer import LedgerWriter
from gateway.limits.limiter import Limiter
from gateway.settings import Settings

log = logging.getLogger("gateway.ledger")

WRITER_BLOCK_S = 1.0


def redis_client(settings: Settings, *, timeout_s: float) -> Redis | RedisCluster:
    """A Redis client for the ledger with its own timeouts (no retries: callers decide)."""
    assert settings.redis_url is not None
    options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options, retry=Retry(NoBackoff(), 0))
    # Retry a pooled connection Redis closed (restart) once, at once; never a timeout. (The
    # asyncio Retry: the sync one never sees an asyncio client's failures.)
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    return Redis.from_url(settings.redis_url, **options, retry=retry)


async def _wait_cancelled(task: asyncio.Task[None]) -> None:
    """Wait for a cancelled `task` to end, cancelling it again while it carries on. One cancel
    is not enough on Python 3.11: `asyncio.wait_for` (redis-py sends every command through it;
    `MemoryJournal.read` waits with it) swallows a cancellation that arrives just as its inner
    operation finishes, and the task then runs on as if never cancelled."""
    while not task.done():
        await asyncio.wait({task}, timeout=0.1)
        if not task.done():
            task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()  # retrieved: a failure was logged by the task itself


class LedgerPipeline:
    """Journal (append side), writer (read side), spool and price catalog of one process."""

    def __init__(
        self,
        settings: Settings,
        config: GatewayConfig,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        run_writer: bool | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.sessions = sessions
        self.clock = clock
        self.catalog = PriceCatalog()
        self.spool = FileSpool(settings.spool_dir)
        self._clients: list[Redis | RedisCluster] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.memory: MemoryJournal | None = None
        self.budget_watcher: BudgetWatcher | None = None
        reader: JournalReader
        if settings.redis_url is None:
            self.memory = MemoryJournal()
            self.journal: Journal = self.memory
            reader = self.memory
        else:
            append_client = redis_client(settings, timeout_s=max(0.25, settings.redis_timeout_s))
            read_client = redis_client(settings, timeout_s=WRITER_BLOCK_S + 2.0)
            self._clients += [append_client, read_client]
            self.stream = RedisStreamJournal(append_client, key_prefix=settings.redis_key_prefix)
            self.journal = SpoolingJournal(self.stream, self.spool)
            reader = RedisStreamJournal(
                read_client,
                key_prefix=settings.redis_key_prefix,
                consumer=f"{socket.gethostname()}-{os.getpid()}",
                reclaim_idle_s=settings.ledger_reclaim_idle_s,
            )
        runs = settings.ledger_writer if run_writer is None else run_writer
        self.writer = (
            LedgerWriter(
                reader,
                sessions,
                clock,
                batch_size=settings.ledger_batch_size,
                block_s=WRITER_BLOCK_S,
            )
            if runs
            else None
        )

    async def start(self, limiter: Limiter | None = None) -> None:
        """Seed and load prices, replay a leftover spool, start the background tasks (with
        the budget watcher when this process writes the ledger and a limiter is given)."""
        try:
            async with self.sessions() as session, session.begin():
                added = await seed_prices(session, self.config.prices, datetime.now(UTC))
        except IntegrityError:  # replicas starting together: another one seeded them first
            added = 0
        if added:
            log.info("seeded %d list prices from the routing file", added)
        await self.refresh_prices()
        if self.memory is not None and self.spool.has_records():
            await self.spool.replay(self.memory)
        self._spawn(self._refresh_prices_forever(), "ledger.prices")
        if isinstance(self.journal, SpoolingJournal):
            self._spawn(self.journal.replay_forever(), "ledger.spool")
        if self.writer is not None:
            self._spawn(self.writer.run_forever(), "ledger.writer")
            if limiter is not None:
                self.budget_watcher = BudgetWatcher(
                    self.sessions, limiter, self.clock, acquire=self._lead_budget_round
                )
                self._spawn(self.budget_watcher.run_forever(), "ledger.budgets")

    async def _lead_budget_round(self) -> bool:
        """Whether this process runs this round of budget checks (one process per round)."""
        if not self._clients:
            return True
        key = f"{self.settings.redis_key_prefix}budget-watch:lock"
        try:
            return bool(await self._clients[0].set(key, b"1", nx=True, px=9_000))
        except Exception:
            return False

    def _spawn(self, coroutine: object, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coroutine, name=name))  # type: ignore[arg-type]

    async def served_counts(self) -> dict[str, int]:
        """Hour -> records the journal counted as served (reconciliation)."""
        if self.memory is not None:
            return dict(self.memory.served)
        return await self.stream.served()

    async def pending_payloads(self) -> list[bytes]:
        """Records appended, not yet in the ledger (reconciliation)."""
        if self.memory is not None:
            return self.memory.pending_payloads()
        return await self.stream.pending_payloads()

    async def refresh_prices(self) -> None:
        """Load every price version into a new book."""
        async with self.sessions() as session:
            self.catalog.replace(await load_price_book(session))

    async def _refresh_prices_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.price_refresh_s)
            try:
                await self.refresh_prices()
            except Exception as exc:  # keep the old book; a stale price beats no price
                log.warning("price refresh failed: %s", exc)

    async def stop(self, flush_timeout_s: float = 10.0) -> None:
        """Stop the tasks, write what is left (embedded), spool the rest, close clients."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await _wait_cancelled(task)  # before, a swallowed cancel hung shutdown here
        if self.writer is not None:
            await self.writer.finish(flush_timeout_s)  # the batch it was writing, if any
        if self.writer is not None and self.memory is not None:
            await self.writer.flush(flush_timeout_s)
        if self.memory is not None:
            for payload in self.memory.drain():
                self.spool.append(payload)
        if self._clients:
            await self.stream.aclose()  # appends in flight are answered (or spooled) first
        self.spool.close()
        for client in self._clients:
            await client.aclose()
