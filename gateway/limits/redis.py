"""`RedisLimiter`: the shared admission limiter in Redis.

Concept: every replica admits against the same buckets in Redis. A reserve is ONE round trip
(EVALSHA reserve_v1) and a settle is ONE (EVALSHA settle_v1); each script is atomic, reads
Redis `TIME` (unless a test passes `now_ms`) so replicas with skewed clocks agree, and touches
only keys passed in KEYS that share the tenant's hash tag, so it runs on Redis Cluster.

Keys (a contract with running systems; `bucket_key` is the one function that builds them):
`{key_prefix}rl:{<tenant>}:<bucket>` for a bucket (a hash: u = units, t = ms), and
`{key_prefix}rl:{<tenant>}:concurrency` for the slot set (a sorted set scored by lease expiry).
Each key expires once it would have refilled completely (plus a margin), so idle tenants cost
nothing; a missing bucket reads as full, so expiry changes no answer.

On standalone Redis the scripts go through a `RedisBatcher`: the reserves and settles of one
event-loop turn share one write on the batcher's own connection (redis-py's per-command
plumbing costs more CPU than the script), each still its own atomic EVALSHA.

Failure mode: every socket operation has a short timeout (`timeout_s` for connect, each write
and each read; a timeout is never retried: redis-py's defaults would hold a request for
seconds; batching pays redis-py's write timeout, a task per write, once per batch); a standalone client retries a broken connection once, at once, on a
new one (after a Redis restart every idle pooled connection is dead, and redis-py 8 hands them
out unchecked); a script Redis lost (restart, SCRIPT FLUSH) is loaded again and run once more;
any Redis error or timeout becomes `LimiterUnavailable` (503) in `_UnavailableOnError`;
`failover.FailoverLimiter` decides what that means for admission.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any
from uuid import uuid4

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

from gateway.errors import LimiterUnavailable
from gateway.limits.limiter import (
    CONCURRENCY,
    BucketState,
    ConcurrencySpec,
    Decision,
    Demand,
    Reservation,
    check_call,
)
from gateway.redis_batch import RedisBatcher

IDLE_MARGIN_MS = 1_000  # keys outlive their refill time by this much


def bucket_key(key_prefix: str, tenant_id: str, bucket: str) -> str:
    """The Redis key of one of a tenant's buckets; `{tenant}` is the Cluster hash tag."""
    return f"{key_prefix}rl:{{{tenant_id}}}:{bucket}"


def _script(name: str) -> str:
    return resources.files("gateway.limits").joinpath("lua", name).read_text(encoding="utf-8")


class _UnavailableOnError:
    """Translate Redis errors and timeouts into `LimiterUnavailable`.

    A plain (sync) context manager around the awaits: an async one cost a generator and two
    coroutines per call, twice a request."""

    __slots__ = ("operation",)

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        # The client's own connect/read/write timeouts bound the call. No outer asyncio
        # timeout: cancelling redis-py mid-handshake leaves half-closed connections in its
        # pool. And redis-py's Cluster client, when it re-reads the topology, can close a
        # connection another request is using, which then fails with RuntimeError or
        # AttributeError, not a RedisError: for admission that too is "Redis did not answer",
        # never a 500. Cancellation and other BaseExceptions pass through.
        if isinstance(exc, Exception):
            raise LimiterUnavailable(
                f"The rate limiter is unavailable ({self.operation}: {type(exc).__name__})."
            ) from exc


# Stateless, so one per operation serves every call (no object per request).
_RESERVE_ERRORS = _UnavailableOnError("reserve")
_SETTLE_ERRORS = _UnavailableOnError("settle")


class RedisLimiter:
    """Token buckets and concurrency slots in Redis (standalone or Cluster)."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        key_prefix: str,
        owns_client: bool = False,
    ) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._owns_client = owns_client
        # The client's socket timeouts bound each batch (see `_UnavailableOnError`).
        self._batch = RedisBatcher(redis) if isinstance(redis, Redis) else None
        # AsyncScript calls EVALSHA and reloads the script itself on NOSCRIPT (restart, flush).
        self._reserve = redis.register_script(_script("reserve_v1.lua"))
        self._settle = redis.register_script(_script("settle_v1.lua"))

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str,
        timeout_s: float = 0.05,
        cluster: bool = False,
        max_connections: int = 512,
    ) -> RedisLimiter:
        """A limiter on its own client with short timeouts and no retry on a timeout."""
        # The asyncio Retry: redis.retry.Retry, given to an asyncio client, returns the
        # coroutine from its loop unawaited, so no failure ever reaches it (nor its retries).
        options = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": max_connections,
        }
        client: Redis | RedisCluster
        if cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            # A pooled connection Redis closed (restart, CLIENT KILL, idle cut) fails on first
            # use: retry once on a new connection, else each one costs a 503 or a breaker trip
            # after Redis is back. Not for the Cluster client, whose retries cover timeouts too.
            retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            client = Redis.from_url(url, **{**options, "retry": retry})
        return cls(client, key_prefix=key_prefix, owns_client=True)

    @property
    def key_prefix(self) -> str:
        """The prefix every key of this limiter starts with."""
        return self._prefix

    async def warm_up(self) -> bool:
        """Connect (and learn a Cluster's slots) and load both scripts, before traffic does.

        Returns False, without raising, when Redis is unavailable: the gateway still starts
        and the failure policy applies until Redis answers.
        """
        try:
            with _UnavailableOnError("warm-up"):
                if isinstance(self._redis, RedisCluster):
                    await self._redis.initialize()
                for script in (self._reserve, self._settle):
                    await self._redis.script_load(script.script)
        except LimiterUnavailable:
            return False
        return True

    async def aclose(self) -> None:
        """Close the client if this limiter created it."""
        if self._batch is not None:
            await self._batch.aclose()
        if self._owns_client:
            await self._redis.aclose()

    async def _run(self, script: AsyncScript, keys: list[str], args: list[int | str]) -> Any:
        """EVALSHA `script`: batched on standalone Redis, loaded again if Redis lost it."""
        if self._batch is None:
            return await script(keys=keys, args=args)
        try:
            return await self._batch.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted empty or was flushed: load it, run once more
            await self._redis.script_load(script.script)
            return await self._batch.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def reserve(
        self,
        tenant_id: str,
        demands: Sequence[Demand],
        *,
        concurrency: ConcurrencySpec | None = None,
        now_ms: int | None = None,
    ) -> Decision:
        """Take every amount (and a slot) or nothing: one EVALSHA of reserve_v1."""
        check_call(tenant_id, demands, reserve=True)
        if not demands and concurrency is None:
            return Decision(True, None, 0, False, (), Reservation(tenant_id, (), None))
        keys = [bucket_key(self._prefix, tenant_id, spec.name) for spec, _ in demands]
        args: list[int | str] = ["" if now_ms is None else now_ms, len(demands), IDLE_MARGIN_MS]
        for spec, amount in demands:
            args += [spec.capacity, spec.refill_per_minute, amount]
        slot_id = None
        if concurrency is not None:
            slot_id = uuid4().hex
            keys.append(bucket_key(self._prefix, tenant_id, CONCURRENCY))
            args += [concurrency.limit, slot_id, concurrency.lease_ms]
        with _RESERVE_ERRORS:
            reply = await self._run(self._reserve, keys, args)
        return _decision(tenant_id, demands, concurrency, slot_id, [int(x) for x in reply])

    async def settle(
        self,
        tenant_id: str,
        adjustments: Sequence[Demand],
        *,
        release_slot: str | None = None,
        now_ms: int | None = None,
    ) -> None:
        """Refund or charge each delta and release the slot: one EVALSHA of settle_v1."""
        check_call(tenant_id, adjustments, reserve=False)
        changed = [(spec, delta) for spec, delta in adjustments if delta != 0]
        if not changed and release_slot is None:
            return
        keys = [bucket_key(self._prefix, tenant_id, spec.name) for spec, _ in changed]
        args: list[int | str] = ["" if now_ms is None else now_ms, len(changed), IDLE_MARGIN_MS]
        for spec, delta in changed:
            args += [spec.capacity, spec.refill_per_minute, delta]
        if release_slot is not None:
            keys.append(bucket_key(self._prefix, tenant_id, CONCURRENCY))
            args.append(release_slot)
        with _SETTLE_ERRORS:
            await self._run(self._settle, keys, args)


def _decision(
    tenant_id: str,
    demands: Sequence[Demand],
    concurrency: ConcurrencySpec | None,
    slot_id: str | None,
    reply: list[int],
) -> Decision:
    allowed, denied_index, retry_ms, never_fits, in_use = reply[:5]
    names = [spec.name for spec, _ in demands] + [CONCURRENCY]
    states = [
        BucketState(spec.name, spec.capacity, reply[6 + 2 * i], reply[7 + 2 * i])
        for i, (spec, _) in enumerate(demands)
    ]
    if concurrency is not None:
        free = max(0, concurrency.limit - in_use)
        states.append(BucketState(CONCURRENCY, concurrency.limit, free, 0))
    reservation = Reservation(tenant_id, tuple(demands), slot_id) if allowed else None
    return Decision(
        allowed=bool(allowed),
        denied=names[denied_index - 1] if denied_index else None,
        retry_after_ms=retry_ms,
        never_fits=bool(never_fits),
        buckets=tuple(states),
        reservation=reservation,
    )
