"""The ledger end to end in one process (embedded mode): the real app and its in-process
writer, SQLite, the simulated upstream behind an httpx transport.

N mixed requests (chat, streamed chat, embeddings, FIM, an upstream failure) leave exactly N
rows (a stream cut mid-way is in the end-to-end ledger tests: the in-process transport cannot
cut one); the tokens and costs in them are what the simulator reported,
priced at the version in force, to the micro-unit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.auth.keys import display_prefix, generate_key, hash_key
from gateway.config import parse_config
from gateway.db import keys, tenants
from gateway.db.budgets import set_budget
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.migrate import upgrade
from gateway.db.prices import add_price
from gateway.db.tables import BudgetAlert, UsageDaily, UsageEvent
from gateway.ledger.pricing import cost_micros
from gateway.limits.budget import BudgetPolicy
from gateway.settings import Settings
from gateway.upstream.simulated import SimulatorOptions, create_simulator_app, parse_faults

PEPPER = b"test-pepper"
CHAT = [{"role": "user", "content": "Price every token of this exactly, please."}]
# EUR list prices per million tokens (shared/API-FACTS.md §5).
SMALL_IN, SMALL_OUT = 120_000, 500_000
CODESTRAL_IN, CODESTRAL_OUT = 260_000, 790_000
EMBED_IN = 100_000


def _config(tmp: Path) -> dict:
    return {
        "deployments": [
            {
                "name": "sim",
                "provider": "mistral",
                "base_url": "http://sim.invalid/v1",
                "region": "eu-west",
                "jurisdiction": "eu",
                "models": {
                    "mistral-small-latest": "mistral-small-latest",
                    "codestral-latest": "codestral-latest",
                    "mistral-embed": "mistral-embed",
                    "unpriced-model": "mistral-small-latest",
                },
            }
        ],
        "routing": {"retries": {"max_attempts": 1}, "ejection": {"consecutive_failures": 100}},
        "prices": [
            {"model": "mistral-small-latest", "currency": "EUR", "input_per_mtok": "0.12", "output_per_mtok": "0.5"},
            {"model": "codestral-latest", "currency": "EUR", "input_per_mtok": "0.26", "output_per_mtok": "0.79"},
            {"model": "mistral-embed", "currency": "EUR", "input_per_mtok": "0.1"},
        ],
    }  # fmt: skip


async def _seed(url: str) -> tuple[str, str]:
    engine = make_engine(Settings(database_url=url))
    key = generate_key()
    now = datetime.now(UTC)
    async with make_sessionmaker(engine)() as session, session.begin():
        tenant = await tenants.create_tenant(session, name="finance-test", now=now)
        await keys.insert_key(
            session,
            tenant_id=tenant.id,
            key_hash=hash_key(key, PEPPER),
            prefix=display_prefix(key),
            now=now,
        )
    await engine.dispose()
    return tenant.id, key


class Stack:
    def __init__(self, client: TestClient, key: str, simulator, url: str) -> None:
        self.client = client
        self.headers = {"authorization": f"Bearer {key}"}
        self.simulator = simulator
        self.url = url

    def faults(self, faults: list[dict]) -> None:
        self.simulator.state.simulator.state.faults.extend(parse_faults(faults))

    def post(self, path: str, body: dict) -> httpx.Response:
        return self.client.post(path, json=body, headers=self.headers)

    def rows(self, expected: int, timeout_s: float = 10.0) -> list[UsageEvent]:
        """The ledger's rows once `expected` of them are there (the writer is asynchronous)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = asyncio.run(self._query(select(UsageEvent)))
            if len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    async def _query(self, statement) -> list:
        engine = make_engine(Settings(database_url=self.url))
        try:
            async with make_sessionmaker(engine)() as session:
                return list((await session.scalars(statement)).all())
        finally:
            await engine.dispose()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    _, key = asyncio.run(_seed(url))
    settings = Settings(database_url=url, key_pepper=PEPPER.decode(), spool_dir=tmp_path / "spool")
    simulator = create_simulator_app(SimulatorOptions(output_tokens=9))
    config = parse_config(_config(tmp_path))
    app = create_app(settings, config, transport=httpx.ASGITransport(app=simulator))
    with TestClient(app) as client:
        yield Stack(client, key, simulator, url)


def _stream_usage(response: httpx.Response) -> dict | None:
    usage = None
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            chunk = orjson.loads(line[6:])
            usage = chunk.get("usage") or usage
    return usage


def test_every_request_has_exactly_one_priced_row(stack: Stack) -> None:
    reported: dict[str, tuple[dict, int, int]] = {}  # request id -> (usage, in, out price)

    def expect(response: httpx.Response, usage: dict | None, prices: tuple[int, int]) -> None:
        assert response.status_code == 200, response.text
        assert usage is not None
        reported[response.headers["x-request-id"]] = (usage, *prices)

    small = (SMALL_IN, SMALL_OUT)
    for n in range(3):
        body = {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 5 + n}
        response = stack.post("/v1/chat/completions", body)
        expect(response, response.json()["usage"], small)
        response = stack.post("/v1/chat/completions", body | {"stream": True})
        expect(response, _stream_usage(response), small)
    response = stack.post("/v1/embeddings", {"model": "mistral-embed", "input": ["a b c", "d e"]})
    expect(response, response.json()["usage"], (EMBED_IN, 0))
    fim = {"model": "codestral-latest", "prompt": "def add(a, b):", "suffix": "return c"}
    response = stack.post("/v1/fim/completions", fim)
    expect(response, response.json()["usage"], (CODESTRAL_IN, CODESTRAL_OUT))

    stack.faults([{"status": 503}])
    failed = stack.post("/v1/chat/completions", {"model": "mistral-small-latest", "messages": CHAT})
    assert failed.status_code == 503
    total = len(reported) + 1
    rows = {row.request_id: row for row in stack.rows(total)}
    assert len(rows) == total

    for request_id, (usage, price_in, price_out) in reported.items():
        row = rows[request_id]
        completion = usage.get("completion_tokens") or 0
        assert (row.prompt_tokens, row.completion_tokens) == (usage["prompt_tokens"], completion)
        assert row.token_source == "provider"
        exact = (usage["prompt_tokens"] * price_in + completion * price_out + 500_000) // 10**6
        assert row.cost_micros == exact and row.currency == "EUR" and not row.unpriced
        assert row.status == 200 and row.deployment == "sim" and row.jurisdictions == "eu"
        assert row.route["attempts"][0]["outcome"] == "ok"

    failed_row = rows[failed.headers["x-request-id"]]
    assert (failed_row.status, failed_row.error_code) == (503, failed.json()["error"]["code"])
    assert (failed_row.prompt_tokens, failed_row.completion_tokens, failed_row.cost_micros) == (
        0,
        0,
        0,
    )
    # The rollup holds the same totals as the raw rows.
    daily = asyncio.run(stack._query(select(UsageDaily)))
    assert sum(d.requests for d in daily) == total
    assert sum(d.cost_micros for d in daily) == sum(r.cost_micros or 0 for r in rows.values())
    assert sum(d.prompt_tokens for d in daily) == sum(r.prompt_tokens for r in rows.values())


def test_an_unpriced_model_is_flagged_never_free(stack: Stack) -> None:
    response = stack.post("/v1/chat/completions", {"model": "unpriced-model", "messages": CHAT})
    assert response.status_code == 200
    [row] = stack.rows(1)
    assert row.unpriced and row.cost_micros is None and row.currency is None
    assert row.prompt_tokens > 0


def test_a_future_price_applies_from_its_effective_time(stack: Stack) -> None:
    start = datetime.now(UTC) + timedelta(seconds=1.5)

    async def schedule() -> None:
        engine = make_engine(Settings(database_url=stack.url))
        async with make_sessionmaker(engine)() as session, session.begin():
            await add_price(
                session,
                model="mistral-small-latest",
                currency="EUR",
                input_micros_per_mtok=SMALL_IN * 10,
                output_micros_per_mtok=SMALL_OUT * 10,
                effective_from=start,
                now=datetime.now(UTC),
            )
        await engine.dispose()

    asyncio.run(schedule())
    pipeline = stack.client.app.state.ledger_pipeline  # type: ignore[attr-defined]
    stack.client.portal.call(pipeline.refresh_prices)  # type: ignore[union-attr]
    body = {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 4}
    before = stack.post("/v1/chat/completions", body)
    while datetime.now(UTC) < start:
        time.sleep(0.05)
    after = stack.post("/v1/chat/completions", body)
    rows = {r.request_id: r for r in stack.rows(2)}
    old, new = rows[before.headers["x-request-id"]], rows[after.headers["x-request-id"]]
    assert new.price_version_id != old.price_version_id
    usage = after.json()["usage"]
    prices = {"old": (SMALL_IN, SMALL_OUT), "new": (SMALL_IN * 10, SMALL_OUT * 10)}
    for row, (p_in, p_out) in ((old, prices["old"]), (new, prices["new"])):
        exact = (
            usage["prompt_tokens"] * p_in + usage["completion_tokens"] * p_out + 500_000
        ) // 10**6
        assert row.cost_micros == exact
    assert cost_micros  # the helper the gateway uses is importable from its public module


@pytest.mark.parametrize("count", [40])
def test_queued_records_survive_a_shutdown_with_the_database_gone(
    tmp_path: Path, count: int
) -> None:
    """Embedded mode: records the writer could not store are spooled at shutdown and
    written at the next start."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    _, key = asyncio.run(_seed(url))
    settings = Settings(
        database_url=url,
        key_pepper=PEPPER.decode(),
        spool_dir=tmp_path / "spool",
        ledger_writer=False,  # nothing writes during the run: everything stays queued
    )
    simulator = create_simulator_app(SimulatorOptions(output_tokens=3))
    config = parse_config(_config(tmp_path))
    headers = {"authorization": f"Bearer {key}"}
    body = {"model": "mistral-small-latest", "messages": CHAT}
    with TestClient(
        create_app(settings, config, transport=httpx.ASGITransport(app=simulator))
    ) as c:
        ids = {
            c.post("/v1/chat/completions", json=body, headers=headers).headers["x-request-id"]
            for _ in range(count)
        }
    assert list((tmp_path / "spool").glob("usage-spool-*.jsonl"))
    restarted = settings.model_copy(update={"ledger_writer": True})
    with TestClient(
        create_app(restarted, config, transport=httpx.ASGITransport(app=simulator))
    ) as c:
        stack = Stack(c, key, simulator, url)
        rows = stack.rows(count)
    assert {r.request_id for r in rows} == ids
    assert not [p for p in (tmp_path / "spool").iterdir() if p.stat().st_size]


def _budget_stack(
    tmp_path: Path, *, hard: bool, shrink: bool = False
) -> tuple[TestClient, str, str]:
    """A tenant with a 1.00 EUR monthly budget on a dear model (~0.1 EUR a request)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    tenant_id, key = asyncio.run(_seed(url))

    async def budget() -> None:
        engine = make_engine(Settings(database_url=url))
        async with make_sessionmaker(engine)() as session, session.begin():
            policy = BudgetPolicy(
                amount_micros=1_000_000,
                currency="EUR",
                hard=hard,
                shrink_max_tokens=shrink,
                min_output_tokens=8,
                thresholds_pct=(50, 80, 100),
            )
            await set_budget(session, tenant_id, policy, datetime.now(UTC))
        await engine.dispose()

    asyncio.run(budget())
    config = _config(tmp_path)
    # 1000 EUR per million tokens: a 20-token prompt + 64 output tokens is about 0.084 EUR.
    config["prices"].append(
        {"model": "mistral-large-latest", "currency": "EUR", "input_per_mtok": "1000", "output_per_mtok": "1000"}
    )  # fmt: skip
    config["deployments"][0]["models"]["mistral-large-latest"] = "mistral-large-latest"
    settings = Settings(database_url=url, key_pepper=PEPPER.decode(), spool_dir=tmp_path / "sp")
    simulator = create_simulator_app(SimulatorOptions(output_tokens=64))
    app = create_app(settings, parse_config(config), transport=httpx.ASGITransport(app=simulator))
    return TestClient(app), key, url


def test_a_hard_budget_stops_the_tenant_before_it_is_crossed(tmp_path: Path) -> None:
    client, key, url = _budget_stack(tmp_path, hard=True)
    body = {"model": "mistral-large-latest", "messages": CHAT, "max_tokens": 64}
    with client:
        stack = Stack(client, key, None, url)
        served, refused = [], None
        for _ in range(30):
            response = stack.post("/v1/chat/completions", body)
            if response.status_code != 200:
                refused = response
                break
            served.append(response)
            client.portal.call(client.app.state.gateway.admitter.tasks.drain)  # type: ignore[attr-defined]
        rows = stack.rows(len(served))
    assert refused is not None, "the budget never stopped the tenant"
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert refused.headers["x-should-retry"] == "false"
    assert "budget" in error["message"]
    spent = sum(r.cost_micros for r in rows)
    worst = max(r.cost_micros for r in rows)  # every request here has the same worst case
    assert spent <= 1_000_000, "a hard budget is never crossed when usage stays within max_tokens"
    assert 1_000_000 - spent < worst + 100_000  # refused only when the next one might not fit
    remaining = Decimal(served[-1].headers["x-budget-remaining"])
    assert remaining * 1_000_000 <= 1_000_000 - spent + worst  # worst case still reserved


def test_a_hard_budget_can_shrink_max_tokens_to_fit(tmp_path: Path) -> None:
    client, key, url = _budget_stack(tmp_path, hard=True, shrink=True)
    with client:
        stack = Stack(client, key, None, url)
        big = {"model": "mistral-large-latest", "messages": CHAT, "max_tokens": 700}
        response = stack.post("/v1/chat/completions", big)  # worst case 0.72 EUR: fits
        assert response.status_code == 200
        client.portal.call(client.app.state.gateway.admitter.tasks.drain)  # type: ignore[attr-defined]
        shrunk = stack.post("/v1/chat/completions", big)  # 0.72 no longer fits: lowered
        assert shrunk.status_code == 200, shrunk.text
        assert shrunk.json()["usage"]["completion_tokens"] <= 700
        rows = stack.rows(2)
    assert sum(r.cost_micros for r in rows) <= 1_000_000


def test_a_soft_budget_serves_and_raises_each_threshold_once(tmp_path: Path) -> None:
    client, key, url = _budget_stack(tmp_path, hard=False)
    body = {"model": "mistral-large-latest", "messages": CHAT, "max_tokens": 64}
    with client:
        stack = Stack(client, key, None, url)
        statuses = [stack.post("/v1/chat/completions", body).status_code for _ in range(14)]
        rows = stack.rows(14)
        watcher = client.app.state.ledger_pipeline.budget_watcher  # type: ignore[attr-defined]
        client.portal.call(watcher.check_once)  # type: ignore[union-attr]
        client.portal.call(watcher.check_once)  # type: ignore[union-attr]
        alerts = asyncio.run(stack._query(select(BudgetAlert)))
    assert statuses == [200] * 14
    assert sum(r.cost_micros for r in rows) > 1_000_000  # soft: served past the budget
    assert sorted(a.threshold_pct for a in alerts) == [50, 80, 100]
