"""Tenant API keys: create (the key is shown once), list, read, revoke, rotate with a grace.

Rotation creates a new key and gives the old one an expiry `grace_seconds` away (revoked at
once when the grace is 0), so clients can switch without downtime. Revocation and rotation
are propagated to every replica's principal cache at once."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from gateway.admin.api import Call, Operation, Reply
from gateway.admin.audit import audit
from gateway.admin.pages import paginate
from gateway.admin.schemas import Key, KeyCreate, KeyCreated, KeyPage, KeyRotate, Page
from gateway.admin.tenants import load_tenant
from gateway.auth.keys import display_prefix, generate_key, hash_key
from gateway.db import tables
from gateway.errors import NotFound


def as_key(row: tables.ApiKey, now: datetime) -> Key:
    """The wire shape of a key row (never its hash)."""
    if row.revoked_at is not None:
        status = "revoked"
    elif row.expires_at is not None and row.expires_at <= now:
        status = "expired"
    else:
        status = "active"
    return Key(
        id=row.id,
        tenant_id=row.tenant_id,
        prefix=row.prefix,
        name=row.name,
        status=status,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def _load_key(call: Call) -> tables.ApiKey:
    row = await call.session.get(tables.ApiKey, call.params["key_id"])
    if row is None:
        raise NotFound(f"No key with id {call.params['key_id']!r}.", param="key_id")
    return row


def _propagate(call: Call, row: tables.ApiKey) -> None:
    invalidator = call.services.invalidator
    if invalidator is not None:
        key_hash = row.key_hash
        call.after_commit.append(lambda: invalidator.publish(key_hash=key_hash))


async def _issue(
    call: Call, tenant_id: str, name: str | None, expires_at: datetime | None
) -> KeyCreated:
    plaintext = generate_key()
    row = tables.ApiKey(
        tenant_id=tenant_id,
        key_hash=hash_key(plaintext, call.services.pepper),
        prefix=display_prefix(plaintext),
        name=name,
        created_at=call.now,
        expires_at=expires_at,
    )
    call.session.add(row)
    await call.session.flush()
    return KeyCreated(**as_key(row, call.now).model_dump(), key=plaintext)


async def create_key(call: Call) -> Reply:
    tenant = await load_tenant(call)
    body: KeyCreate = call.body
    expires = call.now + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    created = await _issue(call, tenant.id, body.name, expires)
    public = created.model_dump(mode="json", exclude={"key"})
    await audit(
        call.session, call.actor, "key.create", "key", created.id,
        now=call.now, tenant_id=tenant.id, after=public,
    )  # fmt: skip
    return Reply(created, status=201)


async def list_keys(call: Call) -> Reply:
    tenant = await load_tenant(call)
    statement = select(tables.ApiKey).where(tables.ApiKey.tenant_id == tenant.id)
    page: Page = call.query
    rows, cursor = await paginate(
        call.session, statement, tables.ApiKey.created_at, tables.ApiKey.id, page
    )
    return Reply(KeyPage(data=[as_key(r, call.now) for r in rows], next_cursor=cursor))


async def get_key(call: Call) -> Reply:
    return Reply(as_key(await _load_key(call), call.now), etag=True)


async def revoke_key(call: Call) -> Reply:
    row = await _load_key(call)
    before = as_key(row, call.now)
    if row.revoked_at is None:
        row.revoked_at = call.now
        await call.session.flush()
        await audit(
            call.session, call.actor, "key.revoke", "key", row.id, now=call.now,
            tenant_id=row.tenant_id, before=before.model_dump(mode="json"),
            after=as_key(row, call.now).model_dump(mode="json"),
        )  # fmt: skip
        _propagate(call, row)
    return Reply(None, status=204)


async def rotate_key(call: Call) -> Reply:
    row = await _load_key(call)
    before = as_key(row, call.now)
    if before.status != "active":
        raise NotFound(f"Key {row.id!r} is {before.status}: only an active key rotates.")
    body: KeyRotate = call.body
    created = await _issue(call, row.tenant_id, body.name or row.name, row.expires_at)
    if body.grace_seconds:
        grace_end = call.now + timedelta(seconds=body.grace_seconds)
        row.expires_at = min(row.expires_at, grace_end) if row.expires_at else grace_end
    else:
        row.revoked_at = call.now
    await call.session.flush()
    await audit(
        call.session, call.actor, "key.rotate", "key", row.id, now=call.now,
        tenant_id=row.tenant_id, before=before.model_dump(mode="json"),
        after={"old": as_key(row, call.now).model_dump(mode="json"),
               "new": created.model_dump(mode="json", exclude={"key"})},
    )  # fmt: skip
    _propagate(call, row)
    return Reply(created, status=201)


OPERATIONS = [
    Operation("POST", "/tenants/{tenant_id}/keys", create_key, "Create a key (shown once)",
              "keys", body=KeyCreate, response=KeyCreated, status=201),
    Operation("GET", "/tenants/{tenant_id}/keys", list_keys, "List a tenant's keys", "keys",
              query=Page, response=KeyPage),
    Operation("GET", "/keys/{key_id}", get_key, "Read a key", "keys", response=Key),
    Operation("DELETE", "/keys/{key_id}", revoke_key, "Revoke a key", "keys", status=204),
    Operation("POST", "/keys/{key_id}/rotate", rotate_key,
              "Rotate a key: a new key, the old one works for grace_seconds more", "keys",
              body=KeyRotate, response=KeyCreated, status=201),
]  # fmt: skip
