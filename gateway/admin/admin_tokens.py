"""`/admin/v1/admin-tokens`: issue (the token is shown once), list and revoke admin tokens.

A token is stored as its HMAC with the server pepper and a display prefix, never in clear.
Every admin call looks its token up in the database, so a revoked token is refused (401) on
its very next call, on every replica; no cache to invalidate. The bootstrap token from
`GATEWAY_ADMIN_TOKEN` is not a row here and cannot be revoked through the API."""

from __future__ import annotations

from sqlalchemy import select

from gateway.admin.api import Call, Operation, Reply
from gateway.admin.audit import audit
from gateway.admin.auth import generate_admin_token, hash_admin_token
from gateway.admin.pages import paginate
from gateway.admin.schemas import (
    AdminToken,
    AdminTokenCreate,
    AdminTokenCreated,
    AdminTokenPage,
    Page,
)
from gateway.db import tables
from gateway.errors import NotFound

DISPLAY_PREFIX_CHARS = 12  # `gwa_` and 8 random characters: enough to tell tokens apart


def as_admin_token(row: tables.AdminToken) -> AdminToken:
    """The wire shape of an admin token row (never its hash)."""
    return AdminToken(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def create_admin_token(call: Call) -> Reply:
    body: AdminTokenCreate = call.body
    token = generate_admin_token()
    row = tables.AdminToken(
        name=body.name,
        role=body.role,
        token_hash=hash_admin_token(token, call.services.pepper),
        prefix=token[:DISPLAY_PREFIX_CHARS],
        created_at=call.now,
    )
    call.session.add(row)
    await call.session.flush()
    public = as_admin_token(row)
    await audit(
        call.session, call.actor, "admin_token.create", "admin_token", row.id, now=call.now,
        after=public.model_dump(mode="json"),
    )  # fmt: skip
    return Reply(AdminTokenCreated(**public.model_dump(), token=token), status=201)


async def list_admin_tokens(call: Call) -> Reply:
    page: Page = call.query
    rows, cursor = await paginate(
        call.session,
        select(tables.AdminToken),
        tables.AdminToken.created_at,
        tables.AdminToken.id,
        page,
    )
    return Reply(AdminTokenPage(data=[as_admin_token(r) for r in rows], next_cursor=cursor))


async def revoke_admin_token(call: Call) -> Reply:
    token_id = call.params["token_id"]
    row = await call.session.get(tables.AdminToken, token_id)
    if row is None:
        raise NotFound(f"No admin token with id {token_id!r}.", param="token_id")
    if row.revoked_at is None:
        before = as_admin_token(row)
        row.revoked_at = call.now
        await call.session.flush()
        await audit(
            call.session, call.actor, "admin_token.revoke", "admin_token", row.id,
            now=call.now, before=before.model_dump(mode="json"),
            after=as_admin_token(row).model_dump(mode="json"),
        )  # fmt: skip
    return Reply(None, status=204)


OPERATIONS = [
    Operation("POST", "/admin-tokens", create_admin_token, "Issue an admin token (shown once)",
              "admin-tokens", body=AdminTokenCreate, response=AdminTokenCreated, status=201,
              errors=()),
    Operation("GET", "/admin-tokens", list_admin_tokens, "List admin tokens", "admin-tokens",
              query=Page, response=AdminTokenPage, errors=()),
    Operation("DELETE", "/admin-tokens/{token_id}", revoke_admin_token,
              "Revoke an admin token (refused from its next call on)", "admin-tokens",
              status=204),
]  # fmt: skip
