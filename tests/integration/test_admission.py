"""Admission end to end in one process: the real app, the simulated upstream behind an httpx
transport, SQLite, the in-process limiter and a fake clock, so the numbers are exact."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.keys import display_prefix, generate_key, hash_key
from gateway.config import parse_config
from gateway.db import keys, limits, tenants
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.migrate import upgrade
from gateway.settings import Settings
from gateway.upstream.simulated import SimulatorOptions, create_simulator_app, parse_faults

PEPPER = b"test-pepper"
CHAT = [{"role": "user", "content": "Count these words with the real tokenizer, please."}]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.mono = 1000.0

    def now_s(self) -> float:
        return self.now

    def monotonic_s(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


CONFIG = parse_config(
    {
        "deployments": [
            {
                "name": "sim",
                "provider": "mistral",
                "base_url": "http://sim.invalid/v1",
                "region": "eu-west",
                "jurisdiction": "eu",
                "models": {
                    "mistral-small-latest": "mistral-small-latest",
                    "mistral-embed": "mistral-embed",
                },
            }
        ],
        # The fake clock never moves, so an ejection would last forever: keep it out of these.
        "routing": {"ejection": {"consecutive_failures": 100}},
    }
)


async def _seed(url: str, **limit_values: int) -> str:
    engine = make_engine(Settings(database_url=url))
    key = generate_key()
    now = datetime.now(UTC)
    async with make_sessionmaker(engine)() as session, session.begin():
        tenant = await tenants.create_tenant(session, name="t", now=now)
        await keys.insert_key(
            session,
            tenant_id=tenant.id,
            key_hash=hash_key(key, PEPPER),
            prefix=display_prefix(key),
            now=now,
        )
        await limits.set_limits(session, tenant.id, model=None, now=now, **limit_values)
    await engine.dispose()
    return key


class Gateway:
    def __init__(self, client: TestClient, key: str, clock: FakeClock, simulator) -> None:
        self.client = client
        self.key = key
        self.clock = clock
        self.simulator = simulator

    def program_faults(self, faults: list[dict]) -> None:
        self.simulator.state.simulator.state.faults.extend(parse_faults(faults))

    def post(self, path: str, body: dict) -> httpx.Response:
        response = self.client.post(
            path, json=body, headers={"authorization": f"Bearer {self.key}"}
        )
        self.settled()
        return response

    def settled(self) -> None:
        """Wait until background settlement is done (it runs after the response)."""
        tasks = self.client.app.state.gateway.admitter.tasks  # type: ignore[attr-defined]
        self.client.portal.call(tasks.drain)  # type: ignore[union-attr]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator:
    clients: list[TestClient] = []

    def build(**limit_values: int) -> Gateway:
        url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
        upgrade(url)
        key = asyncio.run(_seed(url, **limit_values))
        clock = FakeClock()
        settings = Settings(database_url=url, key_pepper=PEPPER.decode(), default_output_tokens=100)
        simulator = create_simulator_app(SimulatorOptions(output_tokens=7))
        app = create_app(
            settings, CONFIG, clock=clock, transport=httpx.ASGITransport(app=simulator)
        )
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return Gateway(client, key, clock, simulator)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def remaining_tokens(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def test_reserve_counts_the_prompt_like_the_upstream_and_settle_is_exact(make_gateway) -> None:
    gw = make_gateway(tpm=10_000)
    first = gw.post(
        "/v1/chat/completions",
        {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 20},
    )
    assert first.status_code == 200, first.text
    usage = first.json()["usage"]
    # at reserve time: prompt (counted by the gateway) + max_tokens were taken
    assert remaining_tokens(first) == 10_000 - (usage["prompt_tokens"] + 20)
    second = gw.post("/v1/chat/completions", {"model": "mistral-small-latest", "messages": CHAT})
    # the first was settled to its actual usage; the second reserves prompt + default 100
    assert remaining_tokens(second) == 10_000 - usage["total_tokens"] - (
        usage["prompt_tokens"] + 100
    )
    third = gw.post("/v1/chat/completions", {"model": "mistral-small-latest", "messages": CHAT})
    assert remaining_tokens(third) == 10_000 - 2 * usage["total_tokens"] - (
        usage["prompt_tokens"] + 100
    )


def test_streamed_usage_settles_exactly(make_gateway) -> None:
    gw = make_gateway(tpm=10_000)
    body = {"model": "mistral-small-latest", "messages": CHAT, "stream": True, "max_tokens": 50}
    streamed = gw.post("/v1/chat/completions", body)
    assert streamed.status_code == 200
    last = [line for line in streamed.text.splitlines() if line.startswith("data: {")][-1]
    usage = orjson.loads(last[6:])["usage"]
    after = gw.post(
        "/v1/chat/completions", {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 1}
    )
    assert remaining_tokens(after) == 10_000 - usage["total_tokens"] - (usage["prompt_tokens"] + 1)


def test_embeddings_are_counted(make_gateway) -> None:
    gw = make_gateway(tpm=10_000)
    first = gw.post("/v1/embeddings", {"model": "mistral-embed", "input": ["alpha beta", "gamma"]})
    assert first.status_code == 200
    prompt = first.json()["usage"]["prompt_tokens"]
    assert remaining_tokens(first) == 10_000 - prompt  # embeddings reserve no output


def test_rpm_refusal_says_when_to_come_back(make_gateway) -> None:
    gw = make_gateway(rpm=3)
    body = {"model": "mistral-small-latest", "messages": CHAT}
    for expected_remaining in (2, 1, 0):
        ok = gw.post("/v1/chat/completions", body)
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "3"
        assert ok.headers["x-ratelimit-remaining-requests"] == str(expected_remaining)
    refused = gw.post("/v1/chat/completions", body)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"
    assert "requests per minute" in error["message"]
    assert refused.headers["retry-after"] == "20"  # 3/min refills one every 20 s
    assert refused.headers["retry-after-ms"] == "20000"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    gw.clock.advance(19.9)
    assert gw.post("/v1/chat/completions", body).status_code == 429
    gw.clock.advance(0.1)
    assert gw.post("/v1/chat/completions", body).status_code == 200


def test_a_request_that_can_never_fit_is_refused_for_good(make_gateway) -> None:
    gw = make_gateway(tpm=500)
    refused = gw.post(
        "/v1/chat/completions",
        {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 600},
    )
    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.headers
    assert "can never be admitted" in refused.json()["error"]["message"]
    # nothing was taken
    ok = gw.post(
        "/v1/chat/completions", {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 5}
    )
    assert ok.status_code == 200


def test_upstream_failure_refunds_the_tokens(make_gateway) -> None:
    gw = make_gateway(tpm=10_000, rpm=100)
    body = {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 30}
    gw.program_faults([{"status": 503}] * 3)  # every attempt of the retry policy fails
    failing = gw.post("/v1/chat/completions", body)
    assert failing.status_code == 503
    ok = gw.post("/v1/chat/completions", body)
    # the failed request's tokens came back in full; its request still counted
    assert remaining_tokens(ok) == 10_000 - (ok.json()["usage"]["prompt_tokens"] + 30)
    assert ok.headers["x-ratelimit-remaining-requests"] == "98"


def test_unlimited_tenant_has_no_rate_headers(make_gateway) -> None:
    gw = make_gateway()
    ok = gw.post("/v1/chat/completions", {"model": "mistral-small-latest", "messages": CHAT})
    assert ok.status_code == 200
    assert "x-ratelimit-limit-requests" not in ok.headers
