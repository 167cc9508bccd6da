"""`/admin/v1/tenants`: create, list, read, update (PATCH with If-Match) and delete tenants.

A change that affects admission (status, residency, allowed models, default output) is
propagated to every replica's principal cache at once (`Invalidator`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from gateway.admin.api import READERS, Call, Conflict, Operation, Reply, Unprocessable
from gateway.admin.audit import audit
from gateway.admin.pages import paginate
from gateway.admin.schemas import Page, Tenant, TenantCreate, TenantPage, TenantUpdate
from gateway.db import tables
from gateway.db.keys import list_keys
from gateway.db.tenants import get_tenant_by_name
from gateway.errors import NotFound


def as_tenant(row: tables.Tenant) -> Tenant:
    """The wire shape of a tenant row."""
    return Tenant(
        id=row.id,
        name=row.name,
        residency=row.residency,
        allowed_models=row.allowed_models,
        default_output_tokens=row.default_output_tokens,
        status=row.status,
        created_at=row.created_at,
    )


async def load_tenant(call: Call, tenant_id: str | None = None) -> tables.Tenant:
    """The tenant named by the path (or `tenant_id`), or 404."""
    tenant_id = tenant_id or call.params["tenant_id"]
    row = await call.session.get(tables.Tenant, tenant_id)
    if row is None:
        raise NotFound(f"No tenant with id {tenant_id!r}.", param="tenant_id")
    return row


def propagate(call: Call, tenant_id: str, key_hashes: Sequence[str] = ()) -> None:
    """After commit: drop the tenant's cached principals on every replica (and the cached
    results of `key_hashes`, which a tenant-wide invalidation does not reach)."""
    invalidator = call.services.invalidator
    if invalidator is not None:

        async def publish() -> None:
            await invalidator.publish(tenant=tenant_id)
            for key_hash in key_hashes:
                await invalidator.publish(key_hash=key_hash)

        call.after_commit.append(publish)


def _dump(tenant: Tenant) -> dict[str, Any]:
    return tenant.model_dump(mode="json")


async def create_tenant(call: Call) -> Reply:
    body: TenantCreate = call.body
    if await get_tenant_by_name(call.session, body.name) is not None:
        raise Conflict(f"A tenant named {body.name!r} already exists.", param="name")
    row = tables.Tenant(
        name=body.name,
        residency=body.residency,
        allowed_models=body.allowed_models,
        default_output_tokens=body.default_output_tokens,
        status=body.status,
        created_at=call.now,
    )
    call.session.add(row)
    await call.session.flush()
    tenant = as_tenant(row)
    await audit(
        call.session, call.actor, "tenant.create", "tenant", row.id,
        now=call.now, tenant_id=row.id, after=_dump(tenant),
    )  # fmt: skip
    return Reply(tenant, status=201, etag=True, headers={"location": f"/admin/v1/tenants/{row.id}"})


async def list_tenants(call: Call) -> Reply:
    page: Page = call.query
    rows, cursor = await paginate(
        call.session, select(tables.Tenant), tables.Tenant.created_at, tables.Tenant.id, page
    )
    return Reply(TenantPage(data=[as_tenant(r) for r in rows], next_cursor=cursor))


async def get_tenant(call: Call) -> Reply:
    return Reply(as_tenant(await load_tenant(call)), etag=True)


async def update_tenant(call: Call) -> Reply:
    row = await load_tenant(call)
    before = as_tenant(row)
    call.check_version(before)
    body: TenantUpdate = call.body
    changes = body.model_dump(exclude_unset=True)
    for required in ("name", "residency", "status"):
        if required in changes and changes[required] is None:
            raise Unprocessable(f"{required}: may not be null.", param=required)
    renamed = changes.get("name", row.name) != row.name
    if renamed and await get_tenant_by_name(call.session, changes["name"]) is not None:
        raise Conflict(f"A tenant named {changes['name']!r} already exists.", param="name")
    for name, value in changes.items():
        setattr(row, name, value)
    await call.session.flush()
    after = as_tenant(row)
    await audit(
        call.session, call.actor, "tenant.update", "tenant", row.id,
        now=call.now, tenant_id=row.id, before=_dump(before), after=_dump(after),
    )  # fmt: skip
    # A suspended tenant's keys are cached as refusals, which carry no tenant: reactivating
    # it must drop them key by key, or every replica refuses them until the cache TTL.
    refused: list[str] = []
    if before.status != "active" and after.status == "active":
        refused = [key.key_hash for key in await list_keys(call.session, row.id)]
    propagate(call, row.id, refused)
    return Reply(after, etag=True)


async def delete_tenant(call: Call) -> Reply:
    row = await load_tenant(call)
    before = as_tenant(row)
    call.check_version(before)
    await call.session.delete(row)  # keys, limits and budget go with it (ON DELETE CASCADE)
    await call.session.flush()
    await audit(
        call.session, call.actor, "tenant.delete", "tenant", before.id,
        now=call.now, tenant_id=before.id, before=_dump(before),
    )  # fmt: skip
    propagate(call, before.id)
    return Reply(None, status=204)


OPERATIONS = [
    Operation("POST", "/tenants", create_tenant, "Create a tenant", "tenants",
              body=TenantCreate, response=Tenant, status=201, errors=(409,)),
    Operation("GET", "/tenants", list_tenants, "List tenants", "tenants",
              roles=READERS, query=Page, response=TenantPage, errors=()),
    Operation("GET", "/tenants/{tenant_id}", get_tenant, "Read a tenant", "tenants",
              roles=READERS, response=Tenant),
    Operation("PATCH", "/tenants/{tenant_id}", update_tenant, "Update a tenant (If-Match)",
              "tenants", body=TenantUpdate, response=Tenant, errors=(404, 409, 412)),
    Operation("DELETE", "/tenants/{tenant_id}", delete_tenant, "Delete a tenant and its keys",
              "tenants", status=204, errors=(404, 412)),
]  # fmt: skip
