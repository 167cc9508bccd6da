"""Monthly chargeback statements on real SQLite and Postgres.

Each backend gets a migrated database of its own, seeded once for the module through the
ledger writer's own insert (`insert_usage`), with records priced the way the gateway prices
them (`PriceBook.price_at` + `cost_micros`): two months, two versions of the La Plateforme
price (the second from mid-November), a self-hosted chargeback price, unpriced requests, a
failed request that reached no deployment, events on both month edges and another tenant's
usage. The statement must agree with `SUM(cost_micros)` over `usage_events` to the micro-unit.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from gateway.db import make_engine, make_sessionmaker, migrate
from gateway.db.budgets import record_alert, set_budget
from gateway.db.prices import add_price, load_price_book
from gateway.db.tables import UsageEvent
from gateway.db.tenants import create_tenant
from gateway.db.usage import insert_usage
from gateway.errors import InvalidRequest, NotFound
from gateway.ledger.pricing import PriceBook, cost_micros
from gateway.ledger.record import UsageRecord
from gateway.ledger.statements import (
    CSV_COLUMNS,
    Statement,
    build_statement,
    month_bounds,
    to_csv,
    to_html,
)
from gateway.limits.budget import BudgetPolicy, format_amount
from gateway.settings import Settings
from tests.services import PostgresServer

SMALL = "mistral-small-latest"
EVIL_NAME = "acme <script>alert('x')</script> & co"
PROVIDERS = {"la-plateforme": "mistral", "vllm-a": "vllm"}
NOW = datetime(2026, 12, 5, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Ledger:
    backend: str
    url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    tenant_id: str
    other_id: str
    records: list[UsageRecord]
    versions: dict[str, int]  # "small-v1", "small-v2", "vllm" -> prices.id


def _record(
    book: PriceBook,
    tenant_id: str,
    model: str,
    deployment: str | None,
    started: datetime,
    prompt: int,
    completion: int,
    *,
    status: int = 200,
) -> UsageRecord:
    price = book.price_at(model, deployment, started.timestamp())
    ms = int(started.timestamp() * 1000)
    return UsageRecord(
        request_id=uuid.uuid4().hex, tenant_id=tenant_id, key_id="key-1", endpoint="chat",
        model=model, upstream_model=model, deployment=deployment,
        region=None if deployment is None else "eu-west", stream=False, status=status,
        error_code=None if status == 200 else "upstream_unavailable",
        prompt_tokens=prompt, completion_tokens=completion, token_source="provider",
        cost_micros=cost_micros(price, prompt, completion) if price else None,
        currency=price.currency if price else None, unpriced=price is None,
        price_version_id=price.version_id if price else None, attempts=1, residency="eu",
        jurisdictions="eu", route={}, upstream_id=None, gateway_latency_ms=3,
        upstream_latency_ms=100, ttft_ms=None, started_at_ms=ms, finished_at_ms=ms + 100,
    )  # fmt: skip


async def _seed(url: str, backend: str) -> Ledger:
    engine = make_engine(Settings(database_url=url))
    sessions = make_sessionmaker(engine)
    async with sessions.begin() as session:
        tenant = await create_tenant(session, name=EVIL_NAME, residency="eu", now=NOW)
        other = await create_tenant(session, name="other-team", now=NOW)
        versions = {}
        for key, deployment, start, in_micros, out_micros in (
            ("small-v1", "", at("2026-01-01T00:00:00"), 120_000, 500_000),
            ("small-v2", "", at("2026-11-15T12:00:00"), 150_000, 600_000),
            ("vllm", "vllm-a", at("2026-01-01T00:00:00"), 20_000, 40_000),
        ):
            price = await add_price(
                session, model=SMALL, deployment=deployment, currency="EUR",
                input_micros_per_mtok=in_micros, output_micros_per_mtok=out_micros,
                effective_from=start, now=NOW,
            )  # fmt: skip
            versions[key] = price.id
        policy = BudgetPolicy(amount_micros=1_500_000, currency="EUR", hard=True)
        await set_budget(session, tenant.id, policy, NOW)
        await record_alert(session, tenant.id, at("2026-11-01").date(), 50, 800_000, 1, NOW)
        await record_alert(session, tenant.id, at("2026-10-01").date(), 80, 1, 1, NOW)
        book = await load_price_book(session)

    def usage(tenant_id: str, model: str, deployment: str | None, when: str, p: int, c: int,
              **kw: int) -> UsageRecord:  # fmt: skip
        return _record(book, tenant_id, model, deployment, at(when), p, c, **kw)

    t, o = tenant.id, other.id
    records = [
        # October: version 1 only.
        usage(t, SMALL, "la-plateforme", "2026-10-03T10:00:00", 1_000, 200),
        usage(t, SMALL, "la-plateforme", "2026-10-31T23:59:59.999", 333, 77),
        usage(t, SMALL, "vllm-a", "2026-10-20T08:00:00", 5_000, 1_000),
        # November: the month's first instant, v1 before the 15th noon, v2 after.
        usage(t, SMALL, "la-plateforme", "2026-11-01T00:00:00", 1_234, 567),
        usage(t, SMALL, "la-plateforme", "2026-11-10T09:30:00", 2_001, 999),
        usage(t, SMALL, "la-plateforme", "2026-11-15T11:59:59", 7, 3),
        usage(t, SMALL, "la-plateforme", "2026-11-15T12:00:00", 1_111, 333),
        usage(t, SMALL, "la-plateforme", "2026-11-30T23:59:59.999", 999_999, 1),
        usage(t, SMALL, "vllm-a", "2026-11-12T14:00:00", 40_000, 8_000),
        usage(t, SMALL, "vllm-a", "2026-11-21T14:00:00", 3, 5),
        usage(t, SMALL, None, "2026-11-22T14:00:00", 0, 0, status=502),
        usage(t, "mystery-model", "vllm-a", "2026-11-05T10:00:00", 300, 40),
        usage(t, "mystery-model", "vllm-a", "2026-11-06T10:00:00", 200, 60),
        # December and the other tenant: never on the November statement.
        usage(t, SMALL, "la-plateforme", "2026-12-01T00:00:00", 5_000, 5_000),
        usage(o, SMALL, "la-plateforme", "2026-11-10T10:00:00", 9_000, 9_000),
    ]
    async with sessions.begin() as session:
        assert await insert_usage(session, records) == len(records)
    return Ledger(backend, url, engine, sessions, t, o, records, versions)


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('statements') / 'gateway.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="module")
def postgres_url(pg_server: PostgresServer) -> Iterator[str]:
    with pg_server.migrated_database() as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    url: str = request.getfixturevalue(f"{request.param}_url")
    seeded = await _seed(url, request.param)
    try:
        yield seeded
    finally:
        await seeded.engine.dispose()


async def statement_of(ledger: Ledger, month: str, tenant_id: str | None = None) -> Statement:
    async with ledger.sessions() as session:
        return await build_statement(
            session, tenant_id or ledger.tenant_id, month, providers=PROVIDERS
        )


async def ledger_sum(ledger: Ledger, month: str, tenant_id: str | None = None) -> int:
    """SUM(cost_micros) of a tenant's month straight from usage_events."""
    start, end = month_bounds(month)
    async with ledger.sessions() as session:
        total = await session.scalar(
            select(func.sum(UsageEvent.cost_micros)).where(
                UsageEvent.tenant_id == (tenant_id or ledger.tenant_id),
                UsageEvent.started_at >= start,
                UsageEvent.started_at < end,
            )
        )
    return int(total)


def expected(ledger: Ledger, month: str) -> list[UsageRecord]:
    start, end = month_bounds(month)
    return [
        r
        for r in ledger.records
        if r.tenant_id == ledger.tenant_id
        and start.timestamp() * 1000 <= r.started_at_ms < end.timestamp() * 1000
    ]


@pytest.mark.parametrize("month", ["2026-10", "2026-11"])
async def test_totals_equal_the_ledger_to_the_micro_unit(ledger: Ledger, month: str) -> None:
    statement = await statement_of(ledger, month)
    records = [r for r in expected(ledger, month) if not r.unpriced]
    ledger_total = await ledger_sum(ledger, month)

    assert [t.currency for t in statement.totals] == ["EUR"]
    total = statement.totals[0]
    assert total.cost_micros == ledger_total == sum(r.cost_micros or 0 for r in records)
    assert total.requests == len(records)
    assert total.prompt_tokens == sum(r.prompt_tokens for r in records)
    assert total.completion_tokens == sum(r.completion_tokens for r in records)
    # Lines and price versions each add up to the total.
    assert sum(line.cost_micros for line in statement.lines) == ledger_total
    assert sum(price.cost_micros for price in statement.prices) == ledger_total
    assert sum(line.requests for line in statement.lines) == total.requests


async def test_lines_per_model_and_deployment(ledger: Ledger) -> None:
    statement = await statement_of(ledger, "2026-11")
    records = [r for r in expected(ledger, "2026-11") if not r.unpriced]

    by_line = {(line.model, line.deployment): line for line in statement.lines}
    assert set(by_line) == {(SMALL, "la-plateforme"), (SMALL, "vllm-a"), (SMALL, "")}
    for (model, deployment), line in by_line.items():
        mine = [r for r in records if (r.model, r.deployment or "") == (model, deployment)]
        assert line.requests == len(mine)
        assert line.cost_micros == sum(r.cost_micros or 0 for r in mine)
        assert line.prompt_tokens == sum(r.prompt_tokens for r in mine)
        assert line.completion_tokens == sum(r.completion_tokens for r in mine)
    assert by_line[(SMALL, "la-plateforme")].hosting == "La Plateforme"
    assert by_line[(SMALL, "vllm-a")].hosting == "self-hosted (vLLM)"
    assert by_line[(SMALL, "")].hosting == ""  # the failed request reached no deployment
    assert by_line[(SMALL, "")].cost_micros == 0


async def test_price_versions_applied(ledger: Ledger) -> None:
    november = await statement_of(ledger, "2026-11")
    records = [r for r in expected(ledger, "2026-11") if not r.unpriced]

    applied = {p.version_id: p for p in november.prices}
    assert set(applied) == set(ledger.versions.values())
    v1, v2, vllm = (applied[ledger.versions[k]] for k in ("small-v1", "small-v2", "vllm"))
    assert (v1.input_micros_per_mtok, v1.output_micros_per_mtok) == (120_000, 500_000)
    assert (v2.input_micros_per_mtok, v2.output_micros_per_mtok) == (150_000, 600_000)
    assert v2.effective_from == at("2026-11-15T12:00:00")
    assert (vllm.deployment, vllm.input_micros_per_mtok) == ("vllm-a", 20_000)
    for price in (v1, v2, vllm):
        mine = [r for r in records if r.price_version_id == price.version_id]
        assert price.requests == len(mine)
        assert price.cost_micros == sum(r.cost_micros or 0 for r in mine)
    # The switch at 12:00 on the 15th: v1 up to 11:59:59, v2 from 12:00 (and the failed call).
    assert (v1.requests, v2.requests, vllm.requests) == (3, 3, 2)
    assert november.prices == (v1, v2, vllm)  # by model, scope, effective_from

    october = await statement_of(ledger, "2026-10")
    assert {p.version_id for p in october.prices} == {
        ledger.versions["small-v1"],
        ledger.versions["vllm"],
    }


async def test_unpriced_requests_are_listed_apart(ledger: Ledger) -> None:
    statement = await statement_of(ledger, "2026-11")

    assert len(statement.unpriced) == 1
    gap = statement.unpriced[0]
    assert (gap.model, gap.deployment, gap.hosting) == (
        "mystery-model",
        "vllm-a",
        "self-hosted (vLLM)",
    )
    assert (gap.requests, gap.prompt_tokens, gap.completion_tokens) == (2, 500, 100)
    assert all(line.model != "mystery-model" for line in statement.lines)
    all_requests = len(expected(ledger, "2026-11"))
    assert statement.totals[0].requests == all_requests - 2


async def test_budget_and_its_use(ledger: Ledger) -> None:
    statement = await statement_of(ledger, "2026-11")
    spent = await ledger_sum(ledger, "2026-11")

    budget = statement.budget
    assert budget is not None
    assert (budget.amount_micros, budget.currency, budget.hard) == (1_500_000, "EUR", True)
    assert budget.spent_micros == spent
    exact = Decimal(spent * 100) / Decimal(1_500_000)
    assert budget.used_pct == exact.quantize(Decimal("0.01"), ROUND_HALF_UP)
    assert budget.alerts_pct == (50,)  # October's 80 % alert is October's

    other = await statement_of(ledger, "2026-11", ledger.other_id)
    assert other.budget is None
    assert other.totals[0].cost_micros == await ledger_sum(ledger, "2026-11", ledger.other_id)


async def test_csv_parses_and_adds_up(ledger: Ledger) -> None:
    statement = await statement_of(ledger, "2026-11")
    total = statement.totals[0]

    rows = list(csv.DictReader(io.StringIO(to_csv(statement))))
    assert tuple(rows[0]) == CSV_COLUMNS
    sections = [row["section"] for row in rows]
    assert sections.count("usage") == len(statement.lines) == 3
    assert sections.count("price") == 3
    assert sections.count("unpriced") == 1
    assert sections.count("total") == 1
    assert sections.count("budget") == 1
    assert {row["tenant"] for row in rows} == {EVIL_NAME}
    assert {row["month"] for row in rows} == {"2026-11"}
    cost = Decimal(total.cost_micros) / 1_000_000
    for section in ("usage", "price"):
        assert sum(Decimal(r["cost"]) for r in rows if r["section"] == section) == cost
    (total_row,) = (r for r in rows if r["section"] == "total")
    assert Decimal(total_row["cost"]) == cost
    assert total_row["cost"] == format_amount(total.cost_micros)
    assert int(total_row["requests"]) == total.requests
    (unpriced,) = (r for r in rows if r["section"] == "unpriced")
    assert (unpriced["model"], unpriced["requests"], unpriced["cost"]) == ("mystery-model", "2", "")
    (budget,) = (r for r in rows if r["section"] == "budget")
    assert (budget["budget"], Decimal(budget["cost"])) == ("1.500000", cost)


async def test_html_is_printable_self_contained_and_escaped(ledger: Ledger) -> None:
    statement = await statement_of(ledger, "2026-11")
    page = to_html(statement)

    assert page.startswith("<!DOCTYPE html>")
    assert format_amount(statement.totals[0].cost_micros) in page
    assert f"{statement.totals[0].requests:,}" in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "<script" not in page
    assert "@media print" in page and "@page" in page
    for external in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert external not in page
    assert "mystery-model" in page and "La Plateforme" in page


async def test_an_empty_month_has_no_lines(ledger: Ledger) -> None:
    statement = await statement_of(ledger, "2025-01")
    assert (statement.lines, statement.prices, statement.unpriced, statement.totals) == (
        (),
        (),
        (),
        (),
    )
    assert statement.budget is not None and statement.budget.spent_micros == 0
    assert "No priced usage this month." in to_html(statement)
    assert len(list(csv.DictReader(io.StringIO(to_csv(statement))))) == 1  # the budget row


async def test_bad_month_and_unknown_tenant(ledger: Ledger) -> None:
    for month in ("2026-13", "2026-1", "november", "2026-11-01"):
        with pytest.raises(InvalidRequest):
            await statement_of(ledger, month)
    with pytest.raises(NotFound):
        await statement_of(ledger, "2026-11", str(uuid.uuid4()))


def test_month_bounds_cross_the_year() -> None:
    assert month_bounds("2026-12") == (at("2026-12-01T00:00:00"), at("2027-01-01T00:00:00"))


ROUTING_FILE = """
deployments:
  - {name: la-plateforme, provider: mistral, base_url: "https://api.mistral.ai/v1",
     region: eu-west, jurisdiction: eu, models: {mistral-small-latest: mistral-small-latest}}
  - {name: vllm-a, provider: vllm, base_url: "http://vllm-a:8000/v1",
     region: eu-central, jurisdiction: eu, models: {mistral-small-latest: small}}
"""


def test_cli_writes_csv_and_html(sqlite_url: str, ledger: Ledger, tmp_path: Path) -> None:
    if ledger.backend != "sqlite":
        pytest.skip("the CLI is checked once, on the SQLite ledger")
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING_FILE)
    env = {**os.environ, "GATEWAY_DATABASE_URL": sqlite_url, "GATEWAY_CONFIG": str(routing)}

    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "statement", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    page = tmp_path / "statement.html"
    done = gateway(EVIL_NAME, "--month", "2026-11", "--format", "html", "--output", str(page))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    html = page.read_text(encoding="utf-8")
    assert "Chargeback statement: acme &lt;script&gt;" in html
    assert "self-hosted (vLLM)" in html

    done = gateway(ledger.tenant_id, "--month", "2026-10")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert {r["hosting"] for r in rows if r["section"] == "usage"} == {
        "La Plateforme",
        "self-hosted (vLLM)",
    }

    bad = gateway(ledger.tenant_id, "--month", "2026-13")
    assert bad.returncode == 2
    assert "month must be YYYY-MM" in bad.stderr
