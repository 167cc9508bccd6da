"""The spool: a local append-only file for usage records the journal could not take.

When Redis is down, `SpoolingJournal` writes each record as one line to this process's spool
file instead (in embedded mode, records still queued at shutdown go there too). A replayer
moves them into the journal once it answers: each spool file is first claimed by an atomic
rename, so several processes sharing the directory (or a restarted one) never replay a file
twice at the same time; lines already replayed when replay fails are dropped from the file,
the rest wait for the next try. A record replayed twice is harmless: the writer inserts with
ON CONFLICT DO NOTHING on `request_id`.

Failure mode: writes are flushed to the OS at once (a killed process loses nothing) and
fsynced by `sync()` about once a second (a machine crash can lose the last second of a Redis
outage). A full disk raises; the record is then lost and logged, which is the only path that
loses one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import IO

from gateway.ledger.journal import Journal
from gateway.ledger.record import record_hour
from gateway.ledger.redis_stream import JournalUnavailable
from gateway.observability import metrics

log = logging.getLogger("gateway.ledger")

SPOOL_GLOB = "usage-spool-*.jsonl"


class FileSpool:
    """This process's spool file, and replay of every spool file in the directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"usage-spool-{os.getpid()}-{id(self):x}.jsonl"
        self._file: IO[bytes] | None = None
        self._dirty = False
        self.spooled = 0  # records written here, for metrics

    def append(self, payload: bytes) -> None:
        """Write one record (a single JSON line) and flush it to the OS."""
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
        self._file.write(payload + b"\n")
        self._file.flush()
        self._dirty = True
        self.spooled += 1
        metrics.SPOOLED.inc()

    def sync(self) -> None:
        """fsync what was appended since the last call."""
        if self._file is not None and self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False

    def close(self) -> None:
        """Sync and close this process's file (empty files are removed)."""
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
            if self.path.exists() and self.path.stat().st_size == 0:
                self.path.unlink()

    def has_records(self) -> bool:
        """Whether any spool file with content exists in the directory."""
        return any(p.stat().st_size > 0 for p in self.directory.glob(SPOOL_GLOB) if p.exists())

    async def replay(self, journal: Journal) -> int:
        """Move every spooled record into `journal`; returns how many went in."""
        if self._file is not None:
            self.close()  # our own file is replayed like the others; new writes start a new one
            self.path = (
                self.directory / f"usage-spool-{os.getpid()}-{id(self):x}-{self.spooled}.jsonl"
            )
        moved = 0
        for path in sorted(self.directory.glob(SPOOL_GLOB)):
            claimed = path.with_suffix(f".replaying-{os.getpid()}")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another process claimed it first
            lines = [line for line in claimed.read_bytes().split(b"\n") if line]
            done = 0
            try:
                for line in lines:
                    await journal.append(line, record_hour(line))
                    done += 1
            except (JournalUnavailable, TimeoutError, OSError):
                rest = self.directory / f"{path.stem}-rest{done}.jsonl"
                rest.write_bytes(b"".join(line + b"\n" for line in lines[done:]))
                claimed.unlink()
                moved += done
                return moved
            claimed.unlink()
            moved += done
        metrics.SPOOLED.dec(moved)
        if moved:
            log.info("replayed %d spooled usage records into the journal", moved)
        return moved


class SpoolingJournal:
    """A journal that spools to a local file whenever the primary cannot take a record."""

    def __init__(self, primary: Journal, spool: FileSpool, *, timeout_s: float = 0.5) -> None:
        self.primary = primary
        self.spool = spool
        self._timeout_s = timeout_s

    async def append(self, payload: bytes, hour: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.primary.append(payload, hour)
        except (JournalUnavailable, TimeoutError, OSError):
            self.spool.append(payload)

    async def replay_forever(self, interval_s: float = 1.0) -> None:
        """Background task: fsync the spool and replay it into the primary when possible."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.spool.sync()
                if self.spool.has_records():
                    await self.spool.replay(self.primary)
            except Exception:
                log.exception("spool replay failed; will retry")
