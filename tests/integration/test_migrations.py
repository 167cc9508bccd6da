"""Migrations on SQLite and Postgres: same schema, no drift, clean downgrade and re-upgrade.

Sync tests on purpose: `gateway.db.migrate` is synchronous (CLI and deploy steps). Postgres gets
a database of its own here, not the shared `pg_database_url`, because these tests downgrade to
base and other modules keep data in the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from gateway.db import migrate
from gateway.db.tables import metadata
from tests.services import PostgresServer

OUR_TABLES = {
    "tenants",
    "api_keys",
    "limits",
    "prices",
    "usage_events",
    "usage_daily",
    "budgets",
    "budget_alerts",
    "admin_tokens",
    "audit_log",
}


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'gateway.db'}"


@pytest.fixture
def postgres_url(pg_server: PostgresServer) -> Iterator[str]:
    name = pg_server.create_database()
    try:
        yield pg_server.async_url(name)
    finally:
        pg_server.drop_database(name)


def _sync_url(async_url: str) -> str:
    """The same database through a sync driver, for the inspector."""
    url = make_url(async_url)
    driver = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return url.set(drivername=driver).render_as_string(hide_password=False)


def _schema(async_url: str) -> dict[str, Any]:
    """A backend-neutral dump: columns (generic type, length, nullability), keys, indexes."""
    engine = create_engine(_sync_url(async_url))
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            dump: dict[str, Any] = {}
            for table in sorted(insp.get_table_names()):
                dump[table] = {
                    "columns": {
                        col["name"]: (
                            col["type"]._type_affinity.__name__,
                            getattr(col["type"], "length", None),
                            col["nullable"],
                        )
                        for col in insp.get_columns(table)
                    },
                    "pk": tuple(insp.get_pk_constraint(table)["constrained_columns"]),
                    "fks": sorted(
                        (
                            fk["name"],
                            tuple(fk["constrained_columns"]),
                            fk["referred_table"],
                            tuple(fk["referred_columns"]),
                            (fk.get("options") or {}).get("ondelete"),
                        )
                        for fk in insp.get_foreign_keys(table)
                    ),
                    "unique": sorted(
                        (uq["name"], tuple(uq["column_names"]))
                        for uq in insp.get_unique_constraints(table)
                    ),
                    # Postgres also lists the indexes behind unique constraints; SQLite hides them.
                    "indexes": sorted(
                        (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                        for ix in insp.get_indexes(table)
                        if "duplicates_constraint" not in ix
                    ),
                }
            return dump
    finally:
        engine.dispose()


def test_sqlite_and_postgres_get_the_same_schema(sqlite_url: str, postgres_url: str) -> None:
    migrate.upgrade(sqlite_url)
    migrate.upgrade(postgres_url)

    on_sqlite, on_postgres = _schema(sqlite_url), _schema(postgres_url)
    assert on_sqlite == on_postgres
    assert set(on_sqlite) == OUR_TABLES | {"alembic_version"}
    # And the migrated schema is the one the models describe.
    for table in OUR_TABLES:
        assert set(on_sqlite[table]["columns"]) == set(metadata.tables[table].c.keys())
    assert on_sqlite["api_keys"]["unique"] == [("uq_api_keys_key_hash", ("key_hash",))]
    assert on_sqlite["tenants"]["unique"] == [("uq_tenants_name", ("name",))]
    assert on_sqlite["api_keys"]["indexes"] == [("ix_api_keys_tenant_id", ("tenant_id",), False)]
    assert on_sqlite["api_keys"]["fks"] == [
        ("fk_api_keys_tenant_id_tenants", ("tenant_id",), "tenants", ("id",), "CASCADE")
    ]
    # One default row per tenant is this plain constraint (the default row's model is '').
    assert on_sqlite["limits"]["unique"] == [("uq_limits_tenant_id_model", ("tenant_id", "model"))]
    assert on_sqlite["limits"]["columns"]["model"] == ("String", 200, False)
    assert on_sqlite["limits"]["fks"] == [
        ("fk_limits_tenant_id_tenants", ("tenant_id",), "tenants", ("id",), "CASCADE")
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_drift_then_downgrade_and_upgrade_again(
    backend: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(f"{backend}_url")
    migrate.upgrade(url)
    migrate.check(url)  # raises AutogenerateDiffsDetected if a migration is missing

    migrate.downgrade(url, "base")
    assert set(_schema(url)) == {"alembic_version"}

    migrate.upgrade(url)
    assert set(_schema(url)) == OUR_TABLES | {"alembic_version"}
    migrate.check(url)


def test_upgrade_is_idempotent(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    migrate.upgrade(sqlite_url)
    assert set(_schema(sqlite_url)) == OUR_TABLES | {"alembic_version"}


async def test_upgrade_works_from_inside_a_running_loop(sqlite_url: str) -> None:
    # env.py moves to a worker thread when a loop is running, instead of failing in asyncio.run.
    migrate.upgrade(sqlite_url)
    assert set(_schema(sqlite_url)) == OUR_TABLES | {"alembic_version"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_limits_step_down_keeps_tenants_and_their_checks(
    backend: str, request: pytest.FixtureRequest
) -> None:
    # On SQLite, dropping `tenants.default_output_tokens` copies the table: rows and the other
    # CHECK constraints must survive the copy.
    url: str = request.getfixturevalue(f"{backend}_url")
    migrate.upgrade(url)
    engine = create_engine(_sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (id, name, created_at, default_output_tokens)"
                    " VALUES ('t1', 'acme', CURRENT_TIMESTAMP, 256)"
                )
            )
        migrate.downgrade(url, "20261122_0001")
        with engine.begin() as conn:
            assert conn.execute(text("SELECT name FROM tenants")).scalars().all() == ["acme"]
            checks = {ck["name"] for ck in inspect(conn).get_check_constraints("tenants")}
        assert checks == {"ck_tenants_residency", "ck_tenants_status"}
        migrate.upgrade(url)
        migrate.check(url)
    finally:
        engine.dispose()
