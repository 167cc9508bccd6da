"""Routing end to end: residency under failures, retries, ejection, the retry budget, balancing
and client hang-ups, through a real gateway to simulator processes (layout: `routing_stack.py`).

What each test shows, and the bound it asserts:
- an `eu` tenant is never served outside the EU while its deployments fail one after another
  (1000 requests, 24 at a time), and gets 503 `residency_unavailable` once none is left; an
  `any` tenant in the same situation reaches the US deployment, so the count can fail;
- 503, 503, 200 upstream is one 200 to the client with `x-gateway-attempts: 3`; the backoff
  between attempts is jittered under its exponential ceiling; a `Retry-After: 1` is waited out;
- a failing replica is ejected after `consecutive_failures` failures, probed once the cool-down
  ends (a failed probe ejects it for twice as long), and takes its share again once healthy;
- under a 100% failure storm the upstreams see at most (1 + r)·N + m·D attempts;
- equal replicas share within ±5% of a third, and a slow one gets clearly fewer requests;
- a client that hangs up mid-stream gets the upstream connection closed within a second;
- a readmitted replica takes a fair share, not a flood while its counters catch up;
- a client that leaves before the upstream's response headers gets the upstream call cancelled.

Measured values are printed (`pytest -s`) so a run shows how close each bound was.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.routing_stack import (
    CATCHUP_REPLICAS,
    EJECT_REPLICAS,
    HANGUP,
    LARGE,
    RES_EU,
    RES_REPLICAS,
    RES_US,
    RETRY,
    ROUTING,
    SMALL,
    SPREAD_REPLICAS,
    STREAM,
    Reply,
    RoutingStack,
    blast,
    chat,
    chat_body,
    routing_stack,
    tally,
)

RETRIES = ROUTING["retries"]
EJECTION = ROUTING["ejection"]
SLACK_S = 0.35  # scheduling slack on a busy two-core machine, for "no later than" bounds


@pytest.fixture(scope="module")
def rs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutingStack]:
    with routing_stack(tmp_path_factory.mktemp("routing")) as stack:
        yield stack


@pytest.fixture(scope="module")
def shared_gateway(rs: RoutingStack) -> Iterator[str]:
    with rs.gateway() as base_url:
        yield base_url


@pytest.fixture
def url(rs: RoutingStack, shared_gateway: str) -> str:
    """The module's gateway, with every simulator's faults and request log cleared."""
    rs.reset()
    return shared_gateway


def by_request(
    tagged: list[tuple[str, dict[str, Any]]],
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """(deployment, simulator log entry) pairs grouped by the gateway's request id, in time
    order: one list per client request, one item per attempt."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for name, entry in sorted(tagged, key=lambda pair: pair[1]["t_mono"]):
        groups[entry["request_id"]].append((name, entry))
    return groups


# --- 1. residency --------------------------------------------------------------------------------


async def test_eu_tenant_stays_in_the_eu_while_every_eu_deployment_fails(
    rs: RoutingStack, url: str
) -> None:
    per_phase = 200
    phases = {"all up": await blast(url, rs.eu_key, SMALL, per_phase, concurrency=24)}
    for spec in RES_EU:  # one more EU deployment fails per phase, La Plateforme last
        rs.fail(spec.name)
        phases[f"{spec.name} down"] = await blast(url, rs.eu_key, SMALL, per_phase, concurrency=24)
    for phase, replies in phases.items():
        print(f"eu tenant, {phase}: {tally(replies)}")

    # While an EU deployment is up, every request succeeds on one that is up.
    replicas = [spec.name for spec in RES_REPLICAS]
    up = [set(replicas[k:]) for k in range(len(replicas))] + [{RES_EU[-1].name}]
    for (phase, replies), allowed in zip(list(phases.items())[:-1], up, strict=True):
        assert {r.status for r in replies} == {200}, phase
        assert {r.deployment for r in replies} <= allowed, phase
    # None is left: 503s; once all are ejected (after a few requests), residency_unavailable.
    last = phases[f"{RES_EU[-1].name} down"]
    assert {r.status for r in last} == {503}
    tail = last[len(last) // 2 :]
    residency = sum(r.code == "residency_unavailable" for r in tail) / len(tail)
    assert residency >= 0.9, tally(tail)
    assert rs.received(RES_US.name) == []  # 1000 requests, not one outside the EU

    # The request header narrows an `any` tenant the same way...
    narrowed = await blast(url, rs.any_key, SMALL, 50, headers={"x-gateway-residency": "eu"})
    print(f"any tenant with x-gateway-residency: eu: {tally(narrowed)}")
    assert {r.status for r in narrowed} == {503}
    assert rs.received(RES_US.name) == []
    # ...while the `any` tenant itself is served from the US: the count above can fail.
    anywhere = await blast(url, rs.any_key, SMALL, 100)
    print(f"any tenant: {tally(anywhere)}")
    assert {(r.status, r.deployment, r.region) for r in anywhere} == {(200, RES_US.name, "us-east")}
    assert len(rs.received(RES_US.name)) == 100


# --- 2. retries ----------------------------------------------------------------------------------


async def test_two_503s_then_success_is_one_200_after_jittered_backoff(
    rs: RoutingStack, url: str
) -> None:
    model, rounds = next(iter(RETRY.models)), 10
    replies = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(rounds):
            rs.fail(RETRY.name, count=2)  # the model's only deployment: retries come back
            replies.append(await chat(client, rs.eu_key, model))
    assert [(r.status, r.attempts, r.deployment) for r in replies] == [
        (200, 3, RETRY.name)
    ] * rounds

    attempts = by_request([(RETRY.name, e) for e in rs.received(RETRY.name)])
    gaps: list[tuple[float, float]] = []
    for reply in replies:
        seen = [entry for _, entry in attempts[str(reply.request_id)]]
        assert [e["status"] for e in seen] == [503, 503, 200]
        t = [e["t_mono"] for e in seen]
        gaps.append((t[1] - t[0], t[2] - t[1]))
    print("gaps between attempts (s):", [(round(a, 3), round(b, 3)) for a, b in gaps])
    base_s, cap_s = RETRIES["backoff_base_s"], RETRIES["backoff_cap_s"]
    for retry, ceiling_s in enumerate([min(cap_s, base_s), min(cap_s, 2 * base_s)]):
        waits = [pair[retry] for pair in gaps]
        # Full jitter: uniform in [0, ceiling]; the gap measured upstream adds a round trip.
        assert max(waits) <= ceiling_s + SLACK_S, waits
        # Spread over the range, not one fixed delay: 10 uniform draws all within 20% of the
        # range of each other has probability 10 x 0.2^9 ≈ 5e-6.
        assert max(waits) - min(waits) >= 0.2 * ceiling_s, waits


async def test_retry_after_is_waited_out(rs: RoutingStack, url: str) -> None:
    rs.fail(RETRY.name, count=1, retry_after=1)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        reply = await chat(client, rs.eu_key, next(iter(RETRY.models)))
    assert (reply.status, reply.attempts) == (200, 2)
    [(_, first), (_, second)] = by_request([(RETRY.name, e) for e in rs.received(RETRY.name)])[
        str(reply.request_id)
    ]
    gap_s = second["t_mono"] - first["t_mono"]
    print(f"Retry-After: 1 -> {gap_s:.3f} s between attempts")
    assert (first["status"], second["status"]) == (503, 200)
    assert 1.0 <= gap_s <= 1.0 + SLACK_S


# --- 3. ejection and return ----------------------------------------------------------------------


async def test_failing_replica_is_ejected_probed_and_readmitted(rs: RoutingStack, url: str) -> None:
    model = next(iter(EJECT_REPLICAS[0].models))
    victim = EJECT_REPLICAS[1].name
    base_s, threshold = EJECTION["base_s"], EJECTION["consecutive_failures"]
    replies: list[Reply] = []

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def drive(done: Callable[[], bool]) -> None:
            """Requests one after another until `done()` (or 10 s, when something is wrong)."""
            give_up_s = time.monotonic() + 10
            while not done() and time.monotonic() < give_up_s:
                replies.append(await chat(client, rs.eu_key, model))
                await asyncio.sleep(0.005)

        await drive(lambda: len(replies) >= 30)  # all three replicas serving
        warm = len(replies)
        rs.heal(victim)  # (clears its request log too: from here on it holds failures only)
        rs.fail(victim)
        failed_s = time.monotonic()
        # Until the threshold's failures have ejected it and the probe after the cool-down has
        # failed too (which ejects it for twice as long); then it heals.
        await drive(lambda: len(replies) % 5 == 0 and len(rs.received(victim)) > threshold)
        failing = rs.received(victim)
        rs.heal(victim)
        probe_s = failing[threshold]["t_mono"]
        await drive(lambda: time.monotonic() > probe_s + 2 * base_s + 1.0)
    recovered = rs.received(victim)

    assert {r.status for r in replies} == {200}  # every failure was retried on another replica
    assert [e["status"] for e in failing] == [503] * (threshold + 1)  # 3 failures, 1 probe
    times = [e["t_mono"] for e in failing]
    ejected_after = [r for r in replies[warm:] if r.sent_s <= times[threshold - 1]]
    probe_delay_s = times[threshold] - times[threshold - 1]
    assert recovered, "the healed replica got no traffic"
    healed_probe_delay_s = recovered[0]["t_mono"] - times[threshold]
    back = [r for r in replies if r.sent_s >= recovered[0]["t_mono"]]
    share = sum(r.deployment == victim for r in back) / len(back)
    print(
        f"ejected after {len(ejected_after)} requests (failures at "
        f"{[round(t - failed_s, 3) for t in times[:threshold]]} s); probed after "
        f"{probe_delay_s:.3f} s; healed probe {healed_probe_delay_s:.3f} s later; then "
        f"{share:.1%} of {len(back)} requests"
    )
    # Traffic moved within a few requests: one request at a time, ties go to the least-served
    # replica, so the failing one comes round about every third request.
    assert len(ejected_after) <= 4 * threshold
    # Nothing during the cool-down; the probe soon after it ended; after the failed probe,
    # nothing for twice as long; then the healed replica serves its share again.
    assert base_s <= probe_delay_s <= base_s + SLACK_S
    assert 2 * base_s <= healed_probe_delay_s <= 2 * base_s + SLACK_S
    assert share >= 0.25
    assert {e["status"] for e in recovered} == {200}


# --- 4. retry budget -----------------------------------------------------------------------------


async def test_failure_storm_stays_within_the_retry_budget(rs: RoutingStack) -> None:
    """Bound: a retry after a failure on D is allowed while D's retries in the window stay
    within m + r·N_D (N_D: requests whose first attempt went to D), so the upstreams see at most
    N + Σ_D (m + r·N_D) = (1 + r)·N + m·D attempts for N client requests in one window. With
    max_attempts 5 and no ejection (only the budget holds retries back), the same storm without
    a budget would cost 5·N."""
    ratio, min_retries, max_attempts, window_s = 0.2, 3, 5, 10.0
    storm = {
        "retries": {
            "max_attempts": max_attempts,
            "backoff_base_s": 0.01,
            "backoff_cap_s": 0.05,
            "budget_ratio": ratio,
            "budget_min_retries": min_retries,
            "budget_window_s": window_s,
        },
        "ejection": {"consecutive_failures": 1_000_000},
    }
    rs.reset()
    with rs.gateway(**storm) as url:
        for spec in RES_EU:
            rs.fail(spec.name)
        started_s = time.monotonic()
        replies = await blast(url, rs.eu_key, SMALL, 300, concurrency=16)
        storm_s = time.monotonic() - started_s
    tagged = [(spec.name, e) for spec in RES_EU for e in rs.received(spec.name)]
    rs.reset()

    n, d, upstream = len(replies), len(RES_EU), len(tagged)
    assert {r.status for r in replies} == {503}
    assert storm_s < window_s - 1  # the whole storm falls in one budget window
    first_on: Counter[str] = Counter()
    charged_to: Counter[str] = Counter()
    for attempts in by_request(tagged).values():
        first_on[attempts[0][0]] += 1
        for failed_on, _ in attempts[:-1]:
            charged_to[failed_on] += 1
    bound = (1 + ratio) * n + min_retries * d
    print(
        f"storm: {n} requests in {storm_s:.2f} s -> {upstream} upstream attempts "
        f"({upstream / n:.3f} per request); bound (1 + {ratio})·{n} + {min_retries}·{d} = "
        f"{bound:.0f}; {max_attempts * n} without a budget; first attempts {dict(first_on)}; "
        f"retries charged {dict(charged_to)}"
    )
    for spec in RES_EU:
        assert charged_to[spec.name] <= min_retries + ratio * first_on[spec.name], spec.name
    assert n < upstream <= bound  # retries happened, within the budget
    assert rs.received(RES_US.name) == []


# --- 5. balancing --------------------------------------------------------------------------------


async def test_load_spreads_evenly_and_a_slow_replica_gets_less(rs: RoutingStack, url: str) -> None:
    small, large = "spread-small", "spread-large"
    names = [spec.name for spec in SPREAD_REPLICAS]
    count = 600
    even = await blast(url, rs.eu_key, small, count, concurrency=16)
    assert {r.status for r in even} == {200}
    shares = {name: len(rs.received(name)) / count for name in names}
    print("equal replicas:", {name: f"{share:.1%}" for name, share in shares.items()})
    for share in shares.values():
        assert abs(share - 1 / 3) <= 0.05 / 3, shares  # ±5% of a third: 190..210 of 600

    # The third replica turns slow for the large model: 300 ms to first token, the others
    # answer at once; it holds requests longer, so least-load sends it fewer.
    rs.fail(names[2], count=count, model=LARGE, status=None, ttft_ms=300)
    slow = await blast(url, rs.eu_key, large, 200, concurrency=16)
    assert {r.status for r in slow} == {200}
    got = Counter(r.deployment for r in slow)
    print("one slow replica:", {name: f"{got[name] / len(slow):.1%}" for name in names})
    assert got[names[2]] <= 0.2 * len(slow)  # a fair share would be a third
    assert min(got[names[0]], got[names[1]]) >= 2 * got[names[2]]


async def test_readmitted_replica_gets_a_fair_share_not_a_flood(rs: RoutingStack, url: str) -> None:
    model = next(iter(CATCHUP_REPLICAS[0].models))
    victim = CATCHUP_REPLICAS[1].name
    replies: list[Reply] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(30):  # all three replicas serving, one request at a time
            replies.append(await chat(client, rs.eu_key, model))
        rs.fail(victim)
        outage = await blast(url, rs.eu_key, model, 200, concurrency=8)  # it is out for these
        rs.heal(victim)
        give_up_s = time.monotonic() + 10
        while time.monotonic() < give_up_s:  # until the probe after its cool-down readmits it
            reply = await chat(client, rs.eu_key, model)
            if reply.deployment == victim:
                break
        after = [await chat(client, rs.eu_key, model) for _ in range(90)]
    assert {r.status for r in (*replies, *outage, *after)} == {200}
    share = sum(r.deployment == victim for r in after) / len(after)
    print(f"readmitted replica: {share:.1%} of the next {len(after)} requests (fair: 33.3%)")
    # One request at a time, every replica idle: a fair balancer gives it about a third.
    assert share <= 0.45


# --- 6. client hang-up ---------------------------------------------------------------------------


async def test_client_disconnect_mid_stream_closes_the_upstream_within_a_second(
    rs: RoutingStack, url: str
) -> None:
    # The first token at once, then one every 2 s: the upstream cannot learn of the hang-up by
    # failing to write within the second this test allows; the gateway has to close it.
    rs.fail(STREAM.name, count=1, status=None, token_delay_ms=2000)
    events: list[str] = []
    request = chat_body(next(iter(STREAM.models)), stream=True, max_tokens=8)
    headers = {"authorization": f"Bearer {rs.eu_key}"}
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=request, headers=headers) as response,
    ):
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 2:  # the role chunk and the first token
                break
    closed_s = time.monotonic()
    assert len(events) == 2

    entry: dict[str, Any] = {}
    while time.monotonic() < closed_s + 3:
        [entry] = rs.received(STREAM.name)
        if entry["t_end_mono"] is not None:
            break
        await asyncio.sleep(0.02)
    ended_after_s = entry["t_end_mono"] - closed_s
    print(f"upstream stream ended {ended_after_s:.3f} s after the hang-up ({entry['outcome']})")
    assert entry["outcome"] == "cancelled"
    assert ended_after_s <= 1.0


async def test_client_disconnect_before_the_answer_closes_the_upstream_within_a_second(
    rs: RoutingStack, url: str
) -> None:
    rs.fail(HANGUP.name, count=1, status=None, hang="before_headers")
    request = chat_body(next(iter(HANGUP.models)))
    headers = {"authorization": f"Bearer {rs.eu_key}"}
    async with httpx.AsyncClient(base_url=url, timeout=0.3) as client:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            await client.post("/v1/chat/completions", json=request, headers=headers)
    left_s = time.monotonic()
    entry: dict[str, Any] = {}
    while time.monotonic() < left_s + 1.5:
        [entry, *_] = rs.received(HANGUP.name)
        if entry["t_end_mono"] is not None:
            break
        await asyncio.sleep(0.05)
    ended = entry["t_end_mono"]
    print(
        f"upstream request ended {'never' if ended is None else f'{ended - left_s:.3f} s'} after the client left"
    )
    assert ended is not None and ended - left_s <= 1.0
