"""Key → principal on real SQLite and Postgres: outcomes, caching, coalescing, outages.

Every test runs on both backends. Time is a fake clock (no sleeps); "no DB query" is asserted
by counting the statements the engine sends that touch `api_keys`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.auth.keys import display_prefix, generate_key, hash_key
from gateway.auth.principal import (
    EXPIRED_KEY,
    MALFORMED_KEY,
    MISSING_KEY,
    NOT_BEARER,
    REVOKED_KEY,
    SUSPENDED_TENANT,
    UNKNOWN_KEY,
    Authenticator,
    Principal,
)
from gateway.db import make_engine, make_sessionmaker, migrate
from gateway.db.keys import insert_key, revoke_key
from gateway.db.tables import ApiKey, Tenant
from gateway.db.tenants import create_tenant, get_tenant, get_tenant_by_name
from gateway.errors import DependencyUnavailable, InvalidRequest, Unauthenticated
from gateway.routing.residency import ResidencyPolicy
from gateway.settings import Settings
from tests.services import free_port

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

    def key_lookups(self) -> int:
        """How many statements touched api_keys so far."""
        return sum("api_keys" in s for s in self.statements)


@pytest.fixture(scope="module")
def sqlite_db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('principal') / 'gateway.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def postgres_db_url(pg_database_url: str) -> str:
    migrate.upgrade(pg_database_url)
    return pg_database_url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_db_url")


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Db]:
    engine = make_engine(Settings(database_url=db_url))
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


@pytest.fixture
def auth(db: Db, clock: FakeClock) -> Authenticator:
    return Authenticator(db.sessionmaker, pepper=PEPPER, clock=clock, ttl_s=TTL_S)


@dataclass(frozen=True)
class Issued:
    key: str
    key_id: str
    tenant_id: str
    tenant_name: str


async def issue_key(
    db: Db,
    clock: FakeClock,
    *,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    residency: str = "any",
) -> Issued:
    """A new tenant with one key, committed."""
    name = f"team-{uuid.uuid4().hex[:10]}"
    key = generate_key()
    async with db.sessionmaker.begin() as session:
        tenant = await create_tenant(
            session, name=name, residency=residency, allowed_models=allowed_models, now=clock.now()
        )
        row = await insert_key(
            session,
            tenant_id=tenant.id,
            key_hash=hash_key(key, PEPPER),
            prefix=display_prefix(key),
            name="ci",
            expires_at=expires_at,
            now=clock.now(),
        )
    return Issued(key, row.id, tenant.id, name)


def bearer(key: str) -> str:
    return f"Bearer {key}"


async def test_valid_key_authenticates(db: Db, clock: FakeClock, auth: Authenticator) -> None:
    issued = await issue_key(db, clock, residency="eu", allowed_models=["small", "large"])

    principal = await auth.authenticate(bearer(issued.key))

    assert principal == Principal(
        tenant_id=issued.tenant_id,
        key_id=issued.key_id,
        tenant_name=issued.tenant_name,
        residency=ResidencyPolicy.parse("eu"),
        allowed_models=frozenset({"small", "large"}),
    )
    other = await issue_key(db, clock)
    assert (await auth.authenticate(f"bearer   {other.key} ")).allowed_models is None


async def test_cache_hit_does_no_db_query(db: Db, clock: FakeClock, auth: Authenticator) -> None:
    issued = await issue_key(db, clock)
    before = db.key_lookups()
    first = await auth.authenticate(bearer(issued.key))
    assert db.key_lookups() == before + 1

    clock.advance(TTL_S / 2)
    for _ in range(5):
        assert await auth.authenticate(bearer(issued.key)) is first
    assert db.key_lookups() == before + 1

    clock.advance(TTL_S)  # past the TTL: read again
    assert await auth.authenticate(bearer(issued.key)) == first
    assert db.key_lookups() == before + 2


async def test_unknown_key_is_401_and_cached(db: Db, auth: Authenticator) -> None:
    unknown = generate_key()
    before = db.key_lookups()
    for _ in range(3):
        with pytest.raises(Unauthenticated) as caught:
            await auth.authenticate(bearer(unknown))
        assert caught.value.message == UNKNOWN_KEY
        assert caught.value.status == 401
    assert db.key_lookups() == before + 1


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, MISSING_KEY),
        ("", MISSING_KEY),
        ("Bearer ", MISSING_KEY),
        ("Basic dXNlcjpwYXNz", NOT_BEARER),
        ("Bearer gwk_not-a-key", MALFORMED_KEY),
        ("Bearer sk-" + "a" * 48, MALFORMED_KEY),
    ],
)
async def test_bad_headers_are_refused_without_any_db_query(
    db: Db, clock: FakeClock, header: str | None, message: str
) -> None:
    def no_database() -> AsyncSession:
        raise AssertionError("the database must not be touched")

    guarded = Authenticator(no_database, pepper=PEPPER, clock=clock, ttl_s=TTL_S)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated) as caught:
        await guarded.authenticate(header)
    assert caught.value.message == message
    assert db.statements == []


async def test_one_char_typo_is_refused_without_any_db_query(
    db: Db, clock: FakeClock, auth: Authenticator
) -> None:
    issued = await issue_key(db, clock)
    swapped = "a" if issued.key[10] != "a" else "b"
    typo = issued.key[:10] + swapped + issued.key[11:]
    before = len(db.statements)
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(bearer(typo))
    assert caught.value.message == MALFORMED_KEY
    assert typo not in caught.value.message
    assert len(db.statements) == before


async def test_revoked_key_is_refused_after_the_ttl(
    db: Db, clock: FakeClock, auth: Authenticator
) -> None:
    issued = await issue_key(db, clock)
    await auth.authenticate(bearer(issued.key))

    async with db.sessionmaker.begin() as session:
        assert await revoke_key(session, issued.key_id, now=clock.now())
        assert not await revoke_key(session, issued.key_id, now=clock.now())  # already revoked

    clock.advance(TTL_S / 2)  # still cached: the documented propagation delay
    await auth.authenticate(bearer(issued.key))

    clock.advance(TTL_S)
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(bearer(issued.key))
    assert caught.value.message == REVOKED_KEY


async def test_expired_key_is_refused(db: Db, clock: FakeClock, auth: Authenticator) -> None:
    issued = await issue_key(db, clock, expires_at=clock.now() - timedelta(seconds=1))
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(bearer(issued.key))
    assert caught.value.message == EXPIRED_KEY


async def test_key_expiring_while_cached_is_refused_without_a_query(
    db: Db, clock: FakeClock, auth: Authenticator
) -> None:
    issued = await issue_key(db, clock, expires_at=clock.now() + timedelta(seconds=10))
    await auth.authenticate(bearer(issued.key))
    lookups = db.key_lookups()

    clock.wall_s += 11  # wall time passes the expiry; the cache entry itself is still fresh
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(bearer(issued.key))
    assert caught.value.message == EXPIRED_KEY
    assert db.key_lookups() == lookups


async def test_suspended_tenant_is_refused(db: Db, clock: FakeClock, auth: Authenticator) -> None:
    issued = await issue_key(db, clock)
    async with db.sessionmaker.begin() as session:
        await session.execute(
            update(Tenant).where(Tenant.id == issued.tenant_id).values(status="suspended")
        )
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(bearer(issued.key))
    assert caught.value.message == SUSPENDED_TENANT


async def test_concurrent_misses_share_one_query(
    db: Db, clock: FakeClock, auth: Authenticator
) -> None:
    issued = await issue_key(db, clock)
    unknown = generate_key()
    before = db.key_lookups()

    results = await asyncio.gather(
        *(auth.authenticate(bearer(issued.key)) for _ in range(10)),
        *(auth.authenticate(bearer(unknown)) for _ in range(10)),
        return_exceptions=True,
    )

    assert all(isinstance(r, Principal) for r in results[:10])
    assert all(isinstance(r, Unauthenticated) for r in results[10:])
    assert db.key_lookups() == before + 2


async def test_cache_is_bounded(db: Db, clock: FakeClock) -> None:
    auth = Authenticator(db.sessionmaker, pepper=PEPPER, clock=clock, ttl_s=TTL_S, max_entries=2)
    first, second, third = [await issue_key(db, clock) for _ in range(3)]
    lookups = db.key_lookups()
    for issued in (first, second, third):
        await auth.authenticate(bearer(issued.key))
    await auth.authenticate(bearer(third.key))  # still cached
    assert db.key_lookups() == lookups + 3
    await auth.authenticate(bearer(first.key))  # evicted as the oldest: read again
    assert db.key_lookups() == lookups + 4


async def test_invalidate_forces_a_fresh_read(
    db: Db, clock: FakeClock, auth: Authenticator
) -> None:
    issued = await issue_key(db, clock)
    await auth.authenticate(bearer(issued.key))
    async with db.sessionmaker.begin() as session:
        await revoke_key(session, issued.key_id, now=clock.now())

    auth.invalidate(hash_key(issued.key, PEPPER))
    with pytest.raises(Unauthenticated) as caught:
        await auth.authenticate(bearer(issued.key))
    assert caught.value.message == REVOKED_KEY


@pytest.fixture(params=["sqlite", "postgres"])
def unreachable_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}"  # a directory: SQLite cannot open it
    else:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"


async def test_database_down_is_dependency_unavailable(
    unreachable_url: str, clock: FakeClock
) -> None:
    engine = make_engine(Settings(database_url=unreachable_url))
    try:
        auth = Authenticator(make_sessionmaker(engine), pepper=PEPPER, clock=clock, ttl_s=TTL_S)
        with pytest.raises(DependencyUnavailable, match="database unavailable") as caught:
            await auth.authenticate(bearer(generate_key()))
        assert caught.value.status == 503
        assert not isinstance(caught.value, Unauthenticated)
    finally:
        await engine.dispose()


async def test_tenant_rules_and_utc_timestamps(db: Db, clock: FakeClock) -> None:
    issued = await issue_key(db, clock, expires_at=clock.now() + timedelta(days=30))
    async with db.sessionmaker() as session:
        tenant = await get_tenant(session, issued.tenant_id)
        assert tenant is not None
        assert await get_tenant_by_name(session, issued.tenant_name) is not None
        assert await get_tenant(session, str(uuid.uuid4())) is None
        assert tenant.created_at == clock.now()
        assert tenant.created_at.tzinfo is not None
        assert tenant.status == "active"
        key = await session.get(ApiKey, issued.key_id)
        assert key is not None
        assert key.expires_at == clock.now() + timedelta(days=30)
        assert key.expires_at.utcoffset() == timedelta(0)

    with pytest.raises(InvalidRequest, match="already exists"):
        async with db.sessionmaker.begin() as session:
            await create_tenant(session, name=issued.tenant_name, now=clock.now())
    with pytest.raises(InvalidRequest, match="Unknown residency"):
        async with db.sessionmaker.begin() as session:
            await create_tenant(session, name="x", residency="us", now=clock.now())


async def test_deleting_a_tenant_deletes_its_keys(db: Db, clock: FakeClock) -> None:
    issued = await issue_key(db, clock)
    async with db.sessionmaker.begin() as session:
        tenant = await get_tenant(session, issued.tenant_id)
        await session.delete(tenant)
    async with db.sessionmaker() as session:
        assert await session.get(ApiKey, issued.key_id) is None
