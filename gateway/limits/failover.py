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

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Literal, TypeVar

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

T = TypeVar("T")


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
        answered, decision = await self._on_primary(
            partial(
                self._primary.reserve, tenant_id, demands, concurrency=concurrency, now_ms=now_ms
            )
        )
        if answered and decision is not None:
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
        answered, _ = await self._on_primary(
            partial(
                self._primary.settle,
                tenant_id,
                adjustments,
                release_slot=release_slot,
                now_ms=now_ms,
            )
        )
        if answered:
            return
        local = [(local_share(spec, self._replicas), delta) for spec, delta in adjustments]
        await self._fallback.settle(tenant_id, local, release_slot=release_slot, now_ms=now_ms)

    async def _on_primary(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """(True, result) when Redis answered; (False, None) when the call must go local.
        In "closed" mode a failure, or an open breaker, raises `LimiterUnavailable` instead."""
        if not self._try_primary():
            if self._mode == "closed":
                raise LimiterUnavailable("The rate limiter is unavailable (breaker open).")
            return False, None
        try:
            result = await call()
        except LimiterUnavailable:
            self._trip()
            if self._mode == "closed":
                raise
            return False, None
        self._open_until = None
        return True, result

    def _try_primary(self) -> bool:
        if self._open_until is None:
            return True
        now = self._clock.monotonic_s()
        if now < self._open_until:
            return False
        # Half-open: this call probes Redis; others stay local until it answers.
        self._open_until = now + self._cooldown_s
        return True

    def _trip(self) -> None:
        self.primary_failures += 1
        self._open_until = self._clock.monotonic_s() + self._cooldown_s

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
