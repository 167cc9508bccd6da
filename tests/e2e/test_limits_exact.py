"""Exactness across replicas: two gateway processes share one Redis, many clients of one tenant
hammer them for over a minute, and no 60 s window admits more than the limit plus its burst,
nor (while the load saturates the tenant) less than 99% of the limit.

It runs twice at once, against a standalone Redis and against a 3-master Redis Cluster started
from the local redis-server binary; each pair has one tenant limited by RPM and one by TPM.
Clients honour `retry-after-ms`, as the SDKs do, so the load keeps the buckets drained without
flooding the two cores.

The time a request was admitted is taken as the midpoint of its send and receive; windows are
narrowed (upper bound) or widened (lower bound) by the largest half round trip, so the check
never blames the gateway for the measurement's own slack.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
import pytest

from tests.contract.cluster import redis_cluster
from tests.e2e.stack import base_env, cli, create_tenant, gateway_server, routing_file, simulator
from tests.services import PostgresServer, RedisServer, free_port, run_prefix

LOAD_S = 75.0
WINDOW_S = 60.0
CLIENTS_PER_TENANT = 8
RPM, RPM_BURST = 120, 2
TPM, TPM_BURST = 60_000, 600
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "limits",
    "hold",
    "across",
    "every",
    "replica",
]


@dataclass
class Admitted:
    """Requests a tenant got served: (admission time, tokens) and the worst half round trip."""

    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    slack_s: float = 0.0
    refused: int = 0


@dataclass(frozen=True)
class Pair:
    """Two gateway replicas sharing one Redis, and the keys of their two tenants."""

    name: str
    urls: tuple[str, str]
    rpm_key: str
    tpm_key: str


@pytest.fixture(scope="module")
def pairs(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer, redis_srv: RedisServer
) -> Iterator[list[Pair]]:
    tmp = tmp_path_factory.mktemp("exact")
    env = base_env()
    database = pg_server.create_database()
    prefix = run_prefix()
    env["GATEWAY_DATABASE_URL"] = pg_server.async_url(database)
    try:
        with ExitStack() as stack:
            sim_url = stack.enter_context(simulator("mistral", tmp, env))
            env["GATEWAY_CONFIG"] = str(routing_file(tmp / "r.yaml", sim_url, sim_url, free_port()))
            cli(env, "migrate")
            flags = ("--rpm", str(RPM), "--rpm-burst", str(RPM_BURST))
            _, rpm_key = create_tenant(env, "by-requests", *flags)
            _, tpm_key = create_tenant(
                env, "by-tokens", "--tpm", str(TPM), "--tpm-burst", str(TPM_BURST)
            )
            cluster = stack.enter_context(redis_cluster())
            backends = {
                "standalone": {"GATEWAY_REDIS_URL": redis_srv.url},
                "cluster": {"GATEWAY_REDIS_URL": cluster.url, "GATEWAY_REDIS_CLUSTER": "true"},
            }
            pairs = []
            for name, redis_env in backends.items():
                replica_env = {
                    **env,
                    **redis_env,
                    "GATEWAY_REDIS_KEY_PREFIX": prefix,
                    "GATEWAY_REPLICAS": "2",
                    # Fail closed: a Redis hiccup must show up as a 503 here, not as a quiet
                    # local-share admission. Two cores run four gateways: allow slow answers.
                    "GATEWAY_LIMITER_FAILURE_MODE": "closed",
                    "GATEWAY_REDIS_TIMEOUT_S": "0.5",
                }
                urls = tuple(
                    stack.enter_context(gateway_server(replica_env, tmp / f"{name}-{i}.log"))
                    for i in range(2)
                )
                pairs.append(Pair(name, urls, rpm_key, tpm_key))  # type: ignore[arg-type]
            yield pairs
    finally:
        pg_server.drop_database(database)
        redis_srv.delete_prefix(prefix)


def _body(rng: random.Random, *, varied: bool) -> dict:
    words = rng.randint(10, 150) if varied else 3
    content = " ".join(rng.choice(WORDS) for _ in range(words))
    return {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": rng.randint(4, 64) if varied else 8,
    }


async def _client(
    client: httpx.AsyncClient,
    urls: tuple[str, str],
    key: str,
    *,
    varied: bool,
    seed: int,
    deadline: float,
    out: Admitted,
) -> None:
    """One tenant client: alternate replicas, wait as long as a 429 says, record admissions."""
    rng = random.Random(seed)
    headers = {"authorization": f"Bearer {key}"}
    turn = seed
    while time.monotonic() < deadline:
        turn += 1
        sent = time.monotonic()
        try:
            response = await client.post(
                f"{urls[turn % 2]}/v1/chat/completions",
                json=_body(rng, varied=varied),
                headers=headers,
            )
        except httpx.TransportError:  # connection lost: an unseen admission can only lower "least"
            continue
        received = time.monotonic()
        if response.status_code == 200:
            out.times.append((sent + received) / 2)
            out.tokens.append(response.json()["usage"]["total_tokens"])
            out.slack_s = max(out.slack_s, (received - sent) / 2)
            continue
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        out.refused += 1
        wait_s = int(response.headers["retry-after-ms"]) / 1000
        await asyncio.sleep(min(wait_s, max(deadline - time.monotonic(), 0)))


async def _load(pairs: list[Pair]) -> dict[tuple[str, str], Admitted]:
    results = {(p.name, kind): Admitted() for p in pairs for kind in ("rpm", "tpm")}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=10, limits=limits) as client:
        deadline = time.monotonic() + LOAD_S
        clients = [
            _client(
                client,
                pair.urls,
                pair.rpm_key if kind == "rpm" else pair.tpm_key,
                varied=kind == "tpm",
                seed=seed,
                deadline=deadline,
                out=results[pair.name, kind],
            )
            for pair in pairs
            for kind in ("rpm", "tpm")
            for seed in range(CLIENTS_PER_TENANT)
        ]
        await asyncio.gather(*clients)
    return results


def _window_sums(times: list[float], weights: list[int], width_s: float) -> list[int]:
    """For each admission, the weight admitted in [its time, its time + width)."""
    order = sorted(range(len(times)), key=times.__getitem__)
    ts = [times[i] for i in order]
    ws = [weights[i] for i in order]
    sums, total, end = [], 0, 0
    for start in range(len(ts)):
        while end < len(ts) and ts[end] < ts[start] + width_s:
            total += ws[end]
            end += 1
        sums.append(total)
        total -= ws[start]
    return sums


def _saturated_window_minimum(
    times: list[float], weights: list[int], width_s: float, first: float, last: float
) -> int:
    """The least weight in any window [s, s + width) lying within the loaded span."""
    ordered = sorted(zip(times, weights, strict=True))
    starts = [t for t, _ in ordered if first <= t and t + width_s <= last]
    assert starts, "the load did not last a whole window"
    return min(sum(w for t, w in ordered if s <= t < s + width_s) for s in starts)


def _check(admitted: Admitted, limit: int, burst: int, weights: list[int]) -> tuple[int, int]:
    slack = admitted.slack_s
    most = max(_window_sums(admitted.times, weights, WINDOW_S - 2 * slack))
    first, last = min(admitted.times), max(admitted.times)
    # Skip the first second: the bucket starts full and the clients start together.
    least = _saturated_window_minimum(
        admitted.times, weights, WINDOW_S + 2 * slack, first + 1, last
    )
    assert most <= limit + burst, f"{most} admitted in a {WINDOW_S:.0f} s window"
    assert least >= 0.99 * limit, f"only {least} admitted in a saturated window"
    # And never ahead of the bucket at any point: burst + refill since the first admission.
    ordered = sorted(zip(admitted.times, weights, strict=True))
    running = 0
    for t, weight in ordered:
        running += weight
        assert running <= burst + limit * (t - first + 2 * slack) / 60
    return most, least


def test_limits_are_exact_across_two_replicas_on_redis_and_redis_cluster(pairs: list[Pair]) -> None:
    results = asyncio.run(_load(pairs))
    for pair in pairs:
        by_requests = results[pair.name, "rpm"]
        by_tokens = results[pair.name, "tpm"]
        assert by_requests.refused > 0 and by_tokens.refused > 0  # the load did saturate
        assert by_requests.slack_s < 0.5 and by_tokens.slack_s < 0.5
        most, least = _check(by_requests, RPM, RPM_BURST, [1] * len(by_requests.times))
        print(f"{pair.name} RPM={RPM}: 60 s windows hold {least}..{most} requests")
        most, least = _check(by_tokens, TPM, TPM_BURST, by_tokens.tokens)
        print(f"{pair.name} TPM={TPM}: 60 s windows hold {least}..{most} tokens")
        assert len(set(by_tokens.tokens)) > 10  # requests of varied sizes
