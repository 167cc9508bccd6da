"""Alembic environment: runs migrations over the gateway's async engine (SQLite or Postgres).

The URL comes from `config.attributes["database_url"]` (set by `gateway.db.migrate`), else from
`Settings().database_url`. The engine is `gateway.db.make_engine`, so SQLite gets the same
pragmas (foreign keys, WAL) as the running gateway. SQLite cannot ALTER most things in place,
so migrations run in batch mode there (copy-and-move tables).

Alembic's commands are synchronous: with no event loop running we drive the async engine with
`asyncio.run`; when called from inside a running loop, we run it on a private loop in a worker
thread (and block the caller until it finishes: migrations are not a request-path operation).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from alembic import context
from sqlalchemy import TypeDecorator
from sqlalchemy.engine import Connection, make_url

from gateway.db.engine import make_engine
from gateway.db.tables import metadata
from gateway.settings import Settings

config = context.config
target_metadata = metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    return str(url) if url else Settings().database_url


def _render_item(type_: str, obj: Any, _autogen_context: Any) -> str | bool:
    # Render our TypeDecorators (UTCDateTime) as their plain SQLAlchemy type, so migration
    # files never import gateway code that may change after they ship.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl!r}"
    return False


def _configure(**kwargs: Any) -> None:
    is_sqlite = make_url(_database_url()).get_backend_name() == "sqlite"
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=is_sqlite,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (`alembic upgrade --sql`)."""
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync_migrations(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async_migrations() -> None:
    engine = make_engine(Settings(database_url=_database_url()))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync_migrations)
    finally:
        await engine.dispose()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=target, name="alembic-migrations")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


def run_migrations_online() -> None:
    """Run migrations against the live database."""
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller handed us a sync connection: use it as is
        _run_sync_migrations(connection)
    else:
        _run(_run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
