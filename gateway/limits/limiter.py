"""The admission limiter's contract: result types, the `Limiter` protocol and the bucket math.

Concept: a tenant owns a set of continuous-refill token buckets ("rpm", "tpm",
"rpm:model:<m>", ...) plus an optional concurrency counter. `reserve` takes an amount from
every bucket of the call at once or from none (all-or-nothing); `settle` later refunds the
unused part of the reservation or charges an overrun, and releases the concurrency slot.
Place on the path: the *admit* step (reserve) and the *settle* step of a request.

Arithmetic: a bucket holds an integer number of *units*, 1/60000 of a token. A bucket that
refills R tokens per minute then gains exactly R units per millisecond, so refill, waits and
expiry are exact integer arithmetic in Python and in Lua (doubles are exact below 2**53), and a
long run of small refills cannot drift. `MemoryLimiter` uses the functions below; the Lua
scripts of `RedisLimiter` implement the same formulas line for line.

Invariants:
- tokens never exceed capacity; a settle overrun may drive them below zero (debt that refill
  repays), never clamped away, so usage is not under-counted;
- a denied reserve changes nothing (expired concurrency leases aside);
- a time earlier than the bucket's last update refills nothing and never moves it back;
- a missing bucket is a full bucket (so idle state may expire once it has refilled).

Failure mode: the backends raise `gateway.errors.LimiterUnavailable` when their store is
unreachable; `failover.FailoverLimiter` decides what that means for admission.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

UNITS_PER_TOKEN = 60_000  # ms per minute: refill_per_minute tokens/min == that many units/ms
CONCURRENCY = "concurrency"  # the bucket name a concurrency denial and state report
NEVER_MS = 10**12  # "a bucket that does not refill will not have it": ~31 years
CONCURRENCY_RETRY_CAP_MS = 1_000  # a full slot set frees at an unknown time: suggest a short wait


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One token bucket: holds up to `capacity` tokens and refills `refill_per_minute`.

    A bucket with `refill_per_minute = 0` never refills: a spending cap for a period (budgets
    name the period in the bucket's name, so a new period is a new, full bucket)."""

    name: str
    capacity: int
    refill_per_minute: int

    def __post_init__(self) -> None:
        if not self.name or self.name == CONCURRENCY:
            raise ValueError(f"invalid bucket name {self.name!r}")
        if self.capacity < 1 or self.refill_per_minute < 0:
            raise ValueError(f"bucket {self.name!r} needs capacity >= 1 and refill >= 0")

    @classmethod
    def per_minute(cls, name: str, per_minute: int, *, burst: int | None = None) -> BucketSpec:
        """A bucket for a per-minute limit; capacity is the burst if one is configured."""
        return cls(name, burst if burst is not None else per_minute, per_minute)


@dataclass(frozen=True, slots=True)
class ConcurrencySpec:
    """At most `limit` requests in flight; a slot not released lapses after `lease_ms`."""

    limit: int
    lease_ms: int = 15 * 60 * 1000  # longer than any stream we allow, short enough to heal

    def __post_init__(self) -> None:
        if self.limit < 1 or self.lease_ms < 1:
            raise ValueError("concurrency needs limit >= 1 and lease_ms >= 1")


@dataclass(frozen=True, slots=True)
class BucketState:
    """A bucket after the decision, for the x-ratelimit-* headers."""

    name: str
    limit: int
    remaining: int  # whole tokens, floored, never negative (debt shows as 0)
    reset_ms: int  # ms until the bucket is full again


Demand = tuple[BucketSpec, int]


@dataclass(frozen=True, slots=True)
class Reservation:
    """What a granted reserve took: everything `settle` needs later."""

    tenant_id: str
    demands: tuple[Demand, ...]
    slot_id: str | None

    def adjustments(self, actual: Mapping[str, int]) -> tuple[Demand, ...]:
        """Settle deltas (actual − reserved) for the buckets named in `actual`."""
        return tuple(
            (spec, actual[spec.name] - amount)
            for spec, amount in self.demands
            if spec.name in actual and actual[spec.name] != amount
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one reserve call."""

    allowed: bool
    denied: str | None  # the bucket that binds: the one with the longest wait
    retry_after_ms: int  # 0 if allowed or never_fits; else when every short bucket holds enough
    never_fits: bool  # an amount exceeds its bucket's capacity: retrying cannot help
    buckets: tuple[BucketState, ...]
    reservation: Reservation | None = None  # set when allowed


class Limiter(Protocol):
    """Reserve at admission, settle at completion; both backends keep this contract."""

    async def reserve(
        self,
        tenant_id: str,
        demands: Sequence[Demand],
        *,
        concurrency: ConcurrencySpec | None = None,
        now_ms: int | None = None,
    ) -> Decision:
        """Take every amount (and a slot) or nothing."""
        ...

    async def settle(
        self,
        tenant_id: str,
        adjustments: Sequence[Demand],
        *,
        release_slot: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Refund (negative) or charge (positive) each delta; release the slot."""
        ...


def check_call(tenant_id: str, pairs: Sequence[Demand], *, reserve: bool) -> None:
    """Reject calls the math cannot answer: empty tenant, duplicate buckets, negative amounts."""
    if not tenant_id:
        raise ValueError("tenant_id must not be empty")  # an empty {} hash tag breaks Cluster
    names = [spec.name for spec, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"a bucket appears twice in one call: {names}")
    if reserve and any(amount < 0 for _, amount in pairs):
        raise ValueError("reserve amounts must be >= 0 (refunds go through settle)")


def floor_div(a: int, b: int) -> int:
    """Integer floor division (named so the Lua twin is easy to compare)."""
    return a // b


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division."""
    return -(-a // b)


def refill(units: int, ts_ms: int, spec: BucketSpec, now_ms: int) -> tuple[int, int]:
    """The bucket's (units, ts_ms) at `now_ms`; an earlier `now_ms` changes nothing."""
    if now_ms <= ts_ms:
        return units, ts_ms
    full = spec.capacity * UNITS_PER_TOKEN
    if units < full and spec.refill_per_minute > 0:
        # Cap the elapsed time first so the product stays small (exact in Lua doubles too).
        elapsed_ms = min(now_ms - ts_ms, ceil_div(full - units, spec.refill_per_minute))
        units = min(full, units + elapsed_ms * spec.refill_per_minute)
    return units, now_ms


def wait_ms(units: int, amount: int, spec: BucketSpec) -> int:
    """Milliseconds until the bucket holds `amount` tokens (0 if it does now, or when nothing
    is asked); `NEVER_MS` for a bucket that does not refill."""
    short = amount * UNITS_PER_TOKEN - units
    if amount == 0 or short <= 0:
        return 0
    if spec.refill_per_minute == 0:
        return NEVER_MS
    return ceil_div(short, spec.refill_per_minute)


def full_in_ms(units: int, spec: BucketSpec) -> int:
    """Milliseconds until the bucket is full again."""
    return wait_ms(units, spec.capacity, spec)


def bucket_state(units: int, spec: BucketSpec) -> BucketState:
    """The header view of a bucket holding `units`."""
    remaining = max(0, floor_div(units, UNITS_PER_TOKEN))
    return BucketState(spec.name, spec.capacity, remaining, full_in_ms(units, spec))


def judge(
    demands: Sequence[Demand], units: Sequence[int], concurrency_wait_ms: int | None
) -> tuple[bool, str | None, int, bool]:
    """(allowed, denied, retry_after_ms, never_fits) for buckets already refilled to now."""
    for spec, amount in demands:
        if amount > spec.capacity:
            return False, spec.name, 0, True
    denied: str | None = None
    longest = 0
    for (spec, amount), held in zip(demands, units, strict=True):
        wait = wait_ms(held, amount, spec)
        if wait > longest:
            denied, longest = spec.name, wait
    if concurrency_wait_ms is not None and (denied is None or concurrency_wait_ms > longest):
        denied, longest = CONCURRENCY, concurrency_wait_ms
    return denied is None, denied, longest, False


def concurrency_wait(earliest_expiry_ms: int, now_ms: int) -> int:
    """Suggested wait when every slot is taken: until the first lease lapses, capped."""
    return max(1, min(CONCURRENCY_RETRY_CAP_MS, earliest_expiry_ms - now_ms))
