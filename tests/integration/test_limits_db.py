"""Stored tenant limits on real SQLite and Postgres: upsert, clear, load, and the Principal.

Each backend gets a migrated database of its own for this module (Postgres via
`pg_server.create_database()`), so the schema under test is the one the migrations build.
Time is a fake clock; "no query" is asserted by counting the statements the engine sends.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.auth.keys import display_prefix, generate_key, hash_key
from gateway.auth.principal import Authenticator
from gateway.db import make_engine, make_sessionmaker, migrate
from gateway.db.keys import insert_key
from gateway.db.limits import clear_limits, list_limits, load_tenant_limits, set_limits
from gateway.db.tables import DEFAULT_MODEL, Limits, Tenant
from gateway.db.tenants import create_tenant, get_tenant
from gateway.errors import InvalidRequest, Unauthenticated
from gateway.limits.policy import UNLIMITED, RateLimits, TenantLimits
from gateway.settings import Settings
from tests.services import PostgresServer

PEPPER = b"test-pepper"
TTL_S = 2.0


class FakeClock:
    """Settable wall and monotonic time."""

    def __init__(self) -> None:
        self.wall_s = 1_800_000_000.0
        self.mono_s = 1_000.0

    def now_s(self) -> float:
        return self.wall_s

    def monotonic_s(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall_s, UTC)


@dataclass
class Db:
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    statements: list[str] = field(default_factory=list)

    def limit_reads(self) -> int:
        return sum("FROM limits" in s for s in self.statements)


@pytest.fixture(scope="module")
def sqlite_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('limits') / 'gateway.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def postgres_db_url(pg_server: PostgresServer) -> Iterator[str]:
    with pg_server.migrated_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest) -> AsyncIterator[Db]:
    url: str = request.getfixturevalue(f"{request.param}_db_url")
    engine = make_engine(Settings(database_url=url))
    db = Db(engine, make_sessionmaker(engine))

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        db.statements.append(statement)

    try:
        yield db
    finally:
        await engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def new_tenant(db: Db, clock: FakeClock) -> str:
    async with db.sessionmaker.begin() as session:
        tenant = await create_tenant(session, name=f"team-{uuid.uuid4().hex[:10]}", now=clock.now())
        return tenant.id


async def load(db: Db, tenant_id: str) -> TenantLimits:
    async with db.sessionmaker() as session:
        return await load_tenant_limits(session, tenant_id)


async def test_a_tenant_without_rows_is_unlimited(db: Db, clock: FakeClock) -> None:
    tenant_id = await new_tenant(db, clock)
    assert await load(db, tenant_id) is UNLIMITED


async def test_set_overwrite_and_clear(db: Db, clock: FakeClock) -> None:
    tenant_id = await new_tenant(db, clock)
    async with db.sessionmaker.begin() as session:
        await set_limits(
            session, tenant_id, model=None, rpm=60, tpm=1000, concurrency=4, now=clock.now()
        )
        await set_limits(session, tenant_id, model="m1", rpm=None, tpm=50, now=clock.now())
        await set_limits(
            session,
            tenant_id,
            model="m2",
            rpm=5,
            tpm=10,
            rpm_burst=8,
            tpm_burst=20,
            now=clock.now(),
        )

    limits = await load(db, tenant_id)
    assert limits == TenantLimits(
        default=RateLimits(rpm=60, tpm=1000),
        models=MappingProxyType(
            {"m1": RateLimits(tpm=50), "m2": RateLimits(rpm=5, tpm=10, rpm_burst=8, tpm_burst=20)}
        ),
        concurrency=4,
    )
    with pytest.raises(TypeError):  # frozen all the way down: a cached value cannot be edited
        limits.models["m3"] = RateLimits()  # type: ignore[index]

    clock.advance(60)
    async with db.sessionmaker.begin() as session:
        # Setting replaces the whole row: the figures left out become unlimited.
        await set_limits(session, tenant_id, model=None, rpm=10, tpm=None, now=clock.now())
        await set_limits(session, tenant_id, model="m1", rpm=1, tpm=None, now=clock.now())
    async with db.sessionmaker() as session:
        rows = await list_limits(session, tenant_id)
    assert [row.model for row in rows] == [DEFAULT_MODEL, "m1", "m2"]  # updated, not duplicated
    assert rows[0].updated_at == clock.now()
    assert await load(db, tenant_id) == TenantLimits(
        default=RateLimits(rpm=10),
        models=MappingProxyType(
            {"m1": RateLimits(rpm=1), "m2": RateLimits(rpm=5, tpm=10, rpm_burst=8, tpm_burst=20)}
        ),
    )

    async with db.sessionmaker.begin() as session:
        assert await clear_limits(session, tenant_id, model="m1")
        assert not await clear_limits(session, tenant_id, model="m1")
        assert await clear_limits(session, tenant_id, model=None)
        assert not await clear_limits(session, tenant_id, model=None)
    assert await load(db, tenant_id) == TenantLimits(
        models=MappingProxyType({"m2": RateLimits(rpm=5, tpm=10, rpm_burst=8, tpm_burst=20)})
    )

    async with db.sessionmaker.begin() as session:
        assert await clear_limits(session, tenant_id, model="m2")
    assert await load(db, tenant_id) is UNLIMITED


async def test_limits_are_per_tenant(db: Db, clock: FakeClock) -> None:
    first, second = await new_tenant(db, clock), await new_tenant(db, clock)
    async with db.sessionmaker.begin() as session:
        await set_limits(session, first, model=None, rpm=1, tpm=None, now=clock.now())
        await set_limits(session, second, model=None, rpm=2, tpm=None, now=clock.now())
    assert (await load(db, first)).default.rpm == 1
    assert (await load(db, second)).default.rpm == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": None, "rpm": 0, "tpm": None}, "rpm must be a positive integer"),
        ({"model": None, "rpm": None, "tpm": -5}, "tpm must be a positive integer"),
        ({"model": "m1", "rpm": 1, "tpm": None, "concurrency": 2}, "Concurrency is tenant-wide"),
        ({"model": None, "rpm": None, "tpm": 1, "rpm_burst": 5}, "rpm_burst needs rpm"),
        ({"model": "", "rpm": 1, "tpm": None}, "empty model name"),
    ],
)
async def test_bad_figures_are_refused(
    db: Db, clock: FakeClock, kwargs: dict[str, Any], message: str
) -> None:
    tenant_id = await new_tenant(db, clock)
    with pytest.raises(InvalidRequest, match=message):
        async with db.sessionmaker.begin() as session:
            await set_limits(session, tenant_id, now=clock.now(), **kwargs)
    assert await load(db, tenant_id) is UNLIMITED


async def test_unknown_tenant_is_refused(db: Db, clock: FakeClock) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        async with db.sessionmaker.begin() as session:
            await set_limits(session, str(uuid.uuid4()), model=None, rpm=1, tpm=1, now=clock.now())


@pytest.mark.parametrize(
    "row",
    [
        {"model": DEFAULT_MODEL, "rpm": 5},  # a second default row
        {"model": "m1", "concurrency": 3},  # concurrency is tenant-wide
        {"model": "m2", "tpm": 0},
        {"model": "m3", "rpm_burst": -1},
    ],
)
async def test_the_schema_enforces_the_invariants(
    db: Db, clock: FakeClock, row: dict[str, Any]
) -> None:
    # Straight inserts, past `set_limits`' own checks: the database must refuse them too.
    tenant_id = await new_tenant(db, clock)
    async with db.sessionmaker.begin() as session:
        await set_limits(session, tenant_id, model=None, rpm=1, tpm=None, now=clock.now())
    with pytest.raises(IntegrityError):
        async with db.sessionmaker.begin() as session:
            session.add(Limits(tenant_id=tenant_id, updated_at=clock.now(), **row))
    async with db.sessionmaker() as session:
        assert len(await list_limits(session, tenant_id)) == 1


async def test_default_output_tokens_must_be_positive(db: Db, clock: FakeClock) -> None:
    tenant_id = await new_tenant(db, clock)
    refused = update(Tenant).where(Tenant.id == tenant_id).values(default_output_tokens=0)
    with pytest.raises(IntegrityError):
        async with db.sessionmaker.begin() as session:
            await session.execute(refused)


async def test_deleting_a_tenant_deletes_its_limits(db: Db, clock: FakeClock) -> None:
    tenant_id = await new_tenant(db, clock)
    async with db.sessionmaker.begin() as session:
        await set_limits(session, tenant_id, model=None, rpm=1, tpm=None, now=clock.now())
        await set_limits(session, tenant_id, model="m1", rpm=1, tpm=None, now=clock.now())
    async with db.sessionmaker.begin() as session:
        await session.delete(await get_tenant(session, tenant_id))
    async with db.sessionmaker() as session:
        count = select(func.count()).select_from(Limits).where(Limits.tenant_id == tenant_id)
        assert await session.scalar(count) == 0


# --- the authenticator carries them -------------------------------------------------------------


async def issue_key(db: Db, clock: FakeClock, tenant_id: str) -> str:
    key = generate_key()
    async with db.sessionmaker.begin() as session:
        await insert_key(
            session,
            tenant_id=tenant_id,
            key_hash=hash_key(key, PEPPER),
            prefix=display_prefix(key),
            now=clock.now(),
        )
    return f"Bearer {key}"


async def test_principal_carries_the_limits_and_sees_changes_after_the_ttl(
    db: Db, clock: FakeClock
) -> None:
    tenant_id = await new_tenant(db, clock)
    async with db.sessionmaker.begin() as session:
        await set_limits(
            session, tenant_id, model=None, rpm=60, tpm=1000, concurrency=4, now=clock.now()
        )
        await set_limits(session, tenant_id, model="m1", rpm=None, tpm=50, now=clock.now())
        tenant = await session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.default_output_tokens = 256
    header = await issue_key(db, clock, tenant_id)
    auth = Authenticator(db.sessionmaker, pepper=PEPPER, clock=clock, ttl_s=TTL_S)

    principal = await auth.authenticate(header)
    assert principal.limits == TenantLimits(
        default=RateLimits(rpm=60, tpm=1000),
        models=MappingProxyType({"m1": RateLimits(tpm=50)}),
        concurrency=4,
    )
    assert principal.default_output_tokens == 256

    async with db.sessionmaker.begin() as session:
        await set_limits(session, tenant_id, model=None, rpm=5, tpm=None, now=clock.now())
        assert await clear_limits(session, tenant_id, model="m1")

    clock.advance(TTL_S / 2)  # still cached: the documented propagation delay, and no query
    statements = len(db.statements)
    assert await auth.authenticate(header) is principal
    assert len(db.statements) == statements

    clock.advance(TTL_S)
    changed = await auth.authenticate(header)
    assert changed.limits == TenantLimits(default=RateLimits(rpm=5))
    assert changed.default_output_tokens == 256


async def test_a_tenant_without_limits_gets_unlimited(db: Db, clock: FakeClock) -> None:
    header = await issue_key(db, clock, await new_tenant(db, clock))
    auth = Authenticator(db.sessionmaker, pepper=PEPPER, clock=clock, ttl_s=TTL_S)
    principal = await auth.authenticate(header)
    assert principal.limits is UNLIMITED
    assert principal.default_output_tokens is None


async def test_refused_keys_do_not_read_limits(db: Db, clock: FakeClock) -> None:
    auth = Authenticator(db.sessionmaker, pepper=PEPPER, clock=clock, ttl_s=TTL_S)
    before = db.limit_reads()
    with pytest.raises(Unauthenticated):
        await auth.authenticate(f"Bearer {generate_key()}")
    assert db.limit_reads() == before
