"""`/admin/v1/usage`: the daily rollup grouped and summed, as JSON and as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.integration.admin_api import AdminApi, admin_api, usage_record

MARCH_30 = datetime(2025, 3, 30, 10, tzinfo=UTC)
MARCH_31 = datetime(2025, 3, 31, 23, 59, tzinfo=UTC)
APRIL_1 = datetime(2025, 4, 1, 0, 1, tzinfo=UTC)
WINDOW = {"start": "2025-03-01T00:00:00Z", "end": "2025-05-01T00:00:00Z"}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-usage")) as running:
        yield running


@pytest.fixture(scope="module")
def tenant(api: AdminApi) -> str:
    """A tenant with a known mix of usage around the end of March 2025."""
    tenant_id = api.new_tenant()
    other = api.new_tenant()
    large = {"model": "mistral-large-latest", "deployment": "replica-b"}
    api.record_usage(
        usage_record(tenant_id, MARCH_30, prompt_tokens=100, completion_tokens=10, cost_micros=17),
        usage_record(tenant_id, MARCH_30, prompt_tokens=1, completion_tokens=2, cost_micros=3),
        usage_record(tenant_id, MARCH_31, prompt_tokens=5, completion_tokens=5, cost_micros=1_250_000),
        usage_record(tenant_id, MARCH_31, **large, prompt_tokens=7, cost_micros=2_000_001),
        usage_record(tenant_id, APRIL_1, **large, prompt_tokens=8, cost_micros=None),  # unpriced
        usage_record(tenant_id, APRIL_1, prompt_tokens=9, completion_tokens=1, cost_micros=500_000),
        usage_record(other, MARCH_31, prompt_tokens=1000, cost_micros=99_000_000),
    )  # fmt: skip
    return tenant_id


def _report(api: AdminApi, tenant: str, **params: str) -> dict[str, Any]:
    response = api.get("/usage", params={"tenant_id": tenant, **WINDOW, **params})
    assert response.status_code == 200, response.text
    return response.json()


def _rows(report: dict[str, Any], *columns: str) -> list[tuple[Any, ...]]:
    return [tuple(row[c] for c in columns) for row in report["data"]]


def test_by_day_is_the_default(api: AdminApi, tenant: str) -> None:
    report = _report(api, tenant)
    assert report["group_by"] == ["day"]
    assert report["start"] == WINDOW["start"] and report["end"] == WINDOW["end"]
    columns = ("day", "currency", "requests", "prompt_tokens", "completion_tokens", "cost")
    assert _rows(report, *columns) == [
        ("2025-03-30", "EUR", 2, 101, 12, "0.00002"),
        ("2025-03-31", "EUR", 2, 12, 10, "3.250001"),
        ("2025-04-01", None, 1, 8, 5, "0"),
        ("2025-04-01", "EUR", 1, 9, 1, "0.5"),
    ]
    assert [row["cost_micros"] for row in report["data"]] == [20, 3_250_001, 0, 500_000]
    assert [row["unpriced_requests"] for row in report["data"]] == [0, 0, 1, 0]
    assert {row["tenant_id"] for row in report["data"]} == {tenant}
    assert all(row["model"] is None and row["month"] is None for row in report["data"])


def test_by_model_and_month(api: AdminApi, tenant: str) -> None:
    report = _report(api, tenant, group_by="model,month")
    assert report["group_by"] == ["model", "month"]
    assert _rows(report, "model", "month", "currency", "requests", "cost") == [
        ("mistral-large-latest", "2025-03", "EUR", 1, "2.000001"),
        ("mistral-large-latest", "2025-04", None, 1, "0"),
        ("mistral-small-latest", "2025-03", "EUR", 3, "1.25002"),
        ("mistral-small-latest", "2025-04", "EUR", 1, "0.5"),
    ]
    assert all(row["day"] is None for row in report["data"])


def test_by_deployment_and_day_with_month(api: AdminApi, tenant: str) -> None:
    report = _report(api, tenant, group_by="deployment,day,month")
    assert _rows(report, "deployment", "day", "month", "requests") == [
        ("replica-b", "2025-03-31", "2025-03", 1),
        ("replica-b", "2025-04-01", "2025-04", 1),
        ("simulator", "2025-03-30", "2025-03", 2),
        ("simulator", "2025-03-31", "2025-03", 1),
        ("simulator", "2025-04-01", "2025-04", 1),
    ]


def test_every_tenant_without_a_filter(api: AdminApi, tenant: str) -> None:
    response = api.get("/usage", params={**WINDOW, "group_by": "month"})
    assert response.status_code == 200
    march = [r for r in response.json()["data"] if r["month"] == "2025-03"]
    assert len({r["tenant_id"] for r in march}) == 2
    assert sum(r["requests"] for r in march) == 5


def test_whole_days_that_overlap_the_window(api: AdminApi, tenant: str) -> None:
    # The rollup is by UTC day: a window ending at midnight leaves that day out...
    until_april = {"start": "2025-03-31T12:00:00Z", "end": "2025-04-01T00:00:00Z"}
    report = api.get("/usage", params={"tenant_id": tenant, **until_april}).json()
    assert _rows(report, "day") == [("2025-03-31",)]
    # ...one ending a minute later takes it in; a naive time is UTC.
    into_april = {"start": "2025-03-31T12:00:00", "end": "2025-04-01T00:01:00"}
    report = api.get("/usage", params={"tenant_id": tenant, **into_april}).json()
    assert _rows(report, "day") == [("2025-03-31",), ("2025-04-01",), ("2025-04-01",)]
    assert report["start"] == "2025-03-31T12:00:00Z"
    # Days are UTC days, whatever zone the window is given in (this one is March 30, UTC).
    zoned = {"start": "2025-03-31T01:00:00+02:00", "end": "2025-03-31T02:00:00+02:00"}
    report = api.get("/usage", params={"tenant_id": tenant, **zoned}).json()
    assert _rows(report, "day") == [("2025-03-30",)]


def test_the_default_window_is_the_last_30_days(api: AdminApi) -> None:
    tenant = api.new_tenant()
    now = datetime.now(UTC)
    api.record_usage(
        usage_record(tenant, now, cost_micros=1), usage_record(tenant, now - timedelta(days=45))
    )
    report = api.get("/usage", params={"tenant_id": tenant}).json()
    assert [row["day"] for row in report["data"]] == [now.date().isoformat()]
    start = datetime.fromisoformat(report["start"])
    end = datetime.fromisoformat(report["end"])
    assert end - start == timedelta(days=30)
    assert abs(end - now) < timedelta(minutes=1)


def test_an_unknown_tenant_has_no_usage(api: AdminApi) -> None:
    # Not a 404: the ledger outlives deleted tenants, and finance still reports on them.
    report = api.get("/usage", params={"tenant_id": "gone"})
    assert report.status_code == 200
    assert report.json()["data"] == []


@pytest.mark.parametrize("group_by", ["day", "model,day", "model,deployment,month"])
def test_csv_holds_the_same_numbers_as_json(api: AdminApi, tenant: str, group_by: str) -> None:
    params = {"tenant_id": tenant, **WINDOW, "group_by": group_by}
    as_json = api.get("/usage", params=params, token=api.finance).json()
    response = api.get("/usage", params=params, token=api.finance, headers={"accept": "text/csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(response.text)))
    dimensions = group_by.split(",")
    totals = ["requests", "prompt_tokens", "completion_tokens", "cost", "unpriced_requests"]
    assert lines[0] == ["tenant_id", *dimensions, "currency", *totals]
    assert len(lines) == len(as_json["data"]) + 1
    for line, row in zip(lines[1:], as_json["data"], strict=True):
        assert dict(zip(lines[0], line, strict=True)) == {
            "tenant_id": row["tenant_id"],
            **{d: row[d] for d in dimensions},
            "currency": row["currency"] or "",
            **{t: str(row[t]) for t in totals},
        }


@pytest.mark.parametrize(
    ("accept", "is_csv"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("text/csv", True),
        ("text/csv;q=0.9, application/json", False),
        ("application/json;q=0.5, text/csv", True),
    ],
)
def test_accept_chooses_the_format(
    api: AdminApi, tenant: str, accept: str | None, is_csv: bool
) -> None:
    headers = {} if accept is None else {"accept": accept}
    response = api.get("/usage", params={"tenant_id": tenant, **WINDOW}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv" if is_csv else "application/json")


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"start": "2025-04-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}, "end"),
        ({"start": "2025-04-02T00:00:00Z", "end": "2025-04-01T00:00:00Z"}, "end"),
        ({"start": "yesterday"}, "start"),
        ({"group_by": "week"}, "group_by"),
        ({"group_by": "day,"}, "group_by"),
        ({"format": "csv"}, "format"),  # unknown parameter
    ],
)
def test_invalid_queries_are_422(api: AdminApi, params: dict[str, str], loc: str) -> None:
    response = api.get("/usage", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == loc


def test_a_start_after_the_default_end_is_422(api: AdminApi) -> None:
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    response = api.get("/usage", params={"start": tomorrow.isoformat()[:19]})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "end"


def test_finance_reads_and_others_are_refused(api: AdminApi) -> None:
    assert api.get("/usage", token=api.finance).status_code == 200
    for token in (None, api.tenant_key, "gwa_revoked-or-unknown"):
        assert api.get("/usage", token=token).status_code == 401
