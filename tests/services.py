"""Real Redis and Postgres for the test suite.

Prefers the servers already running on 127.0.0.1 (Postgres :5432 trust auth, Redis :6379). Where
none answers, starts a throwaway one from the local binaries (pytest-postgresql / pytest-redis
executors); `scripts/test.sh` installs those binaries with apt when they are missing. Each run
gets its own database and its own Redis key prefix, and removes them afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis as redis_sync


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Set to 1 to ignore servers already running and start throwaway ones (what a bare machine does).
FORCE_THROWAWAY = os.environ.get("GATEWAY_TEST_THROWAWAY_SERVERS") == "1"


def _reachable(host: str, port: int) -> bool:
    if FORCE_THROWAWAY:
        return False
    with suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str = "postgres"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def async_url(self, dbname: str) -> str:
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{dbname}"

    def create_database(self) -> str:
        name = f"gw_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def migrated_database(self) -> Iterator[str]:
        """A new database at the migrations' head; yields its async URL, drops it on exit."""
        from gateway.db import migrate  # the gateway only where a test asks for its schema

        name = self.create_database()
        try:
            url = self.async_url(name)
            migrate.upgrade(url)
            yield url
        finally:
            self.drop_database(name)


def _pg_ctl() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) or [shutil.which("pg_ctl") or ""]
    if not found[-1]:
        raise RuntimeError("no pg_ctl found: run scripts/test.sh, which installs postgresql")
    return found[-1]


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """The local Postgres on :5432, or a throwaway one started from the local binaries."""
    if _reachable("127.0.0.1", 5432):
        yield PostgresServer("127.0.0.1", 5432)
        return
    from pytest_postgresql.executors import PostgreSQLExecutor

    workdir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    executable = _pg_ctl()
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        wrapper = workdir / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- "{executable}" "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
        shutil.chown(workdir, "postgres")
        executable = str(wrapper)
    port = free_port()
    executor = PostgreSQLExecutor(
        executable=executable,
        host="127.0.0.1",
        port=port,
        datadir=str(workdir / "data"),
        unixsocketdir=str(workdir),
        logfile=str(workdir / "pg.log"),
        startparams="-w",
        dbname="postgres",
    )
    executor.start()
    try:
        yield PostgresServer("127.0.0.1", port)
    finally:
        executor.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class RedisServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def delete_prefix(self, prefix: str) -> None:
        client = redis_sync.Redis(host=self.host, port=self.port)
        try:
            batch = [key for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(batch), 500):
                client.delete(*batch[start : start + 500])
        finally:
            client.close()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """The local Redis on :6379, or a throwaway one started from the local binary."""
    if _reachable("127.0.0.1", 6379):
        yield RedisServer("127.0.0.1", 6379)
        return
    from pytest_redis.executor import RedisExecutor

    executable = shutil.which("redis-server") or "/usr/bin/redis-server"
    workdir = Path(tempfile.mkdtemp(prefix="gw-redis-"))
    port = free_port()
    executor = RedisExecutor(
        executable=executable,
        databases=16,
        redis_timeout=30,
        loglevel="notice",
        host="127.0.0.1",
        port=port,
        datadir=workdir,
    )
    executor.start()
    try:
        yield RedisServer("127.0.0.1", port)
    finally:
        executor.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run_prefix() -> str:
    """A Redis key prefix unique to this test run."""
    return f"gwtest:{uuid.uuid4().hex[:10]}:"
