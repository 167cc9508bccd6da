"""`/admin/v1/audit`: every change, oldest first, paged by id; and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.admin_api import AdminApi, admin_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-audit")) as running:
        yield running


def _changes(api: AdminApi, tenant: str) -> None:
    assert api.put(f"/tenants/{tenant}/limits", json={"rpm": 1}).status_code == 200
    assert api.put(f"/tenants/{tenant}/budget", json={"amount": "1"}).status_code == 200
    assert api.delete(f"/tenants/{tenant}/budget").status_code == 204


def test_pages_oldest_first_for_one_tenant(api: AdminApi) -> None:
    tenant, other = api.new_tenant(), api.new_tenant()
    _changes(api, tenant)
    _changes(api, other)
    seen: list[dict[str, Any]] = []
    params: dict[str, Any] = {"tenant_id": tenant, "limit": 2}
    while True:
        page = api.get("/audit", params=params)
        assert page.status_code == 200
        assert len(page.json()["data"]) <= 2
        seen += page.json()["data"]
        if page.json()["next_cursor"] is None:
            break
        params["cursor"] = page.json()["next_cursor"]
    assert [e["action"] for e in seen] == [
        "tenant.create",
        "limits.replace",
        "budget.set",
        "budget.delete",
    ]
    assert [e["id"] for e in seen] == sorted(e["id"] for e in seen)
    assert {e["tenant_id"] for e in seen} == {tenant}
    assert all(e["actor"] == "bootstrap (bootstrap)" for e in seen)


def test_a_cursor_continues_after_new_records(api: AdminApi) -> None:
    tenant = api.new_tenant()
    first = api.get("/audit", params={"tenant_id": tenant, "limit": 1}).json()
    assert first["next_cursor"] is None  # one record so far: the tenant's creation
    _changes(api, tenant)
    everything = api.get("/audit", params={"tenant_id": tenant}).json()["data"]
    page = api.get("/audit", params={"tenant_id": tenant, "limit": 1}).json()
    rest = api.get(
        "/audit", params={"tenant_id": tenant, "limit": 10, "cursor": page["next_cursor"]}
    ).json()
    assert page["data"] + rest["data"] == everything


def test_entries_outlive_their_tenant(api: AdminApi) -> None:
    tenant = api.new_tenant()
    assert api.delete(f"/tenants/{tenant}").status_code == 204
    actions = [e["action"] for e in api.audit(tenant)]
    assert actions == ["tenant.create", "tenant.delete"]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "not-ours"}, "cursor"),
        ({"tenant": "x"}, "tenant"),  # unknown parameter
    ],
)
def test_invalid_queries_are_422(api: AdminApi, params: dict[str, Any], loc: str) -> None:
    response = api.get("/audit", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == loc


def test_only_admins_read_the_audit_log(api: AdminApi) -> None:
    assert api.get("/audit", token=api.finance).status_code == 403
    for token in (None, api.tenant_key):
        assert api.get("/audit", token=token).status_code == 401


def test_openapi_documents_every_resource(api: AdminApi) -> None:
    document = api.get("/openapi.json", token=api.finance)
    assert document.status_code == 200
    paths = document.json()["paths"]
    for path, methods in {
        "/admin/v1/tenants/{tenant_id}/limits": {"get", "put"},
        "/admin/v1/tenants/{tenant_id}/budget": {"get", "put", "delete"},
        "/admin/v1/prices": {"get", "post"},
        "/admin/v1/usage": {"get"},
        "/admin/v1/audit": {"get"},
        "/admin/v1/admin-tokens": {"get", "post"},
        "/admin/v1/admin-tokens/{token_id}": {"delete"},
        "/admin/v1/reconciliation": {"get"},
    }.items():
        assert set(paths[path]) == methods, path
    usage = paths["/admin/v1/usage"]["get"]
    assert set(usage["responses"]["200"]["content"]) == {"application/json", "text/csv"}
    assert {p["name"] for p in usage["parameters"]} == {"tenant_id", "start", "end", "group_by"}
    assert paths["/admin/v1/tenants/{tenant_id}/budget"]["get"]["x-roles"] == ["admin", "finance"]
    assert paths["/admin/v1/tenants/{tenant_id}/budget"]["put"]["x-roles"] == ["admin"]
