"""The journal: the durable buffer between the request path and the ledger writer.

The request path `append`s a record and never waits on the database; a writer `read`s batches,
commits them, then `ack`s them. Until acked, an entry is delivered again (to the same reader,
or, for the Redis stream, reclaimed by another writer once its reader has been idle too long),
so a writer that dies mid-batch loses nothing; the database's ON CONFLICT makes the re-delivery
harmless. Implementations: `MemoryJournal` here (embedded mode, one process),
`redis_stream.RedisStreamJournal` (production), both behind `spool.SpoolingJournal` when the
primary can fail.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

Entry = tuple[str, bytes]  # (entry id, payload)


class Journal(Protocol):
    """Where the request path appends usage records."""

    async def append(self, payload: bytes, hour: str) -> None:
        """Store one record durably (or raise), and count it as served in `hour`
        (`YYYYMMDDHH`, UTC, of the request's start) for reconciliation."""
        ...


class JournalReader(Protocol):
    """How a ledger writer consumes the journal."""

    async def read(self, max_count: int, block_s: float) -> list[Entry]:
        """Entries not yet acked by this reader first (a retry), else new ones; waits up to
        `block_s` for something to arrive."""
        ...

    async def ack(self, ids: list[str]) -> None:
        """These entries are committed: never deliver them again."""
        ...


class MemoryJournal:
    """An in-process journal for embedded mode: a queue plus the batch in flight."""

    def __init__(self) -> None:
        self._queue: deque[Entry] = deque()
        self._pending: dict[str, bytes] = {}
        self._arrived = asyncio.Event()
        self._next_id = 0
        self.served: dict[str, int] = {}  # hour -> records appended (since this process started)

    def __len__(self) -> int:
        return len(self._queue) + len(self._pending)

    async def append(self, payload: bytes, hour: str) -> None:
        self.append_nowait(payload, hour)

    def append_nowait(self, payload: bytes, hour: str) -> None:
        """`append` without a suspension point (the memory journal cannot fail)."""
        self.served[hour] = self.served.get(hour, 0) + 1
        self._next_id += 1
        self._queue.append((str(self._next_id), payload))
        self._arrived.set()

    async def read(self, max_count: int, block_s: float) -> list[Entry]:
        if self._pending:
            return list(self._pending.items())[:max_count]
        if not self._queue:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), block_s)
            except TimeoutError:
                return []
        batch = [self._queue.popleft() for _ in range(min(max_count, len(self._queue)))]
        self._pending.update(batch)
        return batch

    async def ack(self, ids: list[str]) -> None:
        for entry_id in ids:
            self._pending.pop(entry_id, None)

    def pending_payloads(self) -> list[bytes]:
        """Records appended but not yet acknowledged by the writer (for reconciliation)."""
        return list(self._pending.values()) + [payload for _, payload in self._queue]

    def drain(self) -> list[bytes]:
        """Take every unacked payload out (shutdown: they go to the spool file)."""
        payloads = list(self._pending.values()) + [payload for _, payload in self._queue]
        self._pending.clear()
        self._queue.clear()
        return payloads
