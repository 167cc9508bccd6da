"""`/admin/v1/prices`: append-only price versions in decimals, and the price book they feed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.admin_api import AdminApi, admin_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-prices")) as running:
        yield running


def _model() -> str:
    return f"model-{uuid.uuid4().hex[:8]}"


def test_add_a_version_and_price_with_it_at_once(api: AdminApi) -> None:
    model = _model()
    body = {
        "model": model,
        "currency": "EUR",
        "input_per_mtok": "0.12",
        "output_per_mtok": 1.5,
        "effective_from": "2026-01-01T00:00:00Z",
    }
    created = api.post("/prices", json=body)
    assert created.status_code == 201, created.text
    price = created.json()
    assert price["model"] == model and price["deployment"] == ""
    assert (price["input_per_mtok"], price["output_per_mtok"]) == ("0.12", "1.5")
    assert price["effective_from"] == "2026-01-01T00:00:00Z"

    # This process's price book has it as soon as the POST answered.
    book = api.client.app.state.ledger_pipeline.catalog.book  # type: ignore[attr-defined]
    in_force = book.price_at(model, "simulator", datetime(2026, 2, 1, tzinfo=UTC).timestamp())
    assert in_force is not None
    assert in_force.version_id == price["id"]
    assert (in_force.input_micros_per_mtok, in_force.output_micros_per_mtok) == (120_000, 1_500_000)

    listed = api.get("/prices", params={"model": model})
    assert listed.status_code == 200
    assert listed.json() == {"data": [price], "next_cursor": None}

    audited = [e for e in api.audit() if e["action"] == "price.create"]
    assert audited[-1]["resource_id"] == str(price["id"])
    assert audited[-1]["after"] == price and audited[-1]["before"] is None


def test_versions_are_append_only(api: AdminApi) -> None:
    model = _model()
    first = {"model": model, "input_per_mtok": "1", "effective_from": "2026-01-01T00:00:00Z"}
    assert api.post("/prices", json=first).status_code == 201
    duplicate = api.post("/prices", json=first | {"input_per_mtok": "2"})
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "conflict"
    # The same instant in another zone is the same version.
    same = first | {"effective_from": "2026-01-01T01:00:00+01:00"}
    assert api.post("/prices", json=same).status_code == 409
    # Another deployment, or a later start, is a new version.
    assert api.post("/prices", json=first | {"deployment": "simulator"}).status_code == 201
    later = first | {"effective_from": "2026-06-01T00:00:00Z", "input_per_mtok": "0.9"}
    assert api.post("/prices", json=later).status_code == 201
    versions = api.get("/prices", params={"model": model}).json()["data"]
    assert [(v["deployment"], v["input_per_mtok"]) for v in versions] == [
        ("", "1"),
        ("simulator", "1"),
        ("", "0.9"),
    ]


def test_the_list_pages_in_creation_order(api: AdminApi) -> None:
    model = _model()
    for month in range(1, 6):
        body = {
            "model": model,
            "input_per_mtok": f"0.{month}",
            "effective_from": f"2026-{month:02d}-01T00:00:00Z",
        }
        assert api.post("/prices", json=body).status_code == 201
    seen: list[str] = []
    params: dict[str, Any] = {"model": model, "limit": 2}
    while True:
        page = api.get("/prices", params=params, token=api.finance)
        assert page.status_code == 200
        assert len(page.json()["data"]) <= 2
        seen += [p["input_per_mtok"] for p in page.json()["data"]]
        if page.json()["next_cursor"] is None:
            break
        params["cursor"] = page.json()["next_cursor"]
    assert seen == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    everything = api.get("/prices", params={"limit": 500}).json()["data"]
    assert {"mistral-small-latest", model} <= {p["model"] for p in everything}  # seeded too


@pytest.mark.parametrize(
    ("change", "locs"),
    [
        ({"input_per_mtok": "-0.1"}, ["input_per_mtok"]),
        ({"input_per_mtok": "0.0000001"}, ["input_per_mtok"]),  # finer than a micro-unit
        ({"output_per_mtok": "cheap"}, ["output_per_mtok"]),
        ({"effective_from": "2026-01-01T00:00:00"}, ["effective_from"]),  # no time zone
        ({"currency": "euro"}, ["currency"]),
        ({"model": ""}, ["model"]),
        ({"deployment": "d" * 65}, ["deployment"]),
        ({"id": 7}, ["id"]),  # unknown (and server-assigned) field
    ],
)
def test_invalid_bodies_are_422_with_every_field(
    api: AdminApi, change: dict[str, Any], locs: list[str]
) -> None:
    model = _model()
    body = {"model": model, "input_per_mtok": "1", "effective_from": "2026-01-01T00:00:00Z"}
    response = api.post("/prices", json=body | change)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["errors"]] == locs
    assert api.get("/prices", params={"model": model}).json()["data"] == []


def test_missing_fields_are_each_reported(api: AdminApi) -> None:
    response = api.post("/prices", json={})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["errors"]] == [
        "model",
        "input_per_mtok",
        "effective_from",
    ]


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": "ten"}, {"cursor": "garbage"}, {"sort": "model"}]
)
def test_invalid_list_queries_are_422(api: AdminApi, params: dict[str, Any]) -> None:
    response = api.get("/prices", params=params)
    assert response.status_code == 422, response.text


def test_finance_reads_and_only_admins_add(api: AdminApi) -> None:
    body = {"model": _model(), "input_per_mtok": "1", "effective_from": "2026-01-01T00:00:00Z"}
    assert api.get("/prices", token=api.finance).status_code == 200
    denied = api.post("/prices", json=body, token=api.finance)
    assert denied.status_code == 403
    for token in (None, api.tenant_key):
        assert api.get("/prices", token=token).status_code == 401
        assert api.post("/prices", json=body, token=token).status_code == 401
    assert api.get("/prices", params={"model": body["model"]}).json()["data"] == []
