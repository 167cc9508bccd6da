"""`MemoryLimiter`: the admission limiter kept in this process.

Concept: the embedded default backend (one replica, no Redis) and the local share that
`FailoverLimiter` falls back to while Redis is down. Same contract and same integer bucket
math as `RedisLimiter` (see `limiter.py`), so one contract suite covers both.

Failure mode: none outside the process; its state dies with it (buckets restart full).

Invariants: methods never await, so on one event loop each call is atomic without locks;
memory stays bounded because a periodic sweep drops buckets that have refilled completely
(a missing bucket is a full one) and concurrency leases that have lapsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import uuid4

from gateway.clock import Clock
from gateway.limits.limiter import (
    CONCURRENCY,
    UNITS_PER_TOKEN,
    BucketSpec,
    BucketState,
    ConcurrencySpec,
    Decision,
    Demand,
    Reservation,
    bucket_state,
    check_call,
    concurrency_wait,
    full_in_ms,
    judge,
    refill,
)

SWEEP_GRACE_MS = 60_000


@dataclass(slots=True)
class _Level:
    units: int
    ts_ms: int
    full_at_ms: int  # when the sweep may forget it


class MemoryLimiter:
    """Token buckets and concurrency slots in a dict, keyed by (tenant, bucket)."""

    def __init__(self, clock: Clock, *, sweep_interval_ms: int = 10_000) -> None:
        self._clock = clock
        self._sweep_interval_ms = sweep_interval_ms
        self._levels: dict[tuple[str, str], _Level] = {}
        self._leases: dict[str, dict[str, int]] = {}  # tenant -> slot id -> expiry ms
        self._last_sweep_ms: int | None = None

    @property
    def tracked(self) -> int:
        """How many buckets and lease sets are held (for tests of the sweep)."""
        return len(self._levels) + len(self._leases)

    async def reserve(
        self,
        tenant_id: str,
        demands: Sequence[Demand],
        *,
        concurrency: ConcurrencySpec | None = None,
        now_ms: int | None = None,
    ) -> Decision:
        """Take every amount (and a slot) or nothing."""
        check_call(tenant_id, demands, reserve=True)
        now = self._now_ms(now_ms)
        self._maybe_sweep(now)
        units = [self._units_at(tenant_id, spec, now) for spec, _ in demands]
        leases = self._live_leases(tenant_id, now) if concurrency else {}
        conc_wait = None
        if concurrency is not None and len(leases) >= concurrency.limit:
            conc_wait = concurrency_wait(min(leases.values()), now)
        allowed, denied, retry_ms, never_fits = judge(demands, units, conc_wait)
        slot_id = None
        if allowed:
            units = [
                held - amount * UNITS_PER_TOKEN
                for (_, amount), held in zip(demands, units, strict=True)
            ]
            for (spec, _), held in zip(demands, units, strict=True):
                self._store(tenant_id, spec, held, now)
            if concurrency is not None:
                slot_id = uuid4().hex
                leases[slot_id] = now + concurrency.lease_ms
                self._leases[tenant_id] = leases
        states = [bucket_state(held, spec) for (spec, _), held in zip(demands, units, strict=True)]
        if concurrency is not None:
            free = max(0, concurrency.limit - len(leases))
            states.append(BucketState(CONCURRENCY, concurrency.limit, free, 0))
        reservation = Reservation(tenant_id, tuple(demands), slot_id) if allowed else None
        return Decision(allowed, denied, retry_ms, never_fits, tuple(states), reservation)

    async def settle(
        self,
        tenant_id: str,
        adjustments: Sequence[Demand],
        *,
        release_slot: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Refund (negative) or charge (positive) each delta; release the slot."""
        check_call(tenant_id, adjustments, reserve=False)
        now = self._now_ms(now_ms)
        for spec, delta in adjustments:
            if delta == 0:
                continue
            held = self._units_at(tenant_id, spec, now)
            held = min(spec.capacity * UNITS_PER_TOKEN, held - delta * UNITS_PER_TOKEN)
            self._store(tenant_id, spec, held, now)
        if release_slot is not None and tenant_id in self._leases:
            self._leases[tenant_id].pop(release_slot, None)

    def _now_ms(self, now_ms: int | None) -> int:
        return now_ms if now_ms is not None else int(self._clock.now_s() * 1000)

    def _units_at(self, tenant_id: str, spec: BucketSpec, now: int) -> int:
        level = self._levels.get((tenant_id, spec.name))
        if level is None:
            return spec.capacity * UNITS_PER_TOKEN
        units, _ = refill(level.units, level.ts_ms, spec, now)
        return units

    def _store(self, tenant_id: str, spec: BucketSpec, units: int, now: int) -> None:
        level = self._levels.get((tenant_id, spec.name))
        # Never move a bucket's clock back (a caller's now_ms may be behind another's).
        ts = max(now, level.ts_ms) if level is not None else now
        self._levels[(tenant_id, spec.name)] = _Level(units, ts, ts + full_in_ms(units, spec))

    def _live_leases(self, tenant_id: str, now: int) -> dict[str, int]:
        leases = self._leases.get(tenant_id, {})
        return {slot: expiry for slot, expiry in leases.items() if expiry > now}

    def _maybe_sweep(self, now: int) -> None:
        if self._last_sweep_ms is not None and now - self._last_sweep_ms < self._sweep_interval_ms:
            return
        self._last_sweep_ms = now
        # A grace after "full": a caller whose now_ms is a little behind (another replica's
        # clock) must still find the bucket, not read a forgotten one as full.
        stale = now - SWEEP_GRACE_MS
        for key in [k for k, level in self._levels.items() if level.full_at_ms <= stale]:
            del self._levels[key]
        for tenant in list(self._leases):
            live = self._live_leases(tenant, now)
            if live:
                self._leases[tenant] = live
            else:
                del self._leases[tenant]
