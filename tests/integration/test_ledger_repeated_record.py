"""A record journaled twice and read in one batch is one row, and counts once in the rollup.

It happens for real: a Redis frozen mid-XADD executes the buffered XADD when it resumes, while
the gateway, which timed out, spooled the record and replays it (the long Redis-freeze chaos
run found the daily rollup 2 requests above the rows: `insert_usage` de-duplicated the rows
by `ON CONFLICT (request_id) DO NOTHING` but summed the rollup over every copy; fixed in
a642840). On SQLite and Postgres.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.db import make_engine, make_sessionmaker, migrate
from gateway.db.tables import UsageDaily, UsageEvent
from gateway.db.tenants import create_tenant
from gateway.db.usage import insert_usage
from gateway.settings import Settings
from tests.integration.admin_api import usage_record
from tests.services import PostgresServer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_server: PostgresServer
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        migrate.upgrade(url)
        yield url
        return
    with pg_server.migrated_database() as url:
        yield url


async def test_a_record_twice_in_one_batch_counts_once(database_url: str) -> None:
    engine = make_engine(Settings(database_url=database_url))
    sessions = make_sessionmaker(engine)
    try:
        async with sessions() as session, session.begin():
            tenant = await create_tenant(session, name="twice", now=datetime.now(UTC))
        record = usage_record(tenant.id, datetime.now(UTC))
        async with sessions() as session, session.begin():
            new = await insert_usage(session, [record, record])
        async with sessions() as session:
            rows = (await session.execute(select(func.count()).select_from(UsageEvent))).scalar()
            daily = (await session.execute(select(func.sum(UsageDaily.requests)))).scalar()
            cost = (await session.execute(select(func.sum(UsageDaily.cost_micros)))).scalar()
    finally:
        await engine.dispose()
    assert (rows, new) == (1, 1)
    assert (daily, cost) == (1, record.cost_micros), f"rollup {daily} requests for {rows} row"
