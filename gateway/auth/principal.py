"""Who is calling: `Authorization: Bearer <key>` → `Principal` (the tenant snapshot for a request).

This is the first step of the hot path, so the database is read at most once per key per
`ttl_s` (a miss runs three queries: the key with its tenant, then an accepted tenant's limits and budget):
results, including failures (unknown, revoked, suspended), are cached in process by key hash,
and concurrent misses on one key share one lookup. Malformed keys are rejected by
their shape and checksum before any lookup. A cache hit costs a parse, a shape check, an HMAC
and a dict lookup (a few µs); a key's own `expires_at` is still checked on every hit. The
cache is bounded (oldest entry evicted first) so a flood of random well-formed keys cannot
grow memory without limit.

Failure mode: database unreachable or slower than `lookup_timeout_s` → `DependencyUnavailable`
(503), never a 401, so an outage does not look like bad credentials; cached principals keep
working until their TTL runs out. Messages never echo the key.
Invariant: a revoked key, a suspended tenant or a changed limit takes effect within `ttl_s`
(sooner on replicas that receive an `invalidate()`).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.auth.keys import has_key_shape, hash_key, is_well_formed, parse_bearer
from gateway.clock import Clock
from gateway.db.budgets import load_budget
from gateway.db.engine import translate_db_errors
from gateway.db.keys import find_key_by_hash
from gateway.db.limits import load_tenant_limits
from gateway.db.tables import ApiKey, Tenant
from gateway.errors import Unauthenticated
from gateway.limits.budget import BudgetPolicy
from gateway.limits.policy import UNLIMITED, TenantLimits
from gateway.observability import metrics
from gateway.routing.residency import ResidencyPolicy

MISSING_KEY = "Missing API key: send `Authorization: Bearer <key>`."
NOT_BEARER = "Unsupported authorization scheme: send `Authorization: Bearer <key>`."
MALFORMED_KEY = "Invalid API key: it is not a well-formed gateway key (check for a copy error)."
UNKNOWN_KEY = "Invalid API key."
REVOKED_KEY = "This API key has been revoked."
EXPIRED_KEY = "This API key has expired."
SUSPENDED_TENANT = "This tenant is suspended."

DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_LOOKUP_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: one key of one tenant, with the tenant's policy."""

    tenant_id: str
    key_id: str
    tenant_name: str
    residency: ResidencyPolicy
    allowed_models: frozenset[str] | None
    limits: TenantLimits = UNLIMITED
    default_output_tokens: int | None = None  # None: the routing file's default applies
    budget: BudgetPolicy | None = None


class _Entry:
    """One cached lookup: a principal, or the reason the key is refused."""

    __slots__ = ("failure", "fresh_until", "key_expires_at_s", "principal")

    def __init__(
        self,
        principal: Principal | None,
        failure: str | None = None,
        key_expires_at_s: float | None = None,
    ) -> None:
        self.principal = principal
        self.failure = failure
        self.key_expires_at_s = key_expires_at_s
        self.fresh_until = 0.0  # monotonic seconds; set when cached


class Authenticator:
    """Resolves bearer keys to principals, through a TTL cache in front of the database."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        pepper: bytes,
        clock: Clock,
        ttl_s: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        lookup_timeout_s: float = DEFAULT_LOOKUP_TIMEOUT_S,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._pepper = pepper
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._lookup_timeout_s = lookup_timeout_s
        # OrderedDict, not dict: evicting the oldest entry is O(1) under a flood of misses.
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an `Authorization` header value, or `Unauthenticated`."""
        key = parse_bearer(authorization)
        if key is None:
            raise Unauthenticated(_no_key_reason(authorization))
        if not has_key_shape(key):
            raise Unauthenticated(MALFORMED_KEY)
        key_hash = hash_key(key, self._pepper)
        entry = self._cache.get(key_hash)
        if entry is None or entry.fresh_until <= self._clock.monotonic_s():
            # The checksum is verified only before a lookup: a cached entry was stored for a
            # key that already passed it (same HMAC, same key), so hits skip that cost.
            if not is_well_formed(key):
                raise Unauthenticated(MALFORMED_KEY)
            entry = await self._lookup(key_hash)
        principal = entry.principal
        if principal is None:
            raise Unauthenticated(entry.failure or UNKNOWN_KEY)
        if entry.key_expires_at_s is not None and entry.key_expires_at_s <= self._clock.now_s():
            raise Unauthenticated(EXPIRED_KEY)
        return principal

    def invalidate(self, key_hash: str | None = None) -> None:
        """Forget one key's cached result (or all of them), e.g. after an admin change."""
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    def invalidate_tenant(self, tenant_id: str) -> None:
        """Forget every cached key of a tenant (suspended, limits or budget changed)."""
        stale = [
            key_hash
            for key_hash, entry in self._cache.items()
            if entry.principal is not None and entry.principal.tenant_id == tenant_id
        ]
        for key_hash in stale:
            self._cache.pop(key_hash, None)

    async def _lookup(self, key_hash: str) -> _Entry:
        task = self._inflight.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._load(key_hash), name="auth-key-lookup")
            self._inflight[key_hash] = task
            task.add_done_callback(self._lookup_done)
        # shield: a caller that gives up must not cancel the lookup others are waiting on.
        return await asyncio.shield(task)

    async def _load(self, key_hash: str) -> _Entry:
        started_s = self._clock.monotonic_s()  # the result is at least this fresh
        try:
            with translate_db_errors():
                async with asyncio.timeout(self._lookup_timeout_s), self._sessionmaker() as session:
                    entry = await _read_entry(session, key_hash)
        finally:
            self._inflight.pop(key_hash, None)
        metrics.DB_SECONDS.labels("auth_lookup").observe(self._clock.monotonic_s() - started_s)
        self._remember(key_hash, entry, started_s + self._ttl_s)
        return entry

    def _remember(self, key_hash: str, entry: _Entry, fresh_until: float) -> None:
        if self._ttl_s <= 0:
            return
        cache = self._cache
        cache.pop(key_hash, None)
        while len(cache) >= self._max_entries:
            cache.popitem(last=False)
        entry.fresh_until = fresh_until
        cache[key_hash] = entry

    @staticmethod
    def _lookup_done(task: asyncio.Task[_Entry]) -> None:
        # Mark the outcome retrieved: if every waiter was cancelled, asyncio would otherwise
        # log "exception was never retrieved" for a routine database outage.
        if not task.cancelled():
            task.exception()


def _no_key_reason(authorization: str | None) -> str:
    # "Bearer" with nothing after it is a missing key; any other scheme is the wrong one.
    words = authorization.split(None, 1) if authorization else []
    return NOT_BEARER if words and words[0].lower() != "bearer" else MISSING_KEY


async def _read_entry(session: AsyncSession, key_hash: str) -> _Entry:
    # The rows are read into plain values while the session is open.
    row = await find_key_by_hash(session, key_hash)
    if row is None:
        return _Entry(None, UNKNOWN_KEY)
    key, tenant = row
    if key.revoked_at is not None:
        return _Entry(None, REVOKED_KEY)
    if tenant.status != "active":
        return _Entry(None, SUSPENDED_TENANT)
    # Only accepted keys pay for the second query; refusals are cached without it.
    limits = await load_tenant_limits(session, tenant.id)
    return _accepted(key, tenant, limits, await load_budget(session, tenant.id))


def _accepted(
    key: ApiKey, tenant: Tenant, limits: TenantLimits, budget: BudgetPolicy | None
) -> _Entry:
    allowed = tenant.allowed_models
    principal = Principal(
        tenant_id=tenant.id,
        key_id=key.id,
        tenant_name=tenant.name,
        residency=ResidencyPolicy.parse(tenant.residency),
        allowed_models=None if allowed is None else frozenset(allowed),
        limits=limits,
        default_output_tokens=tenant.default_output_tokens,
        budget=budget,
    )
    expires_s = None if key.expires_at is None else key.expires_at.timestamp()
    return _Entry(principal, key_expires_at_s=expires_s)
