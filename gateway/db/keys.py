"""Queries on `api_keys`: insert, look up by hash (with the tenant), revoke.

Only the HMAC of a key reaches the database (see `gateway/auth/keys.py`). The caller owns the
session and its transaction: these functions flush, never commit.
Failure mode: an unreachable database raises `DependencyUnavailable`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import translate_db_errors
from gateway.db.tables import ApiKey, Tenant


async def insert_key(
    session: AsyncSession,
    *,
    tenant_id: str,
    key_hash: str,
    prefix: str,
    name: str | None = None,
    expires_at: datetime | None = None,
    now: datetime,
) -> ApiKey:
    """Insert a key row for `tenant_id` (flushed, not committed)."""
    key = ApiKey(
        tenant_id=tenant_id,
        key_hash=key_hash,
        prefix=prefix,
        name=name,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(key)
    with translate_db_errors():
        await session.flush()
    return key


async def find_key_by_hash(session: AsyncSession, key_hash: str) -> tuple[ApiKey, Tenant] | None:
    """The key with this hash and its tenant, in one query; None when unknown."""
    stmt = (
        select(ApiKey, Tenant)
        .join(Tenant, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash)
    )
    with translate_db_errors():
        row = (await session.execute(stmt)).one_or_none()
    return None if row is None else (row[0], row[1])


async def revoke_key(session: AsyncSession, key_id: str, *, now: datetime) -> bool:
    """Mark a key revoked; False when it does not exist or was already revoked."""
    stmt = (
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now)
        # Rows already loaded in this session get the new value without a re-select.
        .execution_options(synchronize_session="fetch")
    )
    with translate_db_errors():
        # An UPDATE always yields a cursor result, which carries the matched row count.
        result = cast(CursorResult[Any], await session.execute(stmt))
    return result.rowcount > 0


async def list_keys(session: AsyncSession, tenant_id: str) -> list[ApiKey]:
    """Every key of a tenant, oldest first (revoked ones included)."""
    stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    with translate_db_errors():
        return list((await session.scalars(stmt)).all())
