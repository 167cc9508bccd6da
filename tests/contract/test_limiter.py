"""The limiter contract: every shared case runs on MemoryLimiter AND RedisLimiter.

Time is passed as `now_ms` (never slept); Redis is the run's real server under a per-test
key prefix. Redis-only cases cover key layout and expiry, NOSCRIPT recovery, deadlines, and
`FailoverLimiter`'s open/closed policy and recovery.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from gateway.errors import LimiterUnavailable
from gateway.limits import (
    BucketSpec,
    ConcurrencySpec,
    Decision,
    FailoverLimiter,
    Limiter,
    MemoryLimiter,
    RedisLimiter,
    bucket_key,
)
from gateway.limits.limiter import NEVER_MS, Demand
from gateway.limits.memory import SWEEP_GRACE_MS
from tests.contract.cluster import standalone_redis
from tests.services import RedisServer

T0 = 1_700_000_000_000  # an arbitrary epoch ms; every case passes explicit times
RPM = BucketSpec("rpm", capacity=3, refill_per_minute=60)  # one token per second
TPM = BucketSpec("tpm", capacity=100, refill_per_minute=6_000)  # 100 tokens per second


class ManualClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.wall_s = T0 / 1000
        self.mono_s = 1_000.0

    def now_s(self) -> float:
        return self.wall_s

    def monotonic_s(self) -> float:
        return self.mono_s

    def advance(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter(ManualClock())
        return
    server: RedisServer = request.getfixturevalue("redis_srv")
    prefix: str = request.getfixturevalue("redis_prefix")
    redis_limiter = RedisLimiter.from_url(server.url, key_prefix=f"{prefix}{uuid4().hex[:8]}:")
    yield redis_limiter
    await redis_limiter.aclose()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid4().hex[:8]}"


def state(decision: Decision, name: str) -> tuple[int, int]:
    """(remaining, reset_ms) of one bucket in a decision."""
    found = [b for b in decision.buckets if b.name == name]
    assert len(found) == 1, decision
    return found[0].remaining, found[0].reset_ms


async def take(limiter: Limiter, tenant: str, demands: Sequence[Demand], now: int) -> Decision:
    return await limiter.reserve(tenant, demands, now_ms=now)


# --- shared contract ---------------------------------------------------------------------


async def test_grants_until_empty_then_denies_with_retry_after(limiter: Limiter, tenant: str):
    for left in (2, 1, 0):
        decision = await take(limiter, tenant, [(RPM, 1)], T0)
        assert decision.allowed and decision.retry_after_ms == 0
        assert state(decision, "rpm") == (left, (3 - left) * 1000)
    denied = await take(limiter, tenant, [(RPM, 1)], T0)
    assert not denied.allowed and not denied.never_fits
    assert (denied.denied, denied.retry_after_ms) == ("rpm", 1000)
    assert denied.reservation is None


async def test_refills_as_time_passes(limiter: Limiter, tenant: str):
    assert (await take(limiter, tenant, [(RPM, 3)], T0)).allowed
    early = await take(limiter, tenant, [(RPM, 1)], T0 + 999)
    assert not early.allowed and early.retry_after_ms == 1
    assert (await take(limiter, tenant, [(RPM, 1)], T0 + 1000)).allowed
    # A long idle time refills to capacity, not beyond.
    later = await take(limiter, tenant, [(RPM, 3)], T0 + 3_600_000)
    assert later.allowed and state(later, "rpm") == (0, 3000)
    assert not (await take(limiter, tenant, [(RPM, 1)], T0 + 3_600_000)).allowed


async def test_all_or_nothing_across_buckets(limiter: Limiter, tenant: str):
    rpm = BucketSpec("rpm", 10, 600)
    assert (await take(limiter, tenant, [(rpm, 1), (TPM, 80)], T0)).allowed
    denied = await take(limiter, tenant, [(rpm, 1), (TPM, 50)], T0)
    assert not denied.allowed and denied.denied == "tpm"
    assert denied.retry_after_ms == 300  # 30 tokens short at 100/s
    assert state(denied, "rpm")[0] == 9  # the rpm token was not taken
    granted = await take(limiter, tenant, [(rpm, 1), (TPM, 20)], T0)
    assert granted.allowed and state(granted, "rpm")[0] == 8 and state(granted, "tpm")[0] == 0


async def test_retry_after_is_the_longest_wait(limiter: Limiter, tenant: str):
    assert (await take(limiter, tenant, [(RPM, 3), (TPM, 100)], T0)).allowed
    denied = await take(limiter, tenant, [(RPM, 2), (TPM, 50)], T0)
    assert (denied.denied, denied.retry_after_ms) == ("rpm", 2000)  # tpm needs only 500 ms
    assert (await take(limiter, tenant, [(RPM, 2), (TPM, 50)], T0 + 2000)).allowed


async def test_never_fits(limiter: Limiter, tenant: str):
    decision = await take(limiter, tenant, [(RPM, 1), (TPM, 101)], T0)
    assert not decision.allowed and decision.never_fits
    assert (decision.denied, decision.retry_after_ms) == ("tpm", 0)
    assert state(decision, "rpm")[0] == 3 and state(decision, "tpm")[0] == 100
    assert (await take(limiter, tenant, [(RPM, 3), (TPM, 100)], T0)).allowed


async def test_refund_restores_tokens_up_to_capacity(limiter: Limiter, tenant: str):
    decision = await take(limiter, tenant, [(TPM, 80)], T0)
    assert decision.reservation is not None
    await limiter.settle(tenant, decision.reservation.adjustments({"tpm": 30}), now_ms=T0)
    assert state(await take(limiter, tenant, [(TPM, 0)], T0), "tpm")[0] == 70
    await limiter.settle(tenant, [(TPM, -1_000)], now_ms=T0)
    assert state(await take(limiter, tenant, [(TPM, 0)], T0), "tpm") == (100, 0)


async def test_overrun_creates_debt_that_delays_later_requests(limiter: Limiter, tenant: str):
    assert (await take(limiter, tenant, [(TPM, 80)], T0)).allowed
    await limiter.settle(tenant, [(TPM, 70)], now_ms=T0)  # used 150: the bucket owes 50
    denied = await take(limiter, tenant, [(TPM, 10)], T0)
    assert not denied.allowed and denied.retry_after_ms == 600  # 60 tokens at 100/s
    assert state(denied, "tpm") == (0, 1500)  # remaining shows 0, reset counts the debt
    assert not (await take(limiter, tenant, [(TPM, 10)], T0 + 599)).allowed
    assert (await take(limiter, tenant, [(TPM, 10)], T0 + 600)).allowed


BUDGET = BucketSpec("budget:2026-11", capacity=1_000, refill_per_minute=0)  # a spending cap


async def test_a_bucket_without_refill_is_a_cap_for_good(limiter: Limiter, tenant: str):
    assert (await take(limiter, tenant, [(BUDGET, 700)], T0)).allowed
    await limiter.settle(tenant, [(BUDGET, -200)], now_ms=T0)  # cost less than reserved
    assert state(await take(limiter, tenant, [(BUDGET, 500)], T0 + 3_600_000), BUDGET.name)[0] == 0
    denied = await take(limiter, tenant, [(BUDGET, 1)], T0 + 30 * 86_400_000)
    assert not denied.allowed and not denied.never_fits and denied.denied == BUDGET.name
    assert denied.retry_after_ms == NEVER_MS  # time does not help
    assert state(denied, BUDGET.name) == (0, NEVER_MS)


async def test_a_zero_demand_always_fits_and_reports_state(limiter: Limiter, tenant: str):
    assert (await take(limiter, tenant, [(BUDGET, 900)], T0)).allowed
    await limiter.settle(tenant, [(BUDGET, 300)], now_ms=T0)  # overspent: 200 in debt
    looked = await take(limiter, tenant, [(BUDGET, 0), (RPM, 1)], T0)
    assert looked.allowed and state(looked, BUDGET.name)[0] == 0
    assert not (await take(limiter, tenant, [(BUDGET, 1)], T0)).allowed


async def test_remaining_and_reset(limiter: Limiter, tenant: str):
    first = await take(limiter, tenant, [(TPM, 30)], T0)
    assert state(first, "tpm") == (70, 300)
    later = await take(limiter, tenant, [(TPM, 1)], T0 + 155)  # 70 + 15.5 - 1
    assert state(later, "tpm") == (84, 155)  # 84.5 held, 15.5 missing
    assert later.buckets[0].limit == 100


async def test_fractional_refill_does_not_drift(limiter: Limiter, tenant: str):
    slow = BucketSpec("rpm:model:m", capacity=7, refill_per_minute=7)  # 8571.43 ms per token
    assert (await take(limiter, tenant, [(slow, 7)], T0)).allowed
    # Many small steps that each refill a fraction of a token...
    for step in range(1, 600):
        decision = await take(limiter, tenant, [(slow, 0)], T0 + step * 100)
        assert decision.allowed
    # ...add up to exactly seven tokens at exactly one minute.
    assert not (await take(limiter, tenant, [(slow, 7)], T0 + 59_999)).allowed
    assert (await take(limiter, tenant, [(slow, 7)], T0 + 60_000)).allowed


async def test_time_going_back_refills_nothing(limiter: Limiter, tenant: str):
    assert (await take(limiter, tenant, [(RPM, 3)], T0 + 5000)).allowed
    assert not (await take(limiter, tenant, [(RPM, 1)], T0)).allowed
    assert not (await take(limiter, tenant, [(RPM, 1)], T0 + 5999)).allowed
    assert (await take(limiter, tenant, [(RPM, 1)], T0 + 6000)).allowed


async def test_concurrency_limit_and_release(limiter: Limiter, tenant: str):
    conc = ConcurrencySpec(limit=2)
    first = await limiter.reserve(tenant, [(RPM, 1)], concurrency=conc, now_ms=T0)
    second = await limiter.reserve(tenant, [], concurrency=conc, now_ms=T0)
    assert first.allowed and second.allowed
    assert state(second, "concurrency") == (0, 0)
    third = await limiter.reserve(tenant, [(RPM, 1)], concurrency=conc, now_ms=T0)
    assert not third.allowed and third.denied == "concurrency"
    assert 0 < third.retry_after_ms <= 1000
    assert state(third, "rpm")[0] == 2  # the denied request took no rpm token
    assert first.reservation is not None and first.reservation.slot_id
    await limiter.settle(tenant, [], release_slot=first.reservation.slot_id, now_ms=T0)
    fourth = await limiter.reserve(tenant, [(RPM, 1)], concurrency=conc, now_ms=T0)
    assert fourth.allowed and state(fourth, "concurrency")[0] == 0


async def test_concurrency_lease_lapses(limiter: Limiter, tenant: str):
    conc = ConcurrencySpec(limit=1, lease_ms=5_000)
    assert (await limiter.reserve(tenant, [], concurrency=conc, now_ms=T0)).allowed
    blocked = await limiter.reserve(tenant, [], concurrency=conc, now_ms=T0 + 4_500)
    assert not blocked.allowed and blocked.retry_after_ms == 500
    assert (await limiter.reserve(tenant, [], concurrency=conc, now_ms=T0 + 5_000)).allowed


async def test_rejects_malformed_calls(limiter: Limiter, tenant: str):
    with pytest.raises(ValueError, match="twice"):
        await limiter.reserve(tenant, [(RPM, 1), (RPM, 1)], now_ms=T0)
    with pytest.raises(ValueError, match=">= 0"):
        await limiter.reserve(tenant, [(RPM, -1)], now_ms=T0)
    with pytest.raises(ValueError, match="tenant"):
        await limiter.reserve("", [(RPM, 1)], now_ms=T0)
    with pytest.raises(ValueError, match="capacity"):
        BucketSpec("rpm", 0, 60)


# --- memory only -------------------------------------------------------------------------


async def test_memory_sweep_forgets_refilled_buckets(tenant: str):
    memory = MemoryLimiter(ManualClock(), sweep_interval_ms=100)
    await memory.reserve(tenant, [(RPM, 1), (TPM, 10)], concurrency=ConcurrencySpec(1), now_ms=T0)
    assert memory.tracked == 3
    await memory.reserve("other", [], now_ms=T0 + 500)  # tpm is full again, rpm not yet
    assert memory.tracked == 3  # full, but within the sweep's grace for lagging clocks
    await memory.reserve("other", [], now_ms=T0 + 1000 + SWEEP_GRACE_MS)  # rpm and tpm gone
    assert memory.tracked == 1  # the lease
    await memory.reserve("other", [], now_ms=T0 + 16 * 60_000)  # lease lapsed too
    assert memory.tracked == 0
    assert state(await memory.reserve(tenant, [(RPM, 3)], now_ms=T0 + 16 * 60_000), "rpm")[0] == 0


async def test_memory_uses_the_injected_clock(tenant: str):
    clock = ManualClock()
    memory = MemoryLimiter(clock)
    assert (await memory.reserve(tenant, [(RPM, 3)])).allowed
    assert not (await memory.reserve(tenant, [(RPM, 1)])).allowed
    clock.advance(1.0)
    assert (await memory.reserve(tenant, [(RPM, 1)])).allowed


# --- redis only --------------------------------------------------------------------------


@pytest.fixture
async def raw_redis(redis_srv: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_srv.url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_limiter(redis_srv: RedisServer, redis_prefix: str) -> AsyncIterator[RedisLimiter]:
    limiter = RedisLimiter.from_url(redis_srv.url, key_prefix=f"{redis_prefix}{uuid4().hex[:8]}:")
    yield limiter
    await limiter.aclose()


async def test_redis_keys_are_hash_tagged_and_expire_when_idle(
    redis_limiter: RedisLimiter, raw_redis: aioredis.Redis, tenant: str
):
    prefix = redis_limiter.key_prefix
    assert bucket_key(prefix, tenant, "tpm") == f"{prefix}rl:{{{tenant}}}:tpm"
    conc = ConcurrencySpec(limit=5, lease_ms=60_000)
    decision = await redis_limiter.reserve(tenant, [(RPM, 2), (TPM, 50)], concurrency=conc)
    assert decision.allowed
    rpm_ttl = await raw_redis.pttl(bucket_key(prefix, tenant, "rpm"))
    tpm_ttl = await raw_redis.pttl(bucket_key(prefix, tenant, "tpm"))
    conc_ttl = await raw_redis.pttl(bucket_key(prefix, tenant, "concurrency"))
    assert 2_000 < rpm_ttl <= 3_000  # refills in 2 s, plus the idle margin
    assert 500 < tpm_ttl <= 1_500
    assert 60_000 < conc_ttl <= 61_000
    keys = [bucket_key(prefix, tenant, name) for name in ("rpm", "tpm", "concurrency")]
    assert len({key_slot(key.encode()) for key in keys}) == 1


async def test_redis_uses_server_time_without_now(
    redis_limiter: RedisLimiter, raw_redis: aioredis.Redis, tenant: str
):
    assert (await redis_limiter.reserve(tenant, [(RPM, 3)])).allowed
    denied = await redis_limiter.reserve(tenant, [(RPM, 1)])
    assert not denied.allowed and 900 <= denied.retry_after_ms <= 1000
    seconds, micros = await raw_redis.time()
    stamp = int(await raw_redis.hget(bucket_key(redis_limiter.key_prefix, tenant, "rpm"), "t"))
    assert abs(stamp - (seconds * 1000 + micros // 1000)) < 1_000


async def test_redis_recovers_after_script_flush(tenant: str):
    # A private server: SCRIPT FLUSH on the shared one would disturb other test runs.
    with standalone_redis() as url:
        limiter = RedisLimiter.from_url(url, key_prefix="gw:", timeout_s=0.5)
        try:
            assert (await limiter.reserve(tenant, [(RPM, 1)], now_ms=T0)).allowed
            await limiter._redis.script_flush()
            assert (await limiter.reserve(tenant, [(RPM, 1)], now_ms=T0)).allowed
            await limiter._redis.script_flush()
            await limiter.settle(tenant, [(RPM, -2)], now_ms=T0)
            assert state(await limiter.reserve(tenant, [(RPM, 3)], now_ms=T0), "rpm")[0] == 0
        finally:
            await limiter.aclose()


class SilentServer:
    """A TCP server that accepts connections and never answers."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await reader.read()  # swallow everything until the client hangs up

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def silent_limiter() -> AsyncIterator[RedisLimiter]:
    async with SilentServer() as server:
        limiter = RedisLimiter.from_url(f"redis://127.0.0.1:{server.port}", key_prefix="gw:")
        yield limiter
        await limiter.aclose()


async def test_silent_redis_times_out_quickly(silent_limiter: RedisLimiter, tenant: str):
    for _ in range(2):  # a fresh connection, then one the pool made after a failure
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable):
            await silent_limiter.reserve(tenant, [(RPM, 1)])
        assert time.monotonic() - started < 0.15
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await silent_limiter.settle(tenant, [(RPM, -1)])
    assert time.monotonic() - started < 0.15


async def test_refused_connection_is_unavailable(tenant: str):
    from tests.services import free_port

    limiter = RedisLimiter.from_url(f"redis://127.0.0.1:{free_port()}", key_prefix="gw:")
    try:
        with pytest.raises(LimiterUnavailable, match="unavailable"):
            await limiter.reserve(tenant, [(RPM, 1)])
    finally:
        await limiter.aclose()


# --- FailoverLimiter ---------------------------------------------------------------------


class SwitchableLimiter:
    """A real limiter behind a switch that can make it 'unavailable'."""

    def __init__(self, inner: Limiter) -> None:
        self.inner = inner
        self.down = False
        self.calls = 0

    async def reserve(self, tenant_id: str, demands: Sequence[Demand], **kw: object) -> Decision:
        self.calls += 1
        if self.down:
            raise LimiterUnavailable("switched off")
        return await self.inner.reserve(tenant_id, demands, **kw)  # type: ignore[arg-type]

    async def settle(self, tenant_id: str, adjustments: Sequence[Demand], **kw: object) -> None:
        self.calls += 1
        if self.down:
            raise LimiterUnavailable("switched off")
        await self.inner.settle(tenant_id, adjustments, **kw)  # type: ignore[arg-type]


async def test_failover_closed_reraises_and_then_fails_fast(
    silent_limiter: RedisLimiter, tenant: str
):
    clock = ManualClock()
    failover = FailoverLimiter(
        silent_limiter, MemoryLimiter(clock), mode="closed", replicas=2, clock=clock
    )
    with pytest.raises(LimiterUnavailable):
        await failover.reserve(tenant, [(RPM, 1)])
    assert failover.degraded and failover.primary_failures == 1
    started = time.monotonic()
    for _ in range(100):
        with pytest.raises(LimiterUnavailable, match="breaker"):
            await failover.reserve(tenant, [(RPM, 1)])
    assert (time.monotonic() - started) / 100 < 0.001  # the breaker skips the dead Redis
    assert failover.primary_failures == 1 and failover.degraded_decisions == 0


async def test_failover_open_admits_the_local_share(silent_limiter: RedisLimiter, tenant: str):
    clock = ManualClock()
    failover = FailoverLimiter(
        silent_limiter, MemoryLimiter(clock), mode="open", replicas=2, clock=clock
    )
    rpm = BucketSpec("rpm", 10, 600)  # local share: 5 tokens, 5 per second
    started = time.monotonic()
    decisions = [await failover.reserve(tenant, [(rpm, 1)]) for _ in range(6)]
    assert time.monotonic() - started < 0.2  # one timeout, then local answers
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].retry_after_ms == 200 and decisions[-1].buckets[0].limit == 5
    assert failover.degraded and failover.degraded_decisions == 6
    assert failover.primary_failures == 1
    clock.advance(0.2)
    assert (await failover.reserve(tenant, [(rpm, 1)])).allowed


async def test_failover_oversize_request_fits_the_real_limit_when_degraded(tenant: str):
    clock = ManualClock()
    primary = SwitchableLimiter(MemoryLimiter(clock))
    primary.down = True
    failover = FailoverLimiter(primary, MemoryLimiter(clock), mode="open", replicas=4, clock=clock)
    tpm = BucketSpec("tpm", 1_000, 60_000)  # local share: 250 tokens, 250 per second
    assert (await failover.reserve(tenant, [(tpm, 1_001)], now_ms=T0)).never_fits
    big = await failover.reserve(tenant, [(tpm, 400)], now_ms=T0)
    assert big.allowed  # admitted on a full share, leaving it 150 in debt
    assert big.reservation is not None and big.reservation.demands == ((tpm, 400),)
    after = await failover.reserve(tenant, [(tpm, 1)], now_ms=T0 + 603)
    assert not after.allowed and after.retry_after_ms == 1  # 151 tokens at 250/s = 604 ms
    assert (await failover.reserve(tenant, [(tpm, 1)], now_ms=T0 + 604)).allowed


async def test_failover_recovers_when_redis_answers(redis_limiter: RedisLimiter, tenant: str):
    clock = ManualClock()
    primary = SwitchableLimiter(redis_limiter)
    failover = FailoverLimiter(primary, MemoryLimiter(clock), mode="open", replicas=2, clock=clock)
    assert (await failover.reserve(tenant, [(TPM, 10)], now_ms=T0)).allowed
    assert not failover.degraded
    primary.down = True
    assert (await failover.reserve(tenant, [(TPM, 10)], now_ms=T0)).allowed
    assert failover.degraded and primary.calls == 2
    await failover.settle(tenant, [(TPM, -5)], now_ms=T0)  # breaker open: applied locally
    assert primary.calls == 2
    primary.down = False
    clock.advance(0.5)
    assert (await failover.reserve(tenant, [(TPM, 10)], now_ms=T0)).allowed
    assert failover.degraded and primary.calls == 2  # still cooling down
    clock.advance(0.5)
    back = await failover.reserve(tenant, [(TPM, 10)], now_ms=T0)
    assert back.allowed and not failover.degraded and primary.calls == 3
    assert state(back, "tpm")[0] == 80  # Redis kept its own count: 100 - 10 - 10
    assert failover.degraded_decisions == 2 and failover.primary_failures == 1


async def test_failover_probe_failure_reopens_the_breaker(tenant: str):
    clock = ManualClock()
    primary = SwitchableLimiter(MemoryLimiter(clock))
    primary.down = True
    failover = FailoverLimiter(primary, MemoryLimiter(clock), mode="open", replicas=1, clock=clock)
    await failover.reserve(tenant, [(RPM, 1)], now_ms=T0)
    clock.advance(1.0)
    await failover.reserve(tenant, [(RPM, 1)], now_ms=T0)  # the probe fails
    await failover.reserve(tenant, [(RPM, 1)], now_ms=T0)  # ...so this one stays local
    assert primary.calls == 2 and failover.primary_failures == 2 and failover.degraded
