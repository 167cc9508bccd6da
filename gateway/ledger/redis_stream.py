"""`RedisStreamJournal`: usage records in a Redis Stream, consumed by a group of ledger writers.

Appends are one XADD (plus the served count), batched: the appends of one event-loop turn
share one write (`RedisBatcher`, standalone Redis). Writers form the consumer group `ledger`; each reads its own pending
entries first (a batch it failed to commit), then reclaims entries another writer has held for
longer than `reclaim_idle_s` (XAUTOCLAIM: that writer is presumed dead), then new ones
(XREADGROUP >). An entry is XACKed and XDELeted only after its batch committed, so the stream
holds exactly the records not yet in the database.

Failure mode: Redis errors become `JournalUnavailable`; the request path's `SpoolingJournal`
spools the record to a local file instead, and writers retry later.
"""

from __future__ import annotations

import socket

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from gateway.ledger.journal import Entry
from gateway.redis_batch import RedisBatcher

GROUP = "ledger"
FIELD = b"r"


class JournalUnavailable(Exception):
    """The journal's store did not take or give records."""


def stream_key(key_prefix: str) -> str:
    """The usage stream's key (a contract with running writers). The `{usage}` hash tag puts
    it in the same Cluster slot as the served counter, so one pipeline reaches one node."""
    return f"{key_prefix}{{usage}}:stream:v1"


def served_key(key_prefix: str) -> str:
    """Hash of hour (`YYYYMMDDHH`) -> records appended: what reconciliation counts."""
    return f"{key_prefix}{{usage}}:served:v1"


class RedisStreamJournal:
    """Append to, and consume as one writer of the group, the usage stream."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        key_prefix: str,
        consumer: str | None = None,
        reclaim_idle_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._batch = RedisBatcher(redis) if isinstance(redis, Redis) else None
        self.key = stream_key(key_prefix)
        self.served_key = served_key(key_prefix)
        self.consumer = consumer or f"{socket.gethostname()}-{id(self):x}"
        self._reclaim_idle_ms = int(reclaim_idle_s * 1000)
        self._group_ready = False

    @property
    def append_bound_s(self) -> float | None:
        """The longest an append can take before it fails by itself (None: no such bound,
        the redis-py path)."""
        return self._batch.bound_s if self._batch is not None else None

    async def append(self, payload: bytes, hour: str) -> None:
        """XADD the record and count it, in one round trip (a pipeline, not a transaction:
        a crash between the two can only leave the count one short, which reconciliation
        would report rather than hide)."""
        try:
            if self._batch is not None:
                added = self._batch.call("XADD", self.key, "*", FIELD, payload)
                counted = self._batch.call("HINCRBY", self.served_key, hour, 1)
                await added
                await counted
                return
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(self.key, {FIELD: payload})
            pipe.hincrby(self.served_key, hour, 1)
            await pipe.execute()
        except Exception as exc:  # any client failure means "not stored": spool it
            raise JournalUnavailable(f"XADD failed: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        """Answer the appends in flight, then close the append connection (shutdown)."""
        if self._batch is not None:
            await self._batch.aclose()

    async def served(self) -> dict[str, int]:
        """Hour -> records appended, as counted at append time."""
        raw = await self._redis.hgetall(self.served_key)
        return {_text(hour): int(count) for hour, count in raw.items()}

    async def pending_payloads(self, max_count: int = 10_000) -> list[bytes]:
        """Records in the stream not yet committed by a writer (for reconciliation)."""
        entries = await self._redis.xrange(self.key, count=max_count)
        return [(fields or {}).get(FIELD, b"") for _, fields in entries]

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def read(self, max_count: int, block_s: float) -> list[Entry]:
        try:
            await self._ensure_group()
            own = await self._redis.xreadgroup(
                GROUP, self.consumer, {self.key: "0"}, count=max_count
            )
            entries = _entries(own)
            if entries:
                return entries
            claimed = await self._redis.xautoclaim(
                self.key, GROUP, self.consumer, self._reclaim_idle_ms, "0-0", count=max_count
            )
            entries = _claimed(claimed)
            if entries:
                return entries
            fresh = await self._redis.xreadgroup(
                GROUP,
                self.consumer,
                {self.key: ">"},
                count=max_count,
                block=max(1, int(block_s * 1000)),
            )
            return _entries(fresh)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted (Redis restarted empty)
                self._group_ready = False
            raise JournalUnavailable(f"read failed: {exc}") from exc
        except Exception as exc:
            raise JournalUnavailable(f"read failed: {type(exc).__name__}") from exc

    async def ack(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xack(self.key, GROUP, *ids)
            pipe.xdel(self.key, *ids)
            await pipe.execute()
        except Exception as exc:
            raise JournalUnavailable(f"ack failed: {type(exc).__name__}") from exc

    async def backlog(self) -> int:
        """Entries in the stream: appended and not yet committed by a writer."""
        return int(await self._redis.xlen(self.key))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(reply: object) -> list[Entry]:
    """XREADGROUP's reply, `[[stream, [(id, fields), ...]]]`, as (id, payload) pairs. An entry
    deleted while pending comes back with no fields: it gets an empty payload, which the
    writer treats as unreadable and acks."""
    if not reply:
        return []
    return [(_text(i), (v or {}).get(FIELD, b"")) for _, messages in reply for i, v in messages]  # type: ignore[union-attr]


def _claimed(reply: object) -> list[Entry]:
    """XAUTOCLAIM's reply: `[next, [(id, fields), ...], deleted ids]`."""
    if not reply:
        return []
    return [(_text(i), (v or {}).get(FIELD, b"")) for i, v in reply[1]]  # type: ignore[index]
