"""The spool: a local append-only file for usage records the journal could not take.

When Redis is down, `SpoolingJournal` writes each record as one line to this process's spool
file instead (in embedded mode, records still queued at shutdown go there too). A replayer
moves them into the journal once it answers: each spool file is locked (flock) by the process
writing it, and a replayer claims only an unlocked file, by an atomic rename, so several
processes sharing the directory (`serve --workers N`, or a restarted one) never take a file
still being written nor replay one twice at the same time (a file a dead replayer had claimed
is taken over). Lines already replayed when replay fails are dropped from the file, the rest
wait for the next try. A record replayed twice is harmless: the writer inserts with ON
CONFLICT DO NOTHING on `request_id`.

Failure mode: writes are flushed to the OS at once (a killed process loses nothing) and
fsynced by `sync()` about once a second (a machine crash can lose the last second of a Redis
outage). A full disk raises; the record is then lost and logged, which is the only path that
loses one.
"""

from __future__ import annotations

import asyncio
import fcntl
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
CLAIMED_GLOB = "usage-spool-*.replaying-*"  # being replayed, or left by a replayer that died


def _lock(file: IO[bytes]) -> bool:
    """Take the file's exclusive lock without waiting; False when another process holds it.
    A spool file is locked by the process writing or replaying it for as long as it has it
    open (the kernel drops the lock when that process dies)."""
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


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
            self._file = self._open()
        self._file.write(payload + b"\n")
        self._file.flush()
        self._dirty = True
        self.spooled += 1
        metrics.SPOOLED.inc()

    def _open(self) -> IO[bytes]:
        """A new file, locked before it takes a name the replayers look for."""
        self.directory.mkdir(parents=True, exist_ok=True)
        while self.path.exists():  # never append to a file that may already be claimed
            self.path = self.path.with_name(f"{self.path.stem}-{self.spooled}x.jsonl")
        opening = self.path.with_suffix(".opening")
        file = opening.open("ab")
        _lock(file)
        opening.rename(self.path)
        return file

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
        try:
            paths = [*self.directory.glob(SPOOL_GLOB), *self.directory.glob(CLAIMED_GLOB)]
            for path in sorted(paths):
                done, complete = await self._replay_file(path, journal)
                moved += done
                if not complete:
                    return moved  # the journal failed: the rest waits for the next try
        finally:
            metrics.SPOOLED.dec(moved)
        if moved:
            log.info("replayed %d spooled usage records into the journal", moved)
        return moved

    async def _replay_file(self, path: Path, journal: Journal) -> tuple[int, bool]:
        """Replay one file if no live process holds it: its writer (which replays it itself)
        or another replayer. Before, a replayer renamed and deleted files other processes
        (`serve --workers N` shares the directory) still had open, and their later records
        went into the deleted file: lost. Returns (records moved, whether the journal took
        them all)."""
        try:
            source = path.open("rb")
        except OSError:
            return 0, True  # claimed and removed by another process meanwhile
        with source:
            if not _lock(source):
                return 0, True
            claimed = path.with_suffix(f".replaying-{os.getpid()}")
            try:
                os.rename(path, claimed)
            except OSError:
                return 0, True  # another process claimed it first
            lines = [line for line in source.read().split(b"\n") if line]
            done = 0
            try:
                for line in lines:
                    await journal.append(line, record_hour(line))
                    done += 1
            except (JournalUnavailable, TimeoutError, OSError):
                rest = self.directory / f"{path.stem}-rest{done}.jsonl"
                partial = rest.with_suffix(".opening")  # complete before replayers see it
                partial.write_bytes(b"".join(line + b"\n" for line in lines[done:]))
                partial.rename(rest)
                claimed.unlink()
                return done, False
            claimed.unlink()
            return done, True


class SpoolingJournal:
    """A journal that spools to a local file whenever the primary cannot take a record.

    After a failure the primary is skipped for `cooldown_s` (records go straight to the spool,
    and the replayer moves them later): answers wait for their record to be stored, so a
    frozen Redis must cost one timeout per cool-down, not one per request."""

    def __init__(
        self,
        primary: Journal,
        spool: FileSpool,
        *,
        timeout_s: float = 0.5,
        cooldown_s: float = 1.0,
    ) -> None:
        self.primary = primary
        self.spool = spool
        self._timeout_s = timeout_s
        self._cooldown_s = cooldown_s
        self._skip_until = 0.0  # loop time before which the primary is not tried
        # A primary that gives up by itself within the timeout needs no asyncio.timeout of
        # ours around each append (~7 us: a uvloop timer armed and cancelled per request).
        bound_s: float | None = getattr(primary, "append_bound_s", None)
        self._self_bounded = bound_s is not None and bound_s <= timeout_s

    async def append(self, payload: bytes, hour: str) -> None:
        now = asyncio.get_running_loop().time()
        if now < self._skip_until:
            self.spool.append(payload)
            return
        try:
            if self._self_bounded:
                await self.primary.append(payload, hour)
            else:
                async with asyncio.timeout(self._timeout_s):
                    await self.primary.append(payload, hour)
        except (JournalUnavailable, TimeoutError, OSError):
            self._skip_until = asyncio.get_running_loop().time() + self._cooldown_s
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
