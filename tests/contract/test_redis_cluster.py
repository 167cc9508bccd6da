"""RedisLimiter on a real 3-master Redis Cluster (redis.asyncio.RedisCluster).

Checks that the multi-key scripts route by the tenant's hash tag (no CROSSSLOT) for tenants
spread over every master, that NOSCRIPT after a flush on every node is recovered, and that
atomicity holds under concurrency: 300 simultaneous reserves on a 120-token bucket grant 120.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import pytest
import redis as redis_sync
from redis.crc import key_slot

from gateway.limits import BucketSpec, ConcurrencySpec, RedisLimiter, bucket_key
from tests.contract.cluster import ClusterNodes, redis_cluster

T0 = 1_700_000_000_000
RPM = BucketSpec("rpm", 3, 60)
TPM = BucketSpec("tpm", 100, 6_000)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterNodes]:
    with redis_cluster(masters=3) as nodes:
        yield nodes


@pytest.fixture(scope="module")
async def cluster_limiter(cluster: ClusterNodes) -> AsyncIterator[RedisLimiter]:
    # A roomier deadline than production: 300 concurrent calls share one test event loop.
    limiter = RedisLimiter.from_url(cluster.url, key_prefix="gw:", timeout_s=1.0, cluster=True)
    yield limiter
    await limiter.aclose()


def tenants_on_every_master(cluster: ClusterNodes, count: int) -> list[str]:
    """Tenant ids whose keys land on all three masters (the default 3-way slot split)."""
    tenants = [f"c-{uuid4().hex[:8]}" for _ in range(count)]
    owners = {key_slot(bucket_key("gw:", t, "rpm").encode()) * 3 // 16384 for t in tenants}
    assert owners == {0, 1, 2}, "pick more tenants"
    return tenants


async def test_multi_bucket_reserve_and_settle_on_every_master(
    cluster: ClusterNodes, cluster_limiter: RedisLimiter
):
    model = BucketSpec("rpm:model:m", 2, 60)
    for tenant in tenants_on_every_master(cluster, 24):
        demands = [(RPM, 1), (TPM, 60), (model, 1)]
        first = await cluster_limiter.reserve(tenant, demands, now_ms=T0)
        assert first.allowed and first.reservation is not None
        denied = await cluster_limiter.reserve(tenant, demands, now_ms=T0)
        assert not denied.allowed and (denied.denied, denied.retry_after_ms) == ("tpm", 200)
        await cluster_limiter.settle(tenant, first.reservation.adjustments({"tpm": 20}), now_ms=T0)
        again = await cluster_limiter.reserve(tenant, demands, now_ms=T0)
        assert again.allowed and again.buckets[1].remaining == 20


async def test_concurrency_and_server_time(cluster_limiter: RedisLimiter):
    tenant = f"c-{uuid4().hex[:8]}"
    conc = ConcurrencySpec(limit=1)
    held = await cluster_limiter.reserve(tenant, [(RPM, 1)], concurrency=conc)
    assert held.allowed and held.reservation is not None
    blocked = await cluster_limiter.reserve(tenant, [(RPM, 1)], concurrency=conc)
    assert not blocked.allowed and blocked.denied == "concurrency"
    await cluster_limiter.settle(tenant, [(RPM, -1)], release_slot=held.reservation.slot_id)
    assert (await cluster_limiter.reserve(tenant, [(RPM, 3)], concurrency=conc)).allowed


def flush_scripts(cluster: ClusterNodes) -> None:
    """SCRIPT FLUSH on every node, as a restart or failover would leave them."""
    for port in cluster.ports:
        with redis_sync.Redis(host=cluster.host, port=port) as node:
            node.script_flush()


async def test_recovers_after_script_flush_on_every_node(
    cluster: ClusterNodes, cluster_limiter: RedisLimiter
):
    tenant = f"c-{uuid4().hex[:8]}"
    assert (await cluster_limiter.reserve(tenant, [(RPM, 1)], now_ms=T0)).allowed
    flush_scripts(cluster)
    assert (await cluster_limiter.reserve(tenant, [(RPM, 1)], now_ms=T0)).allowed
    flush_scripts(cluster)
    await cluster_limiter.settle(tenant, [(RPM, -2)], now_ms=T0)
    assert (await cluster_limiter.reserve(tenant, [(RPM, 3)], now_ms=T0)).allowed


async def test_concurrent_reserves_grant_exactly_the_capacity(cluster_limiter: RedisLimiter):
    tenant = f"c-{uuid4().hex[:8]}"
    bucket = BucketSpec("rpm", 120, 120)
    decisions = await asyncio.gather(
        *(cluster_limiter.reserve(tenant, [(bucket, 1)], now_ms=T0) for _ in range(300))
    )
    assert sum(d.allowed for d in decisions) == 120
    assert all(d.retry_after_ms > 0 for d in decisions if not d.allowed)
