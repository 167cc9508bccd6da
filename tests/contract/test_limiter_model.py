"""Both limiter backends against a reference token bucket, over random operation sequences.

The reference keeps tokens as exact fractions and refills them continuously; it knows
nothing of units or integer tricks. Every reserve decision (allowed, denied bucket,
never_fits, retry_after_ms) and every bucket's remaining/reset must match it exactly.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.limits import BucketSpec, Decision, Limiter, MemoryLimiter, RedisLimiter
from tests.contract.test_limiter import T0, ManualClock
from tests.services import RedisServer


@dataclass
class ModelBucket:
    """A continuous-refill token bucket in exact rational arithmetic.

    State changes only on writes (a granted reserve, a settle); a bucket never written is
    full. Reads refill on the fly, and a time before the last write refills nothing.
    """

    spec: BucketSpec
    stored: tuple[Fraction, int] | None = None  # (tokens, ms of the last write)

    @property
    def per_ms(self) -> Fraction:
        return Fraction(self.spec.refill_per_minute, 60_000)

    def level(self, now_ms: int) -> tuple[Fraction, int]:
        capacity = Fraction(self.spec.capacity)
        if self.stored is None:
            return capacity, now_ms
        tokens, ts_ms = self.stored
        if now_ms <= ts_ms:
            return tokens, ts_ms
        return min(capacity, tokens + (now_ms - ts_ms) * self.per_ms), now_ms

    def wait_ms(self, tokens: Fraction, amount: int) -> int:
        if amount == 0:  # asking for nothing never waits, even from a bucket in debt
            return 0
        return max(0, math.ceil((amount - tokens) / self.per_ms))

    def view(self, tokens: Fraction) -> tuple[int, int]:
        return max(0, math.floor(tokens)), self.wait_ms(tokens, self.spec.capacity)


def model_reserve(buckets: list[ModelBucket], amounts: list[int], now_ms: int) -> tuple:
    levels = [bucket.level(now_ms) for bucket in buckets]
    views = [bucket.view(tokens) for bucket, (tokens, _) in zip(buckets, levels, strict=True)]
    for bucket, amount in zip(buckets, amounts, strict=True):
        if amount > bucket.spec.capacity:
            return False, bucket.spec.name, 0, True, views
    denied, longest = None, 0
    for bucket, amount, (tokens, _) in zip(buckets, amounts, levels, strict=True):
        if bucket.wait_ms(tokens, amount) > longest:
            denied, longest = bucket.spec.name, bucket.wait_ms(tokens, amount)
    if denied is not None:
        return False, denied, longest, False, views
    for bucket, amount, (tokens, ts_ms) in zip(buckets, amounts, levels, strict=True):
        bucket.stored = (tokens - amount, ts_ms)
    return True, None, 0, False, [b.view(b.stored[0]) for b in buckets]  # type: ignore[index]


def model_settle(buckets: list[ModelBucket], deltas: list[int], now_ms: int) -> None:
    for bucket, delta in zip(buckets, deltas, strict=True):
        if delta == 0:
            continue  # nothing to settle: no write
        tokens, ts_ms = bucket.level(now_ms)
        bucket.stored = (min(Fraction(bucket.spec.capacity), tokens - delta), ts_ms)


def observed(decision: Decision) -> tuple:
    views = [(b.remaining, b.reset_ms) for b in decision.buckets]
    return (
        decision.allowed,
        decision.denied,
        decision.retry_after_ms,
        decision.never_fits,
        views,
    )


specs = st.tuples(
    st.builds(BucketSpec, st.just("rpm"), st.integers(1, 30), st.integers(1, 600)),
    st.builds(BucketSpec, st.just("tpm"), st.integers(1, 40), st.integers(1, 60_000)),
)
amount = st.none() | st.integers(0, 45)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 20_000)),
        st.tuples(st.just("rewind"), st.integers(1, 3_000)),  # another replica's older now_ms
        st.tuples(st.just("reserve"), amount, amount),
        st.tuples(st.just("settle"), amount, st.none() | st.integers(-45, 45)),
    ),
    min_size=1,
    max_size=30,
)


async def check_against_model(
    limiter: Limiter, bucket_specs: tuple[BucketSpec, BucketSpec], ops: list[tuple]
) -> None:
    tenant = f"m-{uuid4().hex[:10]}"
    model = {spec.name: ModelBucket(spec) for spec in bucket_specs}
    now = T0
    for op, first, second in [(*o, None) if len(o) == 2 else o for o in ops]:
        if op == "advance":
            now += first
            continue
        if op == "rewind":
            now -= first
            continue
        chosen = [
            (s, n) for s, n in zip(bucket_specs, (first, second), strict=True) if n is not None
        ]
        buckets = [model[spec.name] for spec, _ in chosen]
        if op == "reserve":
            decision = await limiter.reserve(tenant, chosen, now_ms=now)
            expected = model_reserve(buckets, [n for _, n in chosen], now)
            assert observed(decision) == expected, (op, chosen, now)
        else:
            await limiter.settle(tenant, chosen, now_ms=now)
            model_settle(buckets, [n for _, n in chosen], now)


@settings(max_examples=300, deadline=None)
@given(bucket_specs=specs, ops=operations)
async def test_memory_limiter_matches_the_model(
    bucket_specs: tuple[BucketSpec, BucketSpec], ops: list[tuple]
):
    await check_against_model(MemoryLimiter(ManualClock()), bucket_specs, ops)


@pytest.fixture(scope="module")
async def shared_redis_limiter(
    redis_srv: RedisServer, redis_prefix: str
) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter.from_url(redis_srv.url, key_prefix=f"{redis_prefix}model:")
    yield limiter
    await limiter.aclose()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bucket_specs=specs, ops=operations)
async def test_redis_limiter_matches_the_model(
    shared_redis_limiter: RedisLimiter,
    bucket_specs: tuple[BucketSpec, BucketSpec],
    ops: list[tuple],
):
    await check_against_model(shared_redis_limiter, bucket_specs, ops)
