"""`/admin/v1/tenants/{id}/statements/{month}`: one statement as JSON, CSV or printable HTML."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.admin.statements_api import HTML_POLICY, preferred
from tests.integration.admin_api import AdminApi, admin_api, usage_record

MONTH = "2025-03"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-statements")) as running:
        yield running


@pytest.fixture(scope="module")
def tenant(api: AdminApi) -> str:
    """A tenant named with markup, with March 2025 usage (one request unpriced) and a budget."""
    created = api.post("/tenants", json={"name": '<b>Acme</b> & "Co"'})
    assert created.status_code == 201, created.text
    tenant_id = created.json()["id"]
    march = datetime(2025, 3, 10, 12, tzinfo=UTC)
    api.record_usage(
        usage_record(tenant_id, march, prompt_tokens=100, completion_tokens=10, cost_micros=1_500_000),
        usage_record(tenant_id, march, prompt_tokens=1, completion_tokens=2, cost_micros=250_001),
        usage_record(tenant_id, march, prompt_tokens=7, cost_micros=None),
        usage_record(tenant_id, datetime(2025, 4, 1, tzinfo=UTC), cost_micros=9_000_000),
    )  # fmt: skip
    budget = api.put(f"/tenants/{tenant_id}/budget", json={"amount": "10", "hard": False})
    assert budget.status_code == 200, budget.text
    return tenant_id


def _get(api: AdminApi, tenant: str, accept: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"accept": accept} if accept else {}
    return api.get(f"/tenants/{tenant}/statements/{MONTH}", headers=headers, **kwargs)


def test_json_by_default(api: AdminApi, tenant: str) -> None:
    response = _get(api, tenant)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["tenant_id"] == tenant and body["month"] == MONTH
    assert body["tenant_name"] == '<b>Acme</b> & "Co"'
    assert body["period_start"] == "2025-03-01T00:00:00Z"
    assert body["period_end"] == "2025-04-01T00:00:00Z"
    assert body["totals"] == [
        {"currency": "EUR", "requests": 2, "prompt_tokens": 101, "completion_tokens": 12,
         "cost_micros": 1_750_001, "cost": "1.750001"},
    ]  # fmt: skip
    assert [(u["model"], u["requests"], u["prompt_tokens"]) for u in body["unpriced"]] == [
        ("mistral-small-latest", 1, 7)
    ]
    assert [(line["deployment"], line["hosting"]) for line in body["lines"]] == [
        ("simulator", "La Plateforme")  # the demo routing file's deployment is Mistral's
    ]
    assert body["budget"]["amount"] == "10"
    assert body["budget"]["used_pct"] is not None


def test_csv_on_request(api: AdminApi, tenant: str) -> None:
    response = _get(api, tenant, "text/csv")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="statement-{tenant}-{MONTH}.csv"'
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    totals = [row for row in rows if row["section"] == "total"]
    assert [(t["currency"], t["requests"], t["cost"]) for t in totals] == [("EUR", "2", "1.750001")]
    assert {row["tenant"] for row in rows} == {'<b>Acme</b> & "Co"'}


def test_printable_html_for_a_browser(api: AdminApi, tenant: str) -> None:
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = _get(api, tenant, browser)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == HTML_POLICY
    assert "&lt;b&gt;Acme&lt;/b&gt; &amp; &quot;Co&quot;" in response.text
    assert "<b>Acme" not in response.text
    assert "1.750001" in response.text


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("*/*", "application/json"),
        ("image/png", "application/json"),
        ("text/csv", "text/csv"),
        ("text/*", "text/csv"),
        ("text/html;q=0.5, text/csv;q=0.4", "text/html"),
        ("text/html;q=0, */*", "application/json"),
        ("application/json;q=0.1, text/html", "text/html"),
    ],
)
def test_negotiation(accept: str | None, chosen: str) -> None:
    assert preferred(accept) == chosen


def test_finance_may_read_tenants_may_not(api: AdminApi, tenant: str) -> None:
    assert _get(api, tenant, token=api.finance).status_code == 200
    for token in (None, api.tenant_key):
        assert _get(api, tenant, token=token).status_code == 401


def test_unknown_tenant_and_bad_month(api: AdminApi, tenant: str) -> None:
    missing = api.get(f"/tenants/no-such-tenant/statements/{MONTH}")
    assert missing.status_code == 404, missing.text
    bad = api.get(f"/tenants/{tenant}/statements/2025-13")
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["param"] == "month"


def test_documented(api: AdminApi) -> None:
    document = api.get("/openapi.json").json()
    operation = document["paths"]["/admin/v1/tenants/{tenant_id}/statements/{month}"]["get"]
    assert operation["x-roles"] == ["admin", "finance"]
    assert set(operation["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert "Statement" in document["components"]["schemas"]
