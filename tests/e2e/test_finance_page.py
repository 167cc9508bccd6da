"""The cost page (`/finance`) in a real browser: Debian's Chromium driven by Playwright.

The gateway runs as a process on a SQLite file, started as an operator would
(`tests/e2e/stack.py`). Usage is written straight into its ledger with `insert_usage` (which
fills the daily rollup too) at chosen dates of this month and last month, so every figure the
page shows is known exactly; no request goes through `/v1`, so the routing file's one
deployment needs no upstream. The browser is refused with a wrong token, logs in with a
finance token, checks the summary, the charts' data and the table against the seeded totals
for this month, last month and a custom range, reads a tenant's budget burn, downloads the
usage CSV and opens a printable statement. Screenshots (and the downloads) are kept in `test-artifacts/finance/`.

Needs Chromium at /usr/bin/chromium (`apt-get install chromium`; scripts/test.sh does it) and
the `playwright` Python package (test extra); skipped without them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from gateway.db.usage import insert_usage
from tests.e2e.stack import ROOT, base_env, cli, gateway_server
from tests.integration.admin_api import usage_record
from tests.services import free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "finance"
ADMIN_TOKEN = "finance-page-bootstrap-admin-token"
MARKUP_NAME = '<img src=x onerror="alert(1)"> Acme & Co'  # must show as text, never run
LARGE, SMALL = "mistral-large-latest", "mistral-small-latest"

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install chromium"
)


@dataclass
class Seeded:
    """The running gateway and what its ledger holds."""

    base_url: str
    finance_token: str
    acme: str  # tenant ids
    globex: str
    this_month: datetime
    last_month: datetime


def _month_starts(now: datetime) -> tuple[datetime, datetime]:
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return this_month, (this_month - timedelta(days=1)).replace(day=1)


def _routing_file(path: Path) -> Path:
    deployment = {
        "name": "plateforme",
        "provider": "mistral",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",  # never called: no /v1 traffic here
        "region": "eu-west",
        "jurisdiction": "eu",
        "models": {SMALL: SMALL, LARGE: LARGE},
        "health": {"enabled": False},
    }
    path.write_text(yaml.safe_dump({"deployments": [deployment]}))
    return path


def _seed(database_url: str, acme: str, globex: str, this_month: datetime, last: datetime) -> None:
    """Known spend (micro-units): this month acme 3_250_001, globex 500_000 (+1 unpriced);
    last month acme 3_000_000, globex 4_250_007."""
    at = lambda month, day, hour=10: month + timedelta(days=day - 1, hours=hour)  # noqa: E731
    plateforme = {"deployment": "plateforme"}
    records = [
        usage_record(acme, at(this_month, 1), **plateforme, prompt_tokens=1000,
                     completion_tokens=200, cost_micros=1_250_000),
        usage_record(acme, at(this_month, 3), **plateforme, model=LARGE, prompt_tokens=300,
                     completion_tokens=40, cost_micros=2_000_001),
        usage_record(globex, at(this_month, 2), **plateforme, prompt_tokens=50,
                     completion_tokens=5, cost_micros=500_000),
        usage_record(globex, at(this_month, 2), **plateforme, prompt_tokens=7, cost_micros=None),
        usage_record(acme, at(last, 5), **plateforme, prompt_tokens=2000, completion_tokens=100,
                     cost_micros=3_000_000),
        usage_record(globex, at(last, 10), **plateforme, model=LARGE, prompt_tokens=900,
                     completion_tokens=90, cost_micros=4_250_000),
        usage_record(globex, at(last, 10), **plateforme, prompt_tokens=1, completion_tokens=1,
                     cost_micros=7),
    ]  # fmt: skip

    async def write() -> None:
        engine = create_async_engine(database_url)
        try:
            async with async_sessionmaker(engine)() as session, session.begin():
                await insert_usage(session, records)
        finally:
            await engine.dispose()

    asyncio.run(write())


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("finance-page")
    env = base_env()
    database_url = f"sqlite+aiosqlite:///{tmp / 'gateway.db'}"
    env["GATEWAY_DATABASE_URL"] = database_url
    env["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    env["GATEWAY_CONFIG"] = str(_routing_file(tmp / "routing.yaml"))
    env["GATEWAY_SPOOL_DIR"] = str(tmp / "spool")
    cli(env, "migrate")
    with gateway_server(env, tmp / "gateway.log") as base_url:
        admin = httpx.Client(
            base_url=f"{base_url}/admin/v1",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        with admin:

            def created(path: str, body: dict[str, Any]) -> dict[str, Any]:
                response = admin.post(path, json=body)
                assert response.status_code == 201, response.text
                return response.json()

            acme = created("/tenants", {"name": MARKUP_NAME})["id"]
            globex = created("/tenants", {"name": "Globex"})["id"]
            finance = created("/admin-tokens", {"name": "finance", "role": "finance"})["token"]
            budget = admin.put(f"/tenants/{acme}/budget", json={"amount": "10", "currency": "EUR"})
            assert budget.status_code == 200, budget.text
        this_month, last_month = _month_starts(datetime.now(UTC))
        _seed(database_url, acme, globex, this_month, last_month)
        yield Seeded(base_url, finance, acme, globex, this_month, last_month)


def test_page_is_static_and_locked_down(seeded: Seeded) -> None:
    page = httpx.get(f"{seeded.base_url}/finance", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "form-action 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "Globex" not in page.text  # no data is rendered by the server
    script = httpx.get(f"{seeded.base_url}/finance/static/chart.umd.js", timeout=10)
    assert script.status_code == 200 and script.text.startswith("/*!\n * Chart.js v4")
    for missing in ("VENDORED.md", "index.html", "..%2Ffinance.py", "nope.js"):
        assert httpx.get(f"{seeded.base_url}/finance/static/{missing}").status_code == 404


# --- the browser -------------------------------------------------------------------------------


def _ready(page: Any, start: datetime, tenant: str = "") -> None:
    """Wait until the page shows the period from `start` (and the tenant filter)."""
    iso = start.strftime("%Y-%m-%dT%H:%M:%SZ")
    page.wait_for_selector(
        f'#report[data-state="ready"][data-start="{iso}"][data-tenant="{tenant}"]', state="attached"
    )


def _figures(page: Any, table_id: str) -> dict[str, int]:
    """A chart's data table: key -> cost in micro-units."""
    return page.eval_on_selector_all(
        f"#{table_id} tbody tr",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.key, Number(r.dataset.costMicros)]))",
    )


def _summary(page: Any) -> dict[str, int]:
    return page.eval_on_selector_all(
        "#summary dd",
        "dds => Object.fromEntries(dds.map(d => [d.dataset.metric, Number(d.dataset.value)]))",
    )


def _table(page: Any) -> list[tuple[str, str, str, int, int]]:
    """The usage table: (tenant as shown, model, currency, requests, cost micro-units)."""
    rows = page.eval_on_selector_all(
        "#usage-table tbody tr[data-tenant-id]",
        """rows => rows.map(r => [r.cells[0].textContent, r.dataset.model, r.dataset.currency,
                                 Number(r.dataset.requests), Number(r.dataset.costMicros)])""",
    )
    return [tuple(row) for row in rows]


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_cost_page_in_chromium(seeded: Seeded) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    s = seeded
    day = lambda month, n: (month + timedelta(days=n - 1)).date().isoformat()  # noqa: E731
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1400, "height": 900}
            )
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.on(
                "dialog",
                lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()),
            )
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on(
                "console", lambda m: m.type == "error" and problems.append(f"console: {m.text}")
            )

            page.goto(f"{s.base_url}/finance")
            page.fill("#token", "gwa_not-a-token")
            page.click("#login-form button[type=submit]")
            page.wait_for_selector("#login-error:not([hidden])")
            assert "not accepted" in page.inner_text("#login-error")
            assert page.evaluate("sessionStorage.length") == 0
            assert [p for p in problems if "status of 401" not in p] == []  # the browser logs it
            problems.clear()
            _shot(page, "0-login")
            page.fill("#token", s.finance_token)
            page.click("#login-form button[type=submit]")

            # This month (the default period).
            _ready(page, s.this_month)
            assert page.evaluate("sessionStorage.length") == 1 and s.finance_token not in page.url
            assert _summary(page) == {
                "spend": 3_750_001, "requests": 4, "prompt_tokens": 1357,
                "completion_tokens": 250, "unpriced_requests": 1,
            }  # fmt: skip
            assert _figures(page, "data-by-tenant") == {s.acme: 3_250_001, s.globex: 500_000}
            assert _figures(page, "data-by-model") == {SMALL: 1_750_000, LARGE: 2_000_001}
            assert _figures(page, "data-over-time") == {
                day(s.this_month, 1): 1_250_000, day(s.this_month, 2): 500_000,
                day(s.this_month, 3): 2_000_001,
            }  # fmt: skip
            assert _table(page) == [
                (MARKUP_NAME, LARGE, "EUR", 1, 2_000_001),
                (MARKUP_NAME, SMALL, "EUR", 1, 1_250_000),
                ("Globex", SMALL, "EUR", 1, 500_000),
                ("Globex", SMALL, "", 1, 0),  # unpriced
            ]
            assert page.get_attribute("#usage-table tfoot tr", "data-cost-micros") == "3750001"
            assert page.locator("img").count() == 0  # the tenant name stayed text
            _shot(page, "1-this-month")

            # Last month.
            page.select_option("#period", "last-month")
            _ready(page, s.last_month)
            assert _summary(page)["spend"] == 7_250_007
            assert _figures(page, "data-by-tenant") == {s.acme: 3_000_000, s.globex: 4_250_007}
            assert _figures(page, "data-by-model") == {SMALL: 3_000_007, LARGE: 4_250_000}
            assert _figures(page, "data-over-time") == {
                day(s.last_month, 5): 3_000_000, day(s.last_month, 10): 4_250_007,
            }  # fmt: skip
            assert [row[4] for row in _table(page)] == [3_000_000, 4_250_000, 7]
            assert page.evaluate("Chart.getChart('chart-by-tenant').data.datasets[0].data") == [
                4.250007, 3.0,
            ]  # fmt: skip
            _shot(page, "2-last-month")

            # The CSV of what is shown.
            with page.expect_download() as download_info:
                page.click("#download-csv")
            download = download_info.value
            download.save_as(ARTIFACTS / download.suggested_filename)
            rows = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
            assert download.suggested_filename == (
                f"usage-{day(s.last_month, 1)}-to-{(s.this_month - timedelta(days=1)).date()}.csv"
            )
            assert sorted((r["tenant_id"], r["model"], r["cost"]) for r in rows) == sorted([
                (s.acme, SMALL, "3"), (s.globex, LARGE, "4.25"), (s.globex, SMALL, "0.000007"),
            ])  # fmt: skip

            # A custom range across the two months: last month's 10th to this month's 2nd.
            page.select_option("#period", "custom")
            page.fill("#start", day(s.last_month, 10))
            page.fill("#end", day(s.this_month, 2))
            _ready(page, s.last_month + timedelta(days=9))
            assert page.get_attribute("#report", "data-end") == (
                s.this_month + timedelta(days=2)
            ).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert _summary(page)["spend"] == 4_250_007 + 1_250_000 + 500_000

            # One tenant, this month: its budget burn.
            page.select_option("#period", "this-month")
            _ready(page, s.this_month)
            page.select_option("#tenant", s.acme)
            _ready(page, s.this_month, s.acme)
            budget = page.locator("#fig-budget")
            assert budget.get_attribute("data-budget-micros") == "10000000"
            assert budget.get_attribute("data-spent-micros") == "3250001"
            assert list(_figures(page, "data-budget").values()) == [1_250_000, 3_250_001]
            assert "spent 3.250001 of 10.00 EUR (32.5%)" in page.inner_text("#budget-note")
            assert MARKUP_NAME in page.inner_text("#budget-note")
            _shot(page, "3-tenant-budget")

            # Its printable statement for this month, opened from a blob URL.
            with context.expect_page() as opened:
                page.click(
                    f'#statements tr[data-tenant-id="{s.acme}"] [data-action=statement-html]'
                )
            statement = opened.value
            statement.wait_for_url(re.compile(r"^blob:"))
            statement.wait_for_load_state()
            assert statement.inner_text("h1") == f"Chargeback statement: {MARKUP_NAME}"
            assert "3.250001" in statement.inner_text("table")
            # Its inline style applies: the page's policy allows it by hash.
            assert (
                statement.evaluate(
                    "getComputedStyle(document.querySelector('table')).borderCollapse"
                )
                == "collapse"
            )
            statement.screenshot(path=str(ARTIFACTS / "4-statement.png"), full_page=True)
            statement.close()

            page.click("#logout")
            assert page.evaluate("sessionStorage.length") == 0
            assert page.locator("#usage-table tbody tr").count() == 0
        finally:
            browser.close()
    assert problems == []
