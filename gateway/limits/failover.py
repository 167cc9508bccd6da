"""`FailoverLimiter`: what a Redis outage means for admission.

Concept: `RedisLimiter` turns any Redis error or timeout into `LimiterUnavailable` (503); this
wrapper turns that into policy. "closed" re-raises; "open" admits through a local
`MemoryLimiter` holding this replica's share (limit / replicas, see `local_share`), counted in
`degraded_decisions`, and a 1 s breaker skips Redis meanwhile, so a dead Redis costs one timeout
per second instead of one per request.

Failure mode: in "open" mode a settle that fails on Redis is applied to the local share, and a
Redis slot it meant to release lapses by its lease; a half-open breaker lets one call probe
Redis while the others stay local.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gateway.clock import Clock
from gateway.errors import LimiterUnavailable
from gateway.limits.limiter import (
    BucketSpec,
    BucketState,
    ConcurrencySpec,
    Decision,
    Demand,
    Limiter,
    Reservation,
)
from gateway.limits.memory import MemoryLimiter


def local_share(spec: BucketSpec, replicas: int) -> BucketSpec:
    """This replica's part of a bucket while buckets are local (never below one token)."""
    return BucketSpec(
        spec.name,
        max(1, spec.capacity // replicas),
        max(1, spec.refill_per_minute // replicas) if spec.refill_per_minute else 0,
    )


class FailoverLimiter:
    """Redis first; when it fails, re-raise ("closed") or admit a local share ("open")."""

    def __init__(
        self,
        primary: Limiter,
        fallback: MemoryLimiter,
        *,
        mode: Literal["open", "closed"],
        replicas: int,
        clock: Clock,
        cooldown_s: float = 1.0,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self._primary = primary
        self._fallback = fallback
        self._mode = mode
        self._replicas = replicas
        self._clock = clock
        self._cooldown_s = cooldown_s
        self._open_until: float | None = None  # breaker: skip Redis until this monotonic time
        self.degraded_decisions = 0  # reserves answered by the local share
        self.primary_failures = 0  # calls that found Redis unavailable

    @property
    def degraded(self) -> bool:
        """True while the breaker keeps requests away from Redis."""
        return self._open_until is not None

    async def reserve(
        self,
        tenant_id: str,
        demands: Sequence[Demand],
        *,
        concurrency: ConcurrencySpec | None = None,
        now_ms: int | None = None,
    ) -> Decision:
        """Reserve on Redis; on failure apply the mode (local share or re-raise)."""
        if self._try_primary():
            try:
                decision = await self._primary.reserve(
                    tenant_id, demands, concurrency=concurrency, now_ms=now_ms
                )
            except LimiterUnavailable:
                if self._tripped():
                    raise
            else:
                self._open_until = None
                return decision
        self.degraded_decisions += 1
        return await self._reserve_locally(tenant_id, demands, concurrency, now_ms)

    async def settle(
        self,
        tenant_id: str,
        adjustments: Sequence[Demand],
        *,
        release_slot: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Settle where admission currently happens; in "open" mode a failed Redis settle
        is applied to the local share (a Redis slot it meant to release lapses by lease)."""
        if self._try_primary():
            try:
                await self._primary.settle(
                    tenant_id, adjustments, release_slot=release_slot, now_ms=now_ms
                )
            except LimiterUnavailable:
                if self._tripped():
                    raise
            else:
                self._open_until = None
                return
        local = [(local_share(spec, self._replicas), delta) for spec, delta in adjustments]
        await self._fallback.settle(tenant_id, local, release_slot=release_slot, now_ms=now_ms)

    def _try_primary(self) -> bool:
        """Whether this call goes to Redis; False means local, or, in "closed" mode, raises
        `LimiterUnavailable` (the breaker is open)."""
        if self._open_until is None:
            return True
        now = self._clock.monotonic_s()
        if now < self._open_until:
            if self._mode == "closed":
                raise LimiterUnavailable("The rate limiter is unavailable (breaker open).")
            return False
        # Half-open: this call probes Redis; others stay local until it answers.
        self._open_until = now + self._cooldown_s
        return True

    def _tripped(self) -> bool:
        """Redis failed this call: open the breaker; True when the failure must be raised
        ("closed" mode) rather than answered locally."""
        self.primary_failures += 1
        self._open_until = self._clock.monotonic_s() + self._cooldown_s
        return self._mode == "closed"

    async def _reserve_locally(
        self,
        tenant_id: str,
        demands: Sequence[Demand],
        concurrency: ConcurrencySpec | None,
        now_ms: int | None,
    ) -> Decision:
        for spec, amount in demands:
            if amount > spec.capacity:  # judged against the real limit, not the local share
                states = tuple(BucketState(s.name, s.capacity, 0, 0) for s, _ in demands)
                return Decision(False, spec.name, 0, True, states)
        shares = [(local_share(spec, self._replicas), amount) for spec, amount in demands]
        # A request bigger than the local share but within the real limit is admitted once
        # the share is full and leaves it in debt, instead of never fitting while degraded.
        clamped = [(share, min(amount, share.capacity)) for share, amount in shares]
        local_conc = None
        if concurrency is not None:
            local_conc = ConcurrencySpec(
                max(1, concurrency.limit // self._replicas), concurrency.lease_ms
            )
        decision = await self._fallback.reserve(
            tenant_id, clamped, concurrency=local_conc, now_ms=now_ms
        )
        if not decision.allowed or decision.reservation is None:
            return decision
        excess = [
            (share, amount - took)
            for (share, amount), (_, took) in zip(shares, clamped, strict=True)
        ]
        # MemoryLimiter never awaits, so nothing runs between this settle and the reserve.
        await self._fallback.settle(tenant_id, [e for e in excess if e[1] > 0], now_ms=now_ms)
        reservation = Reservation(tenant_id, tuple(demands), decision.reservation.slot_id)
        return Decision(True, None, 0, False, decision.buckets, reservation)
