"""Queries on `tenants`: create and look up the teams that call the gateway.

The caller owns the session and its transaction (these functions flush, never commit), so an
admin operation that touches several tables commits or rolls back as one.
Failure mode: an unreachable database raises `DependencyUnavailable`; a duplicate name or an
unknown residency raises `InvalidRequest` with a message an admin can act on.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.engine import translate_db_errors
from gateway.db.tables import RESIDENCIES, Tenant
from gateway.errors import InvalidRequest


async def create_tenant(
    session: AsyncSession,
    *,
    name: str,
    residency: str = "any",
    allowed_models: list[str] | None = None,
    now: datetime,
) -> Tenant:
    """Insert a tenant (flushed, not committed); duplicate names and bad residency are 400s."""
    if residency not in RESIDENCIES:
        raise InvalidRequest(
            f"Unknown residency {residency!r}: use one of {', '.join(RESIDENCIES)}.",
            param="residency",
        )
    with translate_db_errors():
        # Checked first for a clear message; the unique constraint still catches a race.
        if await get_tenant_by_name(session, name) is not None:
            raise _duplicate(name)
        tenant = Tenant(name=name, residency=residency, allowed_models=allowed_models)
        tenant.created_at = now
        session.add(tenant)
        try:
            await session.flush()
        except IntegrityError as exc:
            # The transaction is now unusable; the caller's `session.begin()` rolls it back.
            raise _duplicate(name) from exc
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    """The tenant with this id, or None."""
    with translate_db_errors():
        return await session.get(Tenant, tenant_id)


async def get_tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    """The tenant with this name, or None."""
    with translate_db_errors():
        result = await session.execute(select(Tenant).where(Tenant.name == name))
        return result.scalar_one_or_none()


def _duplicate(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"A tenant named {name!r} already exists: choose another name.", param="name"
    )
