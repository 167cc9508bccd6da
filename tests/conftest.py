"""Shared fixtures: real Postgres and Redis for this run, settings and config builders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import PostgresServer, RedisServer, postgres_server, redis_server, run_prefix


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_database_url(pg_server: PostgresServer) -> Iterator[str]:
    """An empty Postgres database of this run (async URL); dropped at the end."""
    name = pg_server.create_database()
    try:
        yield pg_server.async_url(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_srv() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_prefix(redis_srv: RedisServer) -> Iterator[str]:
    """This run's own Redis key prefix; every key under it is deleted at the end."""
    prefix = run_prefix()
    try:
        yield prefix
    finally:
        redis_srv.delete_prefix(prefix)
