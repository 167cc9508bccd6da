"""The database engine: one async SQLAlchemy engine per process, SQLite or Postgres.

Embedded mode uses a SQLite file (`sqlite+aiosqlite`): every connection turns on foreign keys
(SQLite leaves them off by default, so ON DELETE CASCADE would silently not happen) and WAL,
so readers never block the single writer. Production uses Postgres (`postgresql+asyncpg`) with
a bounded pool whose connections are pinged before use, so a Postgres restart costs one retry
inside the pool instead of an error on the next request.

Failure mode: an unreachable database surfaces as `DependencyUnavailable` (503), translated at
the edge of `db/` by `translate_db_errors()`, never as a driver exception or a 401/500.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from gateway.errors import DependencyUnavailable
from gateway.settings import Settings

# Connect timeout for Postgres: a black-holed host must fail fast enough for a 503, not hang
# on asyncpg's 60 s default.
CONNECT_TIMEOUT_S = 5.0
# Pool sizing per process: the hot path never queries (auth is cached), so admin calls and
# cache refreshes are the only users; 10 + 10 overflow leaves headroom without hogging
# Postgres's max_connections when many pods run.
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 10
POOL_TIMEOUT_S = 5.0
POOL_RECYCLE_S = 1800

# Exceptions that mean "the database is not there" rather than "this query is wrong".
# asyncio.TimeoutError is the builtin TimeoutError on 3.11; listed for the reader.
_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # pool checkout timed out: every connection busy or dead
    asyncio.TimeoutError,
    ConnectionRefusedError,
    OSError,
)


# Postgres waits: a statement may run this long, and wait this long for a lock (a locked or
# stuck table answers 503 fast instead of holding a request, RELIABILITY R9); both end the
# statement with SQLSTATE 57014 / 55P03, which `translate_db_errors` reports as unavailable.
STATEMENT_TIMEOUT_MS = 15_000
LOCK_TIMEOUT_MS = 1_000
_UNAVAILABLE_SQLSTATES = frozenset({"57014", "55P03"})  # query_canceled, lock_not_available


def make_engine(settings: Settings) -> AsyncEngine:
    """Build the process's async engine for `settings.database_url` (SQLite or Postgres)."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return _make_sqlite_engine(url)
    connect_args: dict[str, Any] = {}
    if url.get_driver_name() == "asyncpg":
        connect_args["timeout"] = CONNECT_TIMEOUT_S
        connect_args["server_settings"] = {
            "statement_timeout": str(STATEMENT_TIMEOUT_MS),
            "lock_timeout": str(LOCK_TIMEOUT_MS),
        }
    return create_async_engine(
        url,
        pool_size=POOL_SIZE,
        max_overflow=POOL_MAX_OVERFLOW,
        pool_timeout=POOL_TIMEOUT_S,
        pool_recycle=POOL_RECYCLE_S,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Session factory; objects stay readable after commit (no lazy reload in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@contextmanager
def translate_db_errors() -> Iterator[None]:
    """Turn driver/connection failures inside the block into `DependencyUnavailable`."""
    try:
        yield
    except _UNAVAILABLE_ERRORS as exc:
        # Only the class name: driver messages can carry host names or DSNs.
        raise DependencyUnavailable(f"database unavailable ({type(exc).__name__})") from exc
    except sa_exc.DBAPIError as exc:
        if _sqlstate(exc) in _UNAVAILABLE_SQLSTATES:
            raise DependencyUnavailable("database busy (statement or lock timeout)") from exc
        raise


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    """The SQLSTATE of a driver error (asyncpg's, behind SQLAlchemy's adapter), if any."""
    for candidate in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None)
        if isinstance(state, str):
            return state
    return None


def _make_sqlite_engine(url: URL) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database
    if not in_memory and not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if not in_memory:  # WAL needs a file; in-memory databases ignore it anyway
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    return engine
