"""The audit log: every admin change, who made it, before and after, in the same transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.admin.auth import AdminActor
from gateway.db.tables import AuditRecord


async def audit(
    session: AsyncSession,
    actor: AdminActor,
    action: str,
    resource_type: str,
    resource_id: str,
    *,
    now: datetime,
    tenant_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Record one change (flushed with the change it describes; never holds a secret)."""
    session.add(
        AuditRecord(
            at=now,
            actor=actor.label,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            tenant_id=tenant_id,
            before=before,
            after=after,
        )
    )
    await session.flush()
