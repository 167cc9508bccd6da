"""`LedgerWriter`: moves usage records from the journal into the database, exactly once.

Loop: read a batch (this writer's unacknowledged entries first), decode, insert the new rows
and their rollup in one transaction, commit, then ack. A crash before the ack re-delivers the
batch (to this writer, or to another one that reclaims it) and ON CONFLICT (request_id) DO
NOTHING makes that harmless, so every record lands exactly once.

Batches fill: after a batch smaller than `batch_size` the writer lingers `linger_s` before
reading again, so at moderate rates it commits one transaction per ~100 ms instead of one per
record (a record arriving alone made a transaction, and the writer's CPU per row 10x that of
a full batch); the ledger lags that much more, nothing else changes.

Failure mode: database down → the batch stays unacked, the writer backs off (up to
`max_backoff_s`) and tries again; the journal keeps growing meanwhile and nothing is lost.
An undecodable entry is logged with its id and acked (it would block the batch forever);
`poison` counts them.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.clock import Clock
from gateway.db.usage import insert_usage
from gateway.ledger.journal import Entry, JournalReader
from gateway.ledger.record import UsageRecord, decode
from gateway.ledger.redis_stream import JournalUnavailable
from gateway.observability import metrics

log = logging.getLogger("gateway.ledger")


class LedgerWriter:
    """One consumer of the journal, writing batches to the database."""

    def __init__(
        self,
        journal: JournalReader,
        sessions: async_sessionmaker[AsyncSession],
        clock: Clock,
        *,
        batch_size: int = 500,
        block_s: float = 1.0,
        max_backoff_s: float = 5.0,
        linger_s: float = 0.1,
    ) -> None:
        self.journal = journal
        self.sessions = sessions
        self.clock = clock
        self.batch_size = batch_size
        self.block_s = block_s
        self.max_backoff_s = max_backoff_s
        self.linger_s = linger_s
        self.written = 0  # rows inserted
        self.duplicates = 0  # records that were already in the table
        self.poison = 0  # undecodable entries dropped
        self.failures = 0  # batches that failed to commit
        self.last_lag_s = 0.0  # age of the newest record of the last batch, when committed
        self._batch: asyncio.Task[int] | None = None  # the batch being written, once read

    async def run_forever(self) -> None:
        """Write batches until cancelled; never raises otherwise."""
        backoff_s = 0.1
        while True:
            try:
                written = await self.write_batch()
                backoff_s = 0.1
                if 0 < written < self.batch_size and self.linger_s > 0:
                    await asyncio.sleep(self.linger_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                metrics.LEDGER_FAILURES.inc()
                log.warning("ledger batch not written (%s); retrying in %.1fs", exc, backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(self.max_backoff_s, backoff_s * 2)

    async def write_batch(self, block_s: float | None = None) -> int:
        """Read, write and ack one batch; returns how many entries it held."""
        wait_s = self.block_s if block_s is None else block_s
        entries = await self.journal.read(self.batch_size, wait_s)
        if not entries:
            return 0
        # A batch once read is written and acked even if this writer is cancelled meanwhile
        # (shutdown; `finish()` waits for it): cancelling the transaction half-way makes
        # SQLAlchemy terminate its connection, and an aiosqlite connection ended that way
        # keeps SQLite's write lock for seconds, so the shutdown flush failed with "database
        # is locked" and spooled what it should have written.
        batch = self._batch = asyncio.ensure_future(self._write(entries))
        try:
            return await asyncio.shield(batch)
        finally:
            if batch.done():
                self._batch = None  # else cancelled mid-write: `finish()` waits for it

    async def finish(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) for a batch whose writing outlived a cancelled writer."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        await asyncio.wait({batch}, timeout=timeout_s)
        if not batch.done():
            batch.cancel()  # its entries stay unacked: they are delivered again later
        try:
            await batch
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.warning("ledger batch not written at shutdown: %s", exc)

    async def _write(self, entries: list[Entry]) -> int:
        records: list[UsageRecord] = []
        for entry_id, payload in entries:
            try:
                records.append(decode(payload))
            except ValueError as exc:
                self.poison += 1
                log.error("dropping unreadable usage entry %s: %s", entry_id, exc)
        if records:
            started = time.perf_counter()
            async with self.sessions() as session, session.begin():
                new = await insert_usage(session, records)
            metrics.DB_SECONDS.labels("ledger_batch").observe(time.perf_counter() - started)
            metrics.LEDGER_ROWS.inc(new)
            self.written += new
            self.duplicates += len(records) - new
            newest_ms = max(r.finished_at_ms for r in records)
            self.last_lag_s = max(0.0, self.clock.now_s() - newest_ms / 1000)
            metrics.LEDGER_LAG.set(self.last_lag_s)
        await self.journal.ack([entry_id for entry_id, _ in entries])
        return len(entries)

    async def flush(self, timeout_s: float) -> bool:
        """Write until the journal has nothing ready (shutdown); False if time ran out."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            try:
                if await self.write_batch(block_s=0.01) == 0:
                    return True
            except (JournalUnavailable, Exception) as exc:
                log.warning("ledger flush interrupted: %s", exc)
                return False
        return False
