"""Admin authentication: `Authorization: Bearer <admin token>` -> `AdminActor` with a role.

Closed by default: no token, an unknown or revoked token, or a tenant key is 401; a finance
token on a write is 403. Admin tokens (`gwa_...`) are stored as an HMAC only and compared in
constant time (the bootstrap token from `GATEWAY_ADMIN_TOKEN` too). Admin calls are rare, so a
token is looked up in the database on every call: a revoked token stops at once.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.keys import has_key_shape, parse_bearer
from gateway.db.tables import AdminToken
from gateway.errors import PermissionDenied, Unauthenticated

TOKEN_PREFIX = "gwa_"  # noqa: S105 - a public marker, not a secret
ADMIN, FINANCE = "admin", "finance"


@dataclass(frozen=True, slots=True)
class AdminActor:
    """Who is calling the admin API."""

    id: str
    name: str
    role: str

    @property
    def label(self) -> str:
        """How the audit log names this actor."""
        return f"{self.name} ({self.id})"


BOOTSTRAP = AdminActor("bootstrap", "bootstrap", ADMIN)


def generate_admin_token() -> str:
    """A new admin token: `gwa_` + 43 url-safe random characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_admin_token(token: str, pepper: bytes) -> str:
    """HMAC-SHA-256 of a token with the server pepper, hex."""
    return hmac.new(pepper, token.encode(), "sha256").hexdigest()


async def authenticate_admin(
    session: AsyncSession, authorization: str | None, *, bootstrap: str | None, pepper: bytes
) -> AdminActor:
    """The actor behind an admin request, or `Unauthenticated`."""
    token = parse_bearer(authorization)
    if token is None:
        raise Unauthenticated("Missing admin token: send `Authorization: Bearer <admin token>`.")
    if has_key_shape(token):
        raise Unauthenticated("Tenant API keys cannot be used on the admin API.")
    if bootstrap and hmac.compare_digest(token.encode(), bootstrap.encode()):
        return BOOTSTRAP
    if not token.startswith(TOKEN_PREFIX):
        raise Unauthenticated("Invalid admin token.")
    digest = hash_admin_token(token, pepper)
    row = await session.scalar(select(AdminToken).where(AdminToken.token_hash == digest))
    # The lookup is by an HMAC of the token, so its timing reveals nothing about the token.
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("Invalid admin token.")
    return AdminActor(row.id, row.name, row.role)


def require_role(actor: AdminActor, roles: frozenset[str]) -> None:
    """403 unless the actor's role is one of `roles`."""
    if actor.role not in roles:
        raise PermissionDenied(
            f"The `{actor.role}` role may not do this (needs {' or '.join(sorted(roles))})."
        )
