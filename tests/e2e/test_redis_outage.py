"""Redis outages end to end: real gateway processes, a real simulated upstream, a private Redis
that the tests kill, restart empty and freeze, and real HTTP clients.

- fail-open: Redis killed mid-load. Requests keep being served, but only within this replica's
  share of the limit (burst // replicas, plus refill // replicas per minute); nothing hangs;
  once Redis is back (empty: no keys, no scripts) admission returns to Redis within a breaker
  period and stays there (the pool's dead connections trip nothing), the scripts are loaded
  again once and called by SHA.
- fail-closed: with Redis down every request is refused fast with a 503 in OpenAI's error
  shape that names the rate limiter, and the upstream never sees it; Redis back, requests
  succeed again.
- slow Redis: a frozen (SIGSTOP) Redis costs a request at most the Redis timeout, never the
  length of the freeze.

Which limiter answered is read from `x-ratelimit-limit-requests`: Redis reports the tenant's
burst, the local fallback reports its share, and the two differ by construction.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import httpx
import openai
import pytest

from gateway.limits.redis import bucket_key
from tests.contract.cluster import RestartableRedis, restartable_redis
from tests.e2e.stack import (
    ROOT,
    base_env,
    cli,
    create_tenant,
    gateway_server,
    routing_file,
    simulator,
)
from tests.e2e.test_errors import assert_error
from tests.services import free_port

MODEL = "mistral-small-latest"
REPLICAS = 2
# The metered tenant: Redis holds a burst of 20 and refills 60/min; each of the two replicas'
# local shares holds 10 and refills 30/min. Computed here, not with the gateway's own helper.
RPM, RPM_BURST = 60, 20
SHARE_RPM, SHARE_BURST = RPM // REPLICAS, RPM_BURST // REPLICAS
# The roomy tenant never meets its limit in these tests; its share is as distinct.
ROOMY_RPM = 6000
ROOMY_SHARE = ROOMY_RPM // REPLICAS

# Above the default 50 ms so that two cores running everything give no spurious timeout,
# far below the outages below so that a call waiting on Redis would show.
REDIS_TIMEOUT_S = 0.2
BREAKER_S = 1.0  # FailoverLimiter's cooldown: how long a tripped breaker keeps Redis out
SLACK_S = 1.0  # scheduling and HTTP on a loaded two-core machine
MAX_LATENCY_S = 2.0  # the "nothing hangs": no answer takes longer than this
RECOVERY_S = BREAKER_S + 2 * SLACK_S  # Redis answers PING → Redis admits again

WORKERS = 4  # concurrent clients of the load
PACE_S = 0.05  # each client's pause between requests (≤ 80 req/s in all)
BEFORE_S = 1.0  # load with Redis healthy before the fault
OUTAGE_S = 3.0  # Redis dead
FREEZE_S = 2.5  # Redis frozen: a request waiting it out would break REDIS_TIMEOUT_S + SLACK_S
AFTER_S = 1.0  # load after Redis admits again


@dataclass(frozen=True)
class Outage:
    """The stack: a restartable Redis, and one gateway per failure mode sharing it."""

    redis: RestartableRedis
    sim_url: str
    open_url: str
    closed_url: str
    metered: tuple[str, str]  # (tenant id, key)
    roomy: tuple[str, str]


OPEN_PREFIX, CLOSED_PREFIX = "open:", "closed:"


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    tmp = tmp_path_factory.mktemp("redis-outage")
    env = base_env()
    env["GATEWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / 'gateway.db'}"
    with ExitStack() as stack:
        redis = stack.enter_context(restartable_redis())
        sim_url = stack.enter_context(simulator("mistral", tmp, env))
        env["GATEWAY_CONFIG"] = str(routing_file(tmp / "r.yaml", sim_url, sim_url, free_port()))
        cli(env, "migrate")
        metered = create_tenant(env, "metered", "--rpm", str(RPM), "--rpm-burst", str(RPM_BURST))
        roomy = create_tenant(env, "roomy", "--rpm", str(ROOMY_RPM))
        common = {
            **env,
            "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_REDIS_TIMEOUT_S": str(REDIS_TIMEOUT_S),
            "GATEWAY_REPLICAS": str(REPLICAS),
        }
        servers = [
            gateway_server(
                {
                    **common,
                    "GATEWAY_LIMITER_FAILURE_MODE": mode,
                    "GATEWAY_REDIS_KEY_PREFIX": prefix,
                },
                tmp / f"gateway-{mode}.log",
            )
            for mode, prefix in (("open", OPEN_PREFIX), ("closed", CLOSED_PREFIX))
        ]
        with ThreadPoolExecutor(len(servers)) as pool:  # both start at once: saves seconds
            open_url, closed_url = pool.map(stack.enter_context, servers)
        yield Outage(redis, sim_url, open_url, closed_url, metered, roomy)


@pytest.fixture
def redis(outage: Outage) -> Iterator[RestartableRedis]:
    """The private Redis, running at the start and (whatever the test did) at the end."""
    if not outage.redis.running:
        outage.redis.start()
    yield outage.redis
    if not outage.redis.running:
        outage.redis.start()


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it (monotonic seconds); status 0: no HTTP answer."""

    sent: float
    received: float
    status: int
    code: str | None  # the error code of an error body
    limit: int | None  # x-ratelimit-limit-requests: who admitted (burst: Redis; share: local)
    remaining: int | None

    @property
    def latency_s(self) -> float:
        return self.received - self.sent


def _body() -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _header(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name)
    return int(value) if value is not None else None


async def _call(client: httpx.AsyncClient, url: str, key: str) -> Answer:
    sent = time.monotonic()
    try:
        response = await client.post(
            f"{url}/v1/chat/completions", json=_body(), headers={"authorization": f"Bearer {key}"}
        )
    except httpx.HTTPError:  # recorded, and failed on by the test with the rest
        return Answer(sent, time.monotonic(), 0, None, None, None)
    received = time.monotonic()
    code = response.json()["error"]["code"] if response.status_code != 200 else None
    return Answer(
        sent,
        received,
        response.status_code,
        code,
        _header(response, "x-ratelimit-limit-requests"),
        _header(response, "x-ratelimit-remaining-requests"),
    )


class Load:
    """WORKERS clients of one tenant, each sending, waiting PACE_S, sending again."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.answers: list[Answer] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10 * MAX_LATENCY_S) as client:
            await asyncio.gather(*(self._client(client) for _ in range(WORKERS)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            self.answers.append(await _call(client, self.url, self.key))
            await asyncio.sleep(PACE_S)

    def stop(self) -> None:
        self._stop.set()

    async def until(self, predicate: object, timeout_s: float) -> float | None:
        """Wait until an answer satisfies `predicate`; the time it was received, or None."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            for answer in self.answers[seen:]:
                if predicate(answer):  # type: ignore[operator]
                    return answer.received
            seen = len(self.answers)
            await asyncio.sleep(0.02)
        return None


def _script_sha(name: str) -> str:
    return hashlib.sha1((ROOT / "gateway/limits/lua" / name).read_bytes()).hexdigest()


async def test_fail_open_serves_the_local_share_while_redis_is_dead_and_resumes(
    outage: Outage, redis: RestartableRedis
) -> None:
    tenant_id, key = outage.metered
    load = Load(outage.open_url, key)
    running = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(BEFORE_S)
        await asyncio.to_thread(redis.stop)  # SIGTERM; returns once the process is gone
        dead = time.monotonic()
        await asyncio.sleep(OUTAGE_S)
        reviving = time.monotonic()
        await asyncio.to_thread(redis.start)  # empty: no keys, no scripts
        up = time.monotonic()
        back = await load.until(lambda a: a.sent >= up and a.limit == RPM_BURST, RECOVERY_S)
        await asyncio.sleep(AFTER_S)
    finally:
        load.stop()
        await running
    answers = sorted(load.answers, key=lambda a: a.sent)

    # Served or rate limited, never a 5xx; nothing hangs; every answer names its limiter:
    # Redis or this replica's share.
    assert {(a.status, a.code) for a in answers} <= {(200, None), (429, "rate_limit_exceeded")}
    slowest = max(a.latency_s for a in answers)
    assert slowest <= MAX_LATENCY_S, f"a request took {slowest:.2f} s"
    assert {a.limit for a in answers} <= {RPM_BURST, SHARE_BURST}
    before = [a for a in answers if a.received < dead]
    assert any(a.status == 200 and a.limit == RPM_BURST for a in before)  # Redis served first

    # While Redis is dead, only the local share answers: it serves, and it caps.
    during = [a for a in answers if a.sent > dead and a.received < reviving]
    assert during and all(a.limit == SHARE_BURST for a in during)
    local = [a for a in answers if a.limit == SHARE_BURST]
    local_ok = sum(a.status == 200 for a in local)
    elapsed_s = max(a.received for a in local) - min(a.sent for a in local)
    allowed = SHARE_BURST + SHARE_RPM * elapsed_s / 60
    assert SHARE_BURST <= local_ok <= allowed, (local_ok, allowed)
    assert sum(a.status == 429 for a in during) > 0  # the share ran out: capped, not open
    assert local_ok < RPM_BURST  # less than Redis alone would have let through

    # Redis back (empty): Redis admits again within a breaker period, from a fresh bucket,
    # and keeps doing so.
    assert back is not None, f"Redis did not admit again within {RECOVERY_S} s of restarting"
    assert back - up <= RECOVERY_S
    after = [a for a in answers if a.sent > back]
    assert after and all(a.limit == RPM_BURST for a in after)
    fresh = [a.remaining for a in answers if a.sent >= up and a.limit == RPM_BURST]
    assert max(r for r in fresh if r is not None) > SHARE_BURST  # the full limit, not a share

    client = redis.client()
    try:
        assert client.exists(bucket_key(OPEN_PREFIX, tenant_id, "rpm"))
        # The scripts came back by SCRIPT LOAD, once per request that met NOSCRIPT at most,
        # and every admission since went by SHA, never as a full EVAL.
        assert client.script_exists(_script_sha("reserve_v1.lua")) == [True]
        stats = client.info("commandstats")
        assert "cmdstat_eval" not in stats
        assert 1 <= stats["cmdstat_script|load"]["calls"] <= WORKERS
        assert stats["cmdstat_evalsha"]["calls"] >= len(after)
    finally:
        client.close()
    print(
        f"fail-open: {len(answers)} requests, {local_ok} admitted locally in {elapsed_s:.1f} s "
        f"(share allows {allowed:.1f}), Redis admitting again {back - up:.2f} s after restart, "
        f"slowest {slowest * 1000:.0f} ms"
    )


def _closed_client(outage: Outage) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{outage.closed_url}/v1",
        api_key=outage.roomy[1],
        max_retries=0,
        timeout=10 * MAX_LATENCY_S,
    )


async def test_fail_closed_refuses_with_503_while_redis_is_dead_and_resumes(
    outage: Outage, redis: RestartableRedis
) -> None:
    _, key = outage.roomy
    url = f"{outage.closed_url}/v1/chat/completions"
    auth = {"authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(timeout=10 * MAX_LATENCY_S) as client,
        _closed_client(outage) as sdk,
    ):
        # Concurrent requests leave several connections in the gateway's Redis pool.
        oks = await asyncio.gather(
            *(client.post(url, json=_body(), headers=auth) for _ in range(2 * WORKERS))
        )
        for ok in oks:
            assert ok.status_code == 200, ok.text
            assert ok.headers["x-ratelimit-limit-requests"] == str(ROOMY_RPM)
        upstream_seen = len(httpx.get(f"{outage.sim_url}/_sim/requests", timeout=5).json())

        await asyncio.to_thread(redis.stop)

        async def refused() -> tuple[float, str]:
            sent = time.monotonic()
            response = await client.post(url, json=_body(), headers=auth)
            latency_s = time.monotonic() - sent
            error = assert_error(response, 503, "limiter_unavailable")
            assert error["type"] == "api_error" and error["param"] is None
            assert "rate limiter is unavailable" in error["message"]
            return latency_s, error["message"]

        # The first calls find Redis refusing; the next ones, within a breaker period of
        # that, find the breaker open; then a call probes Redis again.
        refusals = []
        for _ in range(3):
            refusals += await asyncio.gather(*(refused() for _ in range(WORKERS)))
            await asyncio.sleep(BREAKER_S / 2)
        latencies = [latency_s for latency_s, _ in refusals]
        assert max(latencies) <= MAX_LATENCY_S, latencies
        assert any("breaker open" in message for _, message in refusals)
        with pytest.raises(openai.InternalServerError) as raised:
            await sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert raised.value.status_code == 503
        assert "rate limiter is unavailable" in raised.value.message
        seen = len(httpx.get(f"{outage.sim_url}/_sim/requests", timeout=5).json())
        assert seen == upstream_seen  # refused before any upstream call

        await asyncio.to_thread(redis.start)
        up = time.monotonic()
        while True:
            response = await client.post(url, json=_body(), headers=auth)
            if response.status_code == 200:
                break
            assert_error(response, 503, "limiter_unavailable")
            assert time.monotonic() - up <= RECOVERY_S, "Redis is back but requests still fail"
            await asyncio.sleep(0.05)
        recovered_s = time.monotonic() - up
        # None of them fails on a connection the restart left dead.
        answers = await asyncio.gather(
            *(client.post(url, json=_body(), headers=auth) for _ in range(2 * WORKERS))
        )
        assert [a.status_code for a in answers] == [200] * len(answers)
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}]
        )
        assert completion.choices[0].message.content
    print(
        f"fail-closed: 503 in at most {max(latencies) * 1000:.0f} ms, "
        f"serving again {recovered_s:.2f} s after restart"
    )


async def test_frozen_redis_costs_a_request_at_most_the_timeout(
    outage: Outage, redis: RestartableRedis
) -> None:
    load = Load(outage.open_url, outage.roomy[1])
    running = asyncio.create_task(load.run())
    try:
        await asyncio.sleep(BEFORE_S / 2)
        frozen = time.monotonic()
        with redis.frozen():
            await asyncio.sleep(FREEZE_S)
        thawed = time.monotonic()
        back = await load.until(lambda a: a.sent >= thawed and a.limit == ROOMY_RPM, RECOVERY_S)
        await asyncio.sleep(AFTER_S / 2)
    finally:
        load.stop()
        await running
    answers = load.answers
    assert {(a.status, a.code) for a in answers} == {(200, None)}
    # A stopped Redis answers nothing: the local share answered, and kept serving...
    during = [a for a in answers if a.sent >= frozen and a.received < thawed]
    assert during and all(a.limit == ROOMY_SHARE for a in during)
    # ...and waiting on Redis cost no request more than the timeout, never the freeze.
    slowest = max(a.latency_s for a in answers)
    assert slowest <= REDIS_TIMEOUT_S + SLACK_S < FREEZE_S, f"a request took {slowest:.2f} s"
    assert back is not None and back - thawed <= RECOVERY_S
    assert all(a.limit == ROOMY_RPM for a in answers if a.sent > back)
    print(
        f"frozen Redis: {len(during)} requests during a {FREEZE_S} s freeze, slowest "
        f"{slowest * 1000:.0f} ms, Redis admitting again {back - thawed:.2f} s after thaw"
    )
