"""`/admin/v1/audit`: read the audit log, oldest first, optionally for one tenant (admin only).

Keyset-paginated by id, so new records only ever append to the last page and a cursor taken
now still continues where it left off. Entries of deleted tenants stay readable."""

from __future__ import annotations

from sqlalchemy import select

from gateway.admin.api import Call, Operation, Reply
from gateway.admin.pages import paginate
from gateway.admin.schemas import AuditEntry, AuditPage, AuditQuery
from gateway.db.tables import AuditRecord


def as_entry(row: AuditRecord) -> AuditEntry:
    """The wire shape of an audit record."""
    return AuditEntry(
        id=row.id,
        at=row.at,
        actor=row.actor,
        action=row.action,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        tenant_id=row.tenant_id,
        before=row.before,
        after=row.after,
    )


async def list_audit(call: Call) -> Reply:
    query: AuditQuery = call.query
    statement = select(AuditRecord)
    if query.tenant_id is not None:
        statement = statement.where(AuditRecord.tenant_id == query.tenant_id)
    rows, cursor = await paginate(
        call.session, statement, AuditRecord.id, AuditRecord.id, query, is_time=False
    )
    return Reply(AuditPage(data=[as_entry(r) for r in rows], next_cursor=cursor))


OPERATIONS = [
    Operation("GET", "/audit", list_audit, "Read the audit log (oldest first)", "audit",
              query=AuditQuery, response=AuditPage, errors=()),
]  # fmt: skip
