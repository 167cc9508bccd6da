"""The Grafana cost dashboard (`dashboards/json/`) and its provisioning, against real Postgres.

A fresh database is seeded through the ledger writer's own insert (`insert_usage`), so the
`usage_daily` rollup is filled exactly as in production, with records priced the way the gateway
prices them. Then every panel's `rawSql` is expanded the way Grafana would expand it and run,
and its result compared with totals computed here from the seeded records.

The expander (`interpolate` then `expand_macros`) follows Grafana's PostgreSQL data source:
- template variables are replaced first, in the browser: a multi-value or include-All variable
  becomes a comma-separated list of quoted literals (`'a','b'`, quotes doubled inside), "All"
  without a custom all-value means every option; a single-value variable is inserted as is,
  with quotes doubled (so SQL writes `'$currency'`);
- macros are replaced next, by the backend (`pkg/tsdb/grafana-postgresql-datasource/macros.go`):
  `$__timeFilter(c)` → `c BETWEEN '<from>' AND '<to>'`, `$__timeFrom()` / `$__timeTo()` → the
  quoted instant, times in UTC as Go's RFC3339Nano; `$__timeGroup(c, '1d')` →
  `floor(extract(epoch from c)/86400)*86400` and `$__timeGroupAlias` adds `AS "time"`.
  Arguments end at the first `)` and split on commas, as in Grafana. Any other macro fails here.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from gateway.db import make_engine, make_sessionmaker, migrate
from gateway.db.budgets import set_budget
from gateway.db.prices import add_price, load_price_book
from gateway.db.tenants import create_tenant
from gateway.db.usage import insert_usage
from gateway.ledger.pricing import cost_micros
from gateway.ledger.record import UsageRecord
from gateway.limits.budget import BudgetPolicy
from gateway.settings import Settings
from tests.services import PostgresServer

ROOT = Path(__file__).resolve().parents[2] / "dashboards"
DASHBOARD_FILES = sorted((ROOT / "json").glob("*.json"))
DATASOURCES_FILE = ROOT / "provisioning" / "datasources" / "postgres.yaml"
PROVIDERS_FILE = ROOT / "provisioning" / "dashboards" / "dashboards.yaml"
PANEL_TYPES = {"stat", "timeseries", "barchart", "bargauge", "piechart", "table"}
EVENT_PANELS = {  # the only panels that need columns the rollup lacks
    "Token source: provider-reported vs metered vs estimated",
    "Spend by region ($currency)",
}

SMALL, CODESTRAL, MYSTERY = "mistral-small-latest", "codestral-latest", "mystery-model"
REGIONS = {"la-plateforme": "eu-west", "vllm-a": "eu-central", "vllm-us": "us-east"}
BUDGETS = {"acme": 2_000_000, "initech": 1_000_000}  # EUR micro-units; globex has none
RESIDENCY = {"acme": "eu", "globex": "any", "initech": "eu"}
NOW = datetime(2026, 12, 10, tzinfo=UTC)


def load_dashboard() -> dict[str, Any]:
    (path,) = DASHBOARD_FILES
    return json.loads(path.read_text(encoding="utf-8"))


# --- the expander --------------------------------------------------------------------------


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def interpolate(sql: str, values: dict[str, list[str] | str]) -> str:
    """Template variables, as Grafana's SQL data sources format them (see module docstring)."""

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:  # a macro such as $__timeFilter: the backend's business
            return match[0]
        value = values[name]
        if isinstance(value, list):
            return ",".join(quote_literal(v) for v in value)
        return value.replace("'", "''")

    return VARIABLE.sub(one, sql)


MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")  # Grafana's own pattern
UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def rfc3339nano(instant: datetime) -> str:
    """Go's time.RFC3339Nano in UTC: no trailing zeros in the fraction, `Z`."""
    instant = instant.astimezone(UTC)
    text = instant.strftime("%Y-%m-%dT%H:%M:%S")
    if instant.microsecond:
        text += "." + f"{instant.microsecond:06d}".rstrip("0")
    return text + "Z"


def go_seconds(interval: str) -> str:
    """An interval's seconds as Go's `%v` prints a float64 (plain digits below 1e6)."""
    match = re.fullmatch(r"(\d+)([smhdw])", interval)
    assert match, f"interval {interval!r}: the expander knows s, m, h, d, w"
    seconds = int(match[1]) * UNITS_S[match[2]]
    assert seconds < 1_000_000, "Go prints 1e+06 and up in exponent form: not implemented"
    return str(seconds)


def expand_macros(sql: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros for the time range [start, end] (see module docstring)."""

    def one(match: re.Match[str]) -> str:
        name, args = match[1], [a.strip() for a in match[2].split(",")]
        after = sql[sql.index(match[0]) + len(match[0]) :][:1]
        if name == "__timeGroup" and after == ",":  # Grafana's pre-5.3 compatibility rule
            name = "__timeGroupAlias"
        if name == "__timeFilter":
            return f"{args[0]} BETWEEN '{rfc3339nano(start)}' AND '{rfc3339nano(end)}'"
        if name == "__timeFrom":
            return f"'{rfc3339nano(start)}'"
        if name == "__timeTo":
            return f"'{rfc3339nano(end)}'"
        if name in ("__timeGroup", "__timeGroupAlias"):
            seconds = go_seconds(args[1].strip("'"))
            group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
            return group + (' AS "time"' if name == "__timeGroupAlias" else "")
        raise AssertionError(f"macro ${name} is not implemented by this expander")

    return MACRO.sub(one, sql)


def test_the_expander_matches_grafana() -> None:
    start, end = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 30, 23, 59, 59, 999000, UTC)
    sql = "WHERE $__timeFilter(d.day) AND t IN ($tenant) AND c = '$currency' AND $__timeFrom() < x"
    values: dict[str, list[str] | str] = {"tenant": ["a", "o'b"], "currency": "EU'R"}
    assert expand_macros(interpolate(sql, values), start, end) == (
        "WHERE d.day BETWEEN '2026-10-01T00:00:00Z' AND '2026-11-30T23:59:59.999Z' "
        "AND t IN ('a','o''b') AND c = 'EU''R' AND '2026-10-01T00:00:00Z' < x"
    )
    assert expand_macros("SELECT $__timeGroupAlias(day, '1d'), 1", start, end) == (
        'SELECT floor(extract(epoch from day)/86400)*86400 AS "time", 1'
    )
    assert expand_macros("GROUP BY $__timeGroup(day,'1h')", start, end) == (
        "GROUP BY floor(extract(epoch from day)/3600)*3600"
    )


# --- structure -----------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    assert len(DASHBOARD_FILES) == 1
    dashboard = load_dashboard()
    datasource = yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"][0]
    expected_ds = {"type": datasource["type"], "uid": datasource["uid"]}

    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"] and dashboard["id"] is None
    assert dashboard["timezone"] == "utc"  # usage_daily days are UTC days
    assert set(dashboard["time"]) == {"from", "to"}
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
    assert len({p["title"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["datasource"] == expected_ds, panel["title"]
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"} and all(isinstance(v, int) for v in grid.values())
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
        assert set(panel["fieldConfig"]) == {"defaults", "overrides"}
        targets = panel["targets"]
        assert targets and len({t["refId"] for t in targets}) == len(targets)
        for target in targets:
            assert target["datasource"] == expected_ds
            assert target["refId"] and target["rawQuery"] is True
            assert target["editorMode"] == "code"
            assert target["format"] in ("table", "time_series")
            assert target["rawSql"].strip()
            if target["format"] == "time_series":
                assert '"time"' in target["rawSql"] or "$__timeGroupAlias" in target["rawSql"]


def test_template_variables() -> None:
    dashboard = load_dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"tenant", "model", "currency", "platform"}
    for name in ("tenant", "model"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True and variable["includeAll"] is True
        assert variable["current"]["value"] == ["$__all"]
        assert "allValue" not in variable or variable["allValue"] in (None, "")
        assert variable["datasource"]["uid"] == "gateway-ledger"
        assert variable["query"] == variable["definition"]
    assert variables["currency"]["multi"] is False and variables["currency"]["includeAll"] is False
    assert variables["platform"]["type"] == "custom"
    assert variables["platform"]["query"] == "la-plateforme"
    # Every variable a query uses is defined, and every variable is used.
    used = {
        m[1] or m[2]
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for m in VARIABLE.finditer(target["rawSql"])
        if not (m[1] or m[2]).startswith("__")
    }
    assert used == set(variables)
    for panel in dashboard["panels"]:  # descriptions are interpolated too: keep `$` out
        assert "$" not in panel.get("description", ""), panel["title"]


TABLES = re.compile(r"\b(?:FROM|JOIN)\s+([a-z_]+)", re.IGNORECASE)


def test_only_the_token_source_and_region_panels_read_usage_events() -> None:
    ctes = {"days", "spend", "burn"}
    for panel in load_dashboard()["panels"]:
        tables = {
            t.lower() for target in panel["targets"] for t in TABLES.findall(target["rawSql"])
        } - ctes
        if panel["title"] in EVENT_PANELS:
            assert tables == {"usage_events"}, panel["title"]
        else:
            assert "usage_daily" in tables, panel["title"]
            assert tables <= {"usage_daily", "tenants", "budgets"}, panel["title"]


def test_provisioning_files() -> None:
    sources = yaml.safe_load(DATASOURCES_FILE.read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "grafana-postgresql-datasource"
    assert source["uid"] == "gateway-ledger" and source["access"] == "proxy"
    placeholder = re.compile(r"^\$\{[A-Z][A-Z0-9_]*\}$")
    host, port = source["url"].split(":")
    for value in (host, port, source["user"], source["jsonData"]["database"]):
        assert placeholder.match(value), value
    assert placeholder.match(source["jsonData"]["sslmode"])
    assert set(source["secureJsonData"]) == {"password"}  # never in plain jsonData
    assert placeholder.match(source["secureJsonData"]["password"])
    assert "password" not in source and "password" not in source["jsonData"]

    providers = yaml.safe_load(PROVIDERS_FILE.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["name"] and provider["folder"]
    path = provider["options"]["path"]
    assert path.startswith("/")
    readme = (ROOT / "README.md").read_text()
    assert f"dashboards/json:{path}" in readme  # the documented mount points it at our JSON


# --- a seeded ledger -----------------------------------------------------------------------


@dataclass
class Seeded:
    dsn: str
    records: list[UsageRecord]
    tenants: dict[str, str]  # name -> id


def _day(at: date) -> datetime:
    return datetime(at.year, at.month, at.day, tzinfo=UTC)


async def _seed(url: str) -> tuple[list[UsageRecord], dict[str, str]]:
    engine = make_engine(Settings(database_url=url))
    try:
        async with make_sessionmaker(engine).begin() as session:
            tenants = {}
            for name, residency in RESIDENCY.items():
                tenants[name] = (
                    await create_tenant(session, name=name, residency=residency, now=NOW)
                ).id
            for name, amount in BUDGETS.items():
                await set_budget(session, tenants[name], BudgetPolicy(amount, "EUR"), NOW)
            for model, deployment, currency, start, rates in (
                (SMALL, "", "EUR", datetime(2026, 1, 1, tzinfo=UTC), (120_000, 500_000)),
                (SMALL, "", "EUR", datetime(2026, 11, 1, tzinfo=UTC), (150_000, 600_000)),
                (SMALL, "vllm-a", "EUR", datetime(2026, 1, 1, tzinfo=UTC), (20_000, 40_000)),
                (CODESTRAL, "", "EUR", datetime(2026, 1, 1, tzinfo=UTC), (260_000, 790_000)),
                (CODESTRAL, "vllm-us", "USD", datetime(2026, 1, 1, tzinfo=UTC), (30_000, 60_000)),
            ):
                await add_price(
                    session, model=model, deployment=deployment, currency=currency,
                    input_micros_per_mtok=rates[0], output_micros_per_mtok=rates[1],
                    effective_from=start, now=NOW,
                )  # fmt: skip
            book = await load_price_book(session)

        rng = random.Random(2026)
        routes = [
            (SMALL, "la-plateforme"), (SMALL, "vllm-a"), (CODESTRAL, "la-plateforme"),
            (CODESTRAL, "vllm-us"), (MYSTERY, "vllm-a"), (SMALL, None),
        ]  # fmt: skip
        records = []

        def add(tenant: str, model: str, deployment: str | None, started: datetime) -> None:
            failed = deployment is None
            prompt = 0 if failed else rng.randrange(1, 50_000)
            completion = 0 if failed else rng.randrange(0, 8_000)
            source = rng.choices(["provider", "metered", "estimated"], [8, 1, 1])[0]
            price = book.price_at(model, deployment, started.timestamp())
            ms = int(started.timestamp() * 1000)
            record = UsageRecord(
                request_id=uuid.uuid4().hex,
                tenant_id=tenants[tenant],
                key_id="k",
                endpoint="chat",
                model=model,
                upstream_model=model,
                deployment=deployment,
                region=REGIONS.get(deployment or ""),
                stream=False,
                status=502 if failed else 200,
                error_code="upstream_unavailable" if failed else None,
                prompt_tokens=prompt,
                completion_tokens=completion,
                token_source=source,
                cost_micros=cost_micros(price, prompt, completion) if price else None,
                currency=price.currency if price else None,
                unpriced=price is None,
                price_version_id=price.version_id if price else None,
                attempts=1,
                residency=RESIDENCY[tenant],
                jurisdictions="eu",
                route={},
                upstream_id=None,
                gateway_latency_ms=2,
                upstream_latency_ms=90,
                ttft_ms=None,
                started_at_ms=ms,
                finished_at_ms=ms + 90,
            )
            records.append(record)

        day = date(2026, 9, 25)
        while day <= date(2026, 12, 2):
            for tenant in ("acme", "globex"):
                for _ in range(rng.randrange(0, 4)):
                    at = _day(day) + timedelta(milliseconds=rng.randrange(86_400_000))
                    add(tenant, *rng.choice(routes), at)
            day += timedelta(days=1)
        # The edges of the ranges the tests use, to the millisecond.
        for instant in ("2026-10-01T00:00:00", "2026-11-30T23:59:59.999", "2026-12-01T00:00:00",
                        "2026-09-30T23:59:59.999", "2026-11-10T00:00:00", "2026-11-20T23:59:59.999"):  # fmt: skip
            add("acme", SMALL, "la-plateforme", datetime.fromisoformat(instant + "+00:00"))
        async with make_sessionmaker(engine).begin() as session:
            # Several batches, like the writer: the rollup upserts add up.
            for start in range(0, len(records), 50):
                await insert_usage(session, records[start : start + 50])
        return records, tenants
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
async def seeded(pg_server: PostgresServer) -> AsyncIterator[Seeded]:
    name = pg_server.create_database()
    try:
        url = pg_server.async_url(name)
        migrate.upgrade(url)
        records, tenants = await _seed(url)
        yield Seeded(pg_server.dsn(name), records, tenants)
    finally:
        pg_server.drop_database(name)


# --- the panels, against the seeded ledger -------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A time range and a selection of the dashboard's variables (None = the default: All)."""

    start: datetime
    end: datetime
    tenants: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    currency: str = "EUR"


SCENARIOS = {
    # Two whole UTC months; Grafana's range end is inclusive (23:59:59.999), like BETWEEN.
    "all-oct-nov": Scenario(
        datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 30, 23, 59, 59, 999000, UTC)
    ),
    # A mid-month range and a narrower selection: budget burn must carry in Nov 1-9.
    "acme-small-nov-10-20": Scenario(
        datetime(2026, 11, 10, tzinfo=UTC),
        datetime(2026, 11, 20, 23, 59, 59, 999000, UTC),
        tenants=("acme",),
        models=(SMALL,),
    ),
    # The currency variable: only the USD-priced self-hosted codestral counts as spend.
    "usd": Scenario(
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2026, 11, 30, 23, 59, 59, 999000, UTC),
        currency="USD",
    ),
}


def variable_values(conn: psycopg.Connection, scenario: Scenario) -> dict[str, list[str] | str]:
    """The variables' options from their own queries, then the scenario's selection."""
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    options: dict[str, dict[str, str]] = {}  # name -> text -> value
    for name, variable in variables.items():
        if variable["type"] == "query":
            cursor = conn.execute(variable["query"])
            columns = [c.name for c in cursor.description or ()]
            rows = cursor.fetchall()
            if columns == ["__text", "__value"]:
                options[name] = {str(text): str(value) for text, value in rows}
            else:
                options[name] = {str(row[0]): str(row[0]) for row in rows}
        else:
            options[name] = {v.strip(): v.strip() for v in variable["query"].split(",")}
    assert options["currency"] == {"EUR": "EUR", "USD": "USD"}
    assert set(options["tenant"]) == set(RESIDENCY)

    def pick(name: str, chosen: tuple[str, ...] | None) -> list[str]:
        return (
            list(options[name].values()) if chosen is None else [options[name][c] for c in chosen]
        )

    return {
        "tenant": pick("tenant", scenario.tenants),
        "model": pick("model", scenario.models),
        "platform": pick("platform", None),
        "currency": scenario.currency,
    }


def run_panel(seeded: Seeded, title: str, scenario: Scenario) -> tuple[list[str], list[tuple]]:
    (panel,) = (p for p in load_dashboard()["panels"] if p["title"] == title)
    (target,) = panel["targets"]
    with psycopg.connect(seeded.dsn) as conn:
        sql = interpolate(target["rawSql"], variable_values(conn, scenario))
        cursor = conn.execute(expand_macros(sql, scenario.start, scenario.end))
        columns = [c.name for c in cursor.description or ()]
        rows = cursor.fetchall()
    if target["format"] == "time_series":  # Grafana needs the rows sorted by time
        times = [epoch(row[columns.index("time")]) for row in rows]
        assert times == sorted(times)
    return columns, rows


def epoch(value: object) -> int:
    if isinstance(value, date):
        return int(_day(value).timestamp())
    assert isinstance(value, Decimal | int | float)
    return int(value)


class Expect:
    """Totals computed in Python from the seeded records, for one scenario."""

    def __init__(self, seeded: Seeded, scenario: Scenario) -> None:
        self.names = {v: k for k, v in seeded.tenants.items()}
        first, last = scenario.start.timestamp() * 1000, scenario.end.timestamp() * 1000
        tenants = scenario.tenants or tuple(RESIDENCY)
        self.all = seeded.records
        self.selected = [
            r
            for r in seeded.records
            if first <= r.started_at_ms <= last
            and self.names[r.tenant_id] in tenants
            and (scenario.models is None or r.model in scenario.models)
        ]
        self.money = [r for r in self.selected if r.currency == scenario.currency]
        self.scenario = scenario
        self.tenants = tenants

    def sum_by(self, key: Callable[[UsageRecord], Any], rows: list[UsageRecord]) -> dict:
        sums: dict[Any, int] = defaultdict(int)
        for r in rows:
            sums[key(r)] += r.cost_micros or 0
        return {k: units(v) for k, v in sums.items()}


def units(micros: int) -> Decimal:
    return Decimal(micros) / 1_000_000


def day_of(record: UsageRecord) -> date:
    return datetime.fromtimestamp(record.started_at_ms / 1000, UTC).date()


def hosting(deployment: str | None) -> str:
    """The dashboard's label for a deployment, with `platform` at its default (All)."""
    if deployment is None:
        return "no deployment (failed before routing)"
    return "La Plateforme" if deployment == "la-plateforme" else "self-hosted"


def per_1k(cost: int, requests: int) -> Decimal:
    return (units(cost) * 1000 / requests).quantize(Decimal("0.000001"), ROUND_HALF_UP)


def check_spend(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert rows == [(units(sum(r.cost_micros or 0 for r in e.money)),)]


def check_requests(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Requests", "Unpriced requests"]
    assert rows == [(len(e.selected), sum(r.unpriced for r in e.selected))]


def check_cost_per_1k(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert rows == [(per_1k(sum(r.cost_micros or 0 for r in e.money), len(e.money)),)]


def check_spend_per_day(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["time", "metric", "value"]
    expected = e.sum_by(lambda r: (epoch(day_of(r)), e.names[r.tenant_id]), e.money)
    assert {(epoch(t), m): v for t, m, v in rows} == expected
    assert len(rows) == len(expected)


def check_spend_per_month(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Month", "Spend"]
    assert rows == sorted(e.sum_by(lambda r: f"{day_of(r):%Y-%m}", e.money).items())


def check_spend_by_model(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    expected = e.sum_by(lambda r: r.model, e.money)
    assert rows == sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))


def check_hosting(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Hosting", "Spend"]
    assert rows == sorted(e.sum_by(lambda r: hosting(r.deployment), e.money).items())


def check_top_spenders(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Tenant", "Requests", "Spend", "Share %"]
    spend = e.sum_by(lambda r: e.names[r.tenant_id], e.money)
    requests = defaultdict(int)
    for r in e.money:
        requests[e.names[r.tenant_id]] += 1
    total = sum(spend.values())
    expected = [
        (
            name,
            requests[name],
            value,
            (100 * value / total).quantize(Decimal("0.01"), ROUND_HALF_UP),
        )
        for name, value in sorted(spend.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    assert rows == expected[:10]


def check_by_deployment(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Deployment", "Hosting", "Requests", "Tokens in", "Tokens out", "Spend"]
    figures: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for r in e.money:
        acc = figures[r.deployment or "(none)"]
        acc[0] += 1
        acc[1] += r.prompt_tokens
        acc[2] += r.completion_tokens
        acc[3] += r.cost_micros or 0
    assert {row[0]: (row[1], *row[2:5], row[5]) for row in rows} == {
        name: (hosting(None if name == "(none)" else name), *acc[:3], units(acc[3]))
        for name, acc in figures.items()
    }
    assert [row[5] for row in rows] == sorted((row[5] for row in rows), reverse=True)


def check_burn(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["time", "metric", "value"]
    s = e.scenario
    expected: dict[tuple[int, str], Decimal] = {}
    for name in (n for n in e.tenants if n in BUDGETS):
        day = s.start.date()
        while day <= s.end.date():
            # Month to date, every model, in the budget's currency (EUR), whatever the range.
            spent = sum(
                r.cost_micros or 0
                for r in e.all
                if e.names[r.tenant_id] == name
                and r.currency == "EUR"
                and day.replace(day=1) <= day_of(r) <= day
            )
            expected[(epoch(day), f"{name} spent")] = units(spent)
            expected[(epoch(day), f"{name} budget")] = units(BUDGETS[name])
            day += timedelta(days=1)
    assert {(epoch(t), m): v for t, m, v in rows} == expected
    assert len(rows) == len(expected)


def check_tokens_per_day(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["time", "Tokens in (prompt)", "Tokens out (completion)"]
    expected: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for r in e.selected:
        expected[epoch(day_of(r))][0] += r.prompt_tokens
        expected[epoch(day_of(r))][1] += r.completion_tokens
    assert {epoch(t): [p, c] for t, p, c in rows} == expected


def check_cost_per_1k_by_model(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Model", "Priced requests", "Spend", "Cost per 1k requests"]
    figures: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in e.money:
        figures[r.model][0] += 1
        figures[r.model][1] += r.cost_micros or 0
    expected = [(m, n, units(c), per_1k(c, n)) for m, (n, c) in figures.items()]
    assert rows == sorted(expected, key=lambda row: (-row[3], row[0]))


def check_token_source(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Source", "Tokens", "Requests"]
    labels = {
        "provider": "provider-reported",
        "metered": "metered by the gateway",
        "estimated": "estimated (stream cut)",
    }
    figures: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in e.selected:
        figures[labels[r.token_source]][0] += r.prompt_tokens + r.completion_tokens
        figures[labels[r.token_source]][1] += 1
    assert rows == sorted((k, *v) for k, v in figures.items())


def check_region(e: Expect, columns: list[str], rows: list[tuple]) -> None:
    assert columns == ["Region", "Residency policy", "Requests", "Spend"]
    figures: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for r in e.selected:
        acc = figures[(r.region or "(not routed)", r.residency)]
        acc[0] += 1
        acc[1] += r.cost_micros if r.currency == e.scenario.currency else 0
    assert {(a, b): (n, v) for a, b, n, v in rows} == {
        k: (n, units(c)) for k, (n, c) in figures.items()
    }


CHECKS = {
    "Spend ($currency)": check_spend,
    "Requests": check_requests,
    "Cost per 1k requests ($currency)": check_cost_per_1k,
    "Spend per day by tenant ($currency)": check_spend_per_day,
    "Spend per month ($currency)": check_spend_per_month,
    "Spend by model ($currency)": check_spend_by_model,
    "La Plateforme vs self-hosted ($currency)": check_hosting,
    "Top spenders ($currency)": check_top_spenders,
    "Spend by deployment ($currency)": check_by_deployment,
    "Budget burn-down: month-to-date spend vs monthly cap": check_burn,
    "Tokens in / out per day": check_tokens_per_day,
    "Cost per 1k requests by model ($currency)": check_cost_per_1k_by_model,
    "Token source: provider-reported vs metered vs estimated": check_token_source,
    "Spend by region ($currency)": check_region,
}


def test_every_panel_has_a_check() -> None:
    assert {p["title"] for p in load_dashboard()["panels"]} == set(CHECKS)


@pytest.fixture(params=list(SCENARIOS), scope="module")
def scenario(request: pytest.FixtureRequest) -> Scenario:
    return SCENARIOS[request.param]


@pytest.mark.parametrize("title", list(CHECKS))
def test_panel_totals(seeded: Seeded, scenario: Scenario, title: str) -> None:
    columns, rows = run_panel(seeded, title, scenario)
    expect = Expect(seeded, scenario)
    assert expect.selected, "the scenario selects seeded usage"
    CHECKS[title](expect, columns, rows)


def test_the_rollup_agrees_with_the_events(seeded: Seeded) -> None:
    """The premise of reading the rollup: it holds what usage_events holds, day by day."""
    with psycopg.connect(seeded.dsn) as conn:
        rollup = conn.execute(
            "SELECT day, tenant_id, SUM(requests), SUM(cost_micros) FROM usage_daily "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        events = conn.execute(
            "SELECT (started_at AT TIME ZONE 'UTC')::date, tenant_id, COUNT(*), "
            "COALESCE(SUM(cost_micros), 0) FROM usage_events GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    assert rollup == events
    assert len(rollup) > 100
