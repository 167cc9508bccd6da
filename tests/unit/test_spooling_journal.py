"""The spooling journal: an append the primary cannot store within the timeout is spooled, and
a primary that fails by itself within that time (the Redis batcher) is not wrapped in an
`asyncio.timeout` of its own per append."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway.ledger.pipeline import redis_client
from gateway.ledger.redis_stream import JournalUnavailable, RedisStreamJournal
from gateway.ledger.spool import FileSpool, SpoolingJournal
from gateway.settings import Settings


class _Primary:
    def __init__(self, bound_s: float | None, hang_s: float, fails: bool = False) -> None:
        if bound_s is not None:
            self.append_bound_s = bound_s
        self.hang_s, self.fails = hang_s, fails
        self.stored: list[bytes] = []

    async def append(self, payload: bytes, hour: str) -> None:
        await asyncio.sleep(self.hang_s)
        if self.fails:
            raise JournalUnavailable("gave up")
        self.stored.append(payload)


def _spooled(spool: FileSpool) -> int:
    spool.sync()
    return sum(len(p.read_bytes().splitlines()) for p in spool.directory.glob("*.jsonl"))


@pytest.mark.parametrize(
    ("bound_s", "expected"), [(0.4, True), (0.5, True), (0.6, False), (None, False)]
)
def test_only_a_primary_bounded_within_the_timeout_skips_our_deadline(
    tmp_path: Path, bound_s: float | None, expected: bool
) -> None:
    journal = SpoolingJournal(_Primary(bound_s, 0), FileSpool(tmp_path), timeout_s=0.5)
    assert journal._self_bounded is expected


async def test_an_unbounded_primary_that_hangs_is_spooled_at_the_timeout(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    primary = _Primary(None, hang_s=5)
    journal = SpoolingJournal(primary, spool, timeout_s=0.05)
    started = time.monotonic()
    await journal.append(b'{"a": 1}', "2026120300")
    assert time.monotonic() - started < 1
    assert primary.stored == [] and _spooled(spool) == 1


async def test_a_bounded_primary_that_gives_up_is_spooled(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    journal = SpoolingJournal(_Primary(0.05, hang_s=0.05, fails=True), spool, timeout_s=0.5)
    await journal.append(b'{"a": 1}', "2026120300")
    assert _spooled(spool) == 1


async def test_the_production_stream_journal_is_self_bounded_and_spools_when_redis_is_gone(
    tmp_path: Path,
) -> None:
    """As `LedgerPipeline` builds it (defaults): the batcher's bound is the spool's timeout."""
    settings = Settings(redis_url="redis://127.0.0.1:9/0")  # port 9: nothing listens there
    client = redis_client(settings, timeout_s=max(0.25, settings.redis_timeout_s))
    assert isinstance(client, Redis)
    stream = RedisStreamJournal(client, key_prefix="t:")
    assert stream.append_bound_s == pytest.approx(0.5)
    spool = FileSpool(tmp_path)
    journal = SpoolingJournal(stream, spool)
    assert journal._self_bounded
    started = time.monotonic()
    await journal.append(b'{"a": 1}', "2026120300")
    assert time.monotonic() - started < 1
    assert _spooled(spool) == 1
    await stream.aclose()
    await client.aclose()
