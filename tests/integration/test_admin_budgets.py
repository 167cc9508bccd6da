"""`/admin/v1/tenants/{id}/budget`: set, read with this period's spend, remove."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.db.budgets import load_budget
from gateway.limits.budget import BudgetPolicy, period_bounds
from tests.integration.admin_api import AdminApi, admin_api, usage_record
from tests.integration.test_admin_limits import RecordingInvalidator


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-budgets")) as running:
        yield running


@pytest.fixture
def published(api: AdminApi) -> Iterator[RecordingInvalidator]:
    real = api.services.invalidator
    recorder = RecordingInvalidator()
    api.services.invalidator = recorder  # type: ignore[assignment]
    try:
        yield recorder
    finally:
        api.services.invalidator = real


def _stored(api: AdminApi, tenant_id: str) -> BudgetPolicy | None:
    async def load() -> BudgetPolicy | None:
        async with api.services.sessions() as session:
            return await load_budget(session, tenant_id)

    return api.run(load)


def test_set_then_read_with_this_periods_spend(
    api: AdminApi, published: RecordingInvalidator
) -> None:
    tenant = api.new_tenant()
    body = {
        "amount": "10.25",
        "currency": "EUR",
        "hard": False,
        "shrink_max_tokens": True,
        "min_output_tokens": 32,
        "thresholds_pct": [90, 50, 50],
    }
    created = api.put(f"/tenants/{tenant}/budget", json=body)
    assert created.status_code == 200, created.text
    assert _stored(api, tenant) == BudgetPolicy(
        amount_micros=10_250_000,
        currency="EUR",
        hard=False,
        shrink_max_tokens=True,
        min_output_tokens=32,
        thresholds_pct=(50, 90),
    )
    assert published.tenants == [tenant]

    now = datetime.now(UTC)
    start, end = period_bounds(now.timestamp())
    api.record_usage(
        usage_record(tenant, now, cost_micros=2_500_000),
        usage_record(tenant, now, cost_micros=1),
        usage_record(tenant, now, cost_micros=7_000_000, currency="USD"),  # another currency
        usage_record(tenant, start - timedelta(seconds=1), cost_micros=9_000_000),  # last period
        usage_record(tenant, now, cost_micros=None),  # unpriced
    )
    read = api.get(f"/tenants/{tenant}/budget")
    assert read.status_code == 200
    assert read.json() == {
        "tenant_id": tenant,
        "amount": "10.25",
        "currency": "EUR",
        "period": "month",
        "hard": False,
        "shrink_max_tokens": True,
        "min_output_tokens": 32,
        "thresholds_pct": [50, 90],
        "period_start": start.isoformat().replace("+00:00", "Z"),
        "period_end": end.isoformat().replace("+00:00", "Z"),
        "spent": "2.500001",
        "remaining": "7.749999",
    }
    # Spending does not change the ETag: it covers the settings only.
    assert read.headers["etag"] == created.headers["etag"]


def test_remaining_never_goes_below_zero(api: AdminApi) -> None:
    tenant = api.new_tenant()
    assert api.put(f"/tenants/{tenant}/budget", json={"amount": "1"}).status_code == 200
    api.record_usage(usage_record(tenant, datetime.now(UTC), cost_micros=1_500_000))
    read = api.get(f"/tenants/{tenant}/budget").json()
    assert (read["spent"], read["remaining"]) == ("1.5", "0")


def test_replace_and_delete_are_audited(api: AdminApi, published: RecordingInvalidator) -> None:
    tenant = api.new_tenant()
    assert api.put(f"/tenants/{tenant}/budget", json={"amount": "5"}).status_code == 200
    assert api.put(f"/tenants/{tenant}/budget", json={"amount": "6.5"}).status_code == 200
    deleted = api.delete(f"/tenants/{tenant}/budget")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert api.get(f"/tenants/{tenant}/budget").status_code == 404
    assert _stored(api, tenant) is None
    assert published.tenants == [tenant] * 3

    entries = [e for e in api.audit(tenant) if e["resource_type"] == "budget"]
    assert [e["action"] for e in entries] == ["budget.set", "budget.set", "budget.delete"]
    assert entries[0]["before"] is None and entries[0]["after"]["amount"] == "5"
    assert entries[1]["before"]["amount"] == "5" and entries[1]["after"]["amount"] == "6.5"
    assert entries[2]["before"]["amount"] == "6.5" and entries[2]["after"] is None


@pytest.mark.parametrize(
    ("body", "locs"),
    [
        ({"amount": "-1"}, ["amount"]),
        ({"amount": "0.0000001"}, ["amount"]),  # finer than a micro-unit
        ({"amount": "lots"}, ["amount"]),
        ({"amount": "NaN"}, ["amount"]),
        ({}, ["amount"]),
        ({"amount": "1", "currency": "eur"}, ["currency"]),
        ({"amount": "1", "period": "week"}, ["period"]),
        ({"amount": "1", "thresholds_pct": [0, 1001]}, ["thresholds_pct.0", "thresholds_pct.1"]),
        ({"amount": "1", "min_output_tokens": 0}, ["min_output_tokens"]),
        ({"amount": "1", "soft": True}, ["soft"]),  # unknown field
    ],
)
def test_invalid_bodies_are_422_with_every_field(
    api: AdminApi, body: dict[str, Any], locs: list[str]
) -> None:
    tenant = api.new_tenant()
    response = api.put(f"/tenants/{tenant}/budget", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["errors"]] == locs
    assert api.get(f"/tenants/{tenant}/budget").status_code == 404


def test_missing_tenant_or_budget_is_404(api: AdminApi) -> None:
    tenant = api.new_tenant()
    no_budget = api.get(f"/tenants/{tenant}/budget")
    assert no_budget.status_code == 404
    assert "no budget" in no_budget.json()["error"]["message"]
    assert api.delete(f"/tenants/{tenant}/budget").status_code == 404
    assert api.get("/tenants/nope/budget").status_code == 404
    assert api.put("/tenants/nope/budget", json={"amount": "1"}).status_code == 404
    assert api.delete("/tenants/nope/budget").status_code == 404


def test_if_match_guards_against_lost_updates(api: AdminApi) -> None:
    tenant = api.new_tenant()
    path = f"/tenants/{tenant}/budget"
    # If-Match on a budget that does not exist yet cannot match anything.
    assert api.put(path, json={"amount": "1"}, headers={"if-match": '"x"'}).status_code == 412
    etag = api.put(path, json={"amount": "1"}).headers["etag"]
    ours = api.put(path, json={"amount": "2"}, headers={"if-match": etag})
    assert ours.status_code == 200
    assert api.put(path, json={"amount": "3"}, headers={"if-match": etag}).status_code == 412
    assert api.delete(path, headers={"if-match": etag}).status_code == 412
    assert api.get(path).json()["amount"] == "2"
    assert api.delete(path, headers={"if-match": ours.headers["etag"]}).status_code == 204


def test_finance_reads_and_only_admins_write(api: AdminApi) -> None:
    tenant = api.new_tenant()
    path = f"/tenants/{tenant}/budget"
    assert api.put(path, json={"amount": "4"}).status_code == 200
    read = api.get(path, token=api.finance)
    assert read.status_code == 200 and read.json()["amount"] == "4"
    assert api.put(path, json={"amount": "5"}, token=api.finance).status_code == 403
    assert api.delete(path, token=api.finance).status_code == 403
    for token in (None, api.tenant_key, "gwa_not-a-real-token"):
        assert api.get(path, token=token).status_code == 401
        assert api.put(path, json={"amount": "5"}, token=token).status_code == 401
        assert api.delete(path, token=token).status_code == 401
    assert api.get(path).json()["amount"] == "4"
