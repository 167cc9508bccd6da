"""Tenant isolation and mass assignment on the admin API (OWASP API1/API3, RELIABILITY R27/R28).

Two tenants, A and B, each with a key, limits, a budget and a month of usage. Every way of
reaching B's objects through A's paths (B's key under A, B's key id in a tenant slot, encoded
`../` in an id) is 404 with the same error as a random id, never 200 or 403; A's own reads
(keys, statement, budget spend) hold none of B's data. Bodies carrying fields the schemas do
not declare (`id`, `tenant_id`, `key_hash`, `created_at`, `role`, `spent`...) are 422. After
each refusal the whole database, audit log included, is byte for byte what it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from gateway.db.tables import Base
from tests.integration.admin_api import AdminApi, admin_api, usage_record

MONTH = "2025-03"
IN_MONTH = datetime(2025, 3, 10, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Tenant:
    id: str
    key_id: str


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-isolation")) as running:
        yield running


def _tenant(api: AdminApi, prompt_tokens: int) -> Tenant:
    tenant_id = api.new_tenant()
    key = api.post(f"/tenants/{tenant_id}/keys", json={"name": "k"})
    assert key.status_code == 201, key.text
    limits = api.put(f"/tenants/{tenant_id}/limits", json={"rpm": 100, "tpm": 10_000})
    assert limits.status_code == 200, limits.text
    budget = api.put(f"/tenants/{tenant_id}/budget", json={"amount": "10"})
    assert budget.status_code == 200, budget.text
    api.record_usage(
        usage_record(tenant_id, IN_MONTH, prompt_tokens=prompt_tokens, cost_micros=1000)
    )
    return Tenant(tenant_id, key.json()["id"])


@pytest.fixture(scope="module")
def a(api: AdminApi) -> Tenant:
    return _tenant(api, prompt_tokens=11)


@pytest.fixture(scope="module")
def b(api: AdminApi) -> Tenant:
    return _tenant(api, prompt_tokens=7000)


def snapshot(api: AdminApi) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (audit log included)."""

    async def read() -> dict[str, list[tuple[Any, ...]]]:
        async with api.services.sessions() as session:
            tables = {}
            for table in Base.metadata.sorted_tables:
                rows = (await session.execute(select(table))).all()
                tables[table.name] = sorted((tuple(row) for row in rows), key=repr)
            return tables

    return api.run(read)


def foreign_paths(a: Tenant, b: Tenant) -> list[tuple[str, str]]:
    """(method, path) pairs that name B's objects from A's side."""
    under_a = [
        (method, f"/tenants/{a.id}/keys/{b.key_id}{suffix}")
        for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/rotate"))
    ]
    key_as_tenant = [
        (method, f"/tenants/{b.key_id}{suffix}")
        for method, suffix in (
            ("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/keys"), ("POST", "/keys"),
            ("GET", "/limits"), ("PUT", "/limits"), ("GET", "/budget"), ("PUT", "/budget"),
            ("DELETE", "/budget"), ("GET", f"/statements/{MONTH}"),
        )
    ]  # fmt: skip
    traversal = [
        ("GET", f"/tenants/{a.id}%2F..%2F{b.id}/keys"),
        ("PUT", f"/tenants/{a.id}%2F..%2F{b.id}/limits"),
        ("DELETE", f"/tenants/{a.id}%2F..%2F{b.id}/budget"),
        ("DELETE", f"/keys/{a.key_id}%2F..%2F{b.key_id}"),
        ("GET", f"/tenants/{a.id}/limits/{b.id}"),
        ("DELETE", f"/tenants/{a.id}/budget/{b.id}"),
        ("GET", f"/tenants/{a.id}/statements/{MONTH}/{b.id}"),
        ("GET", f"/tenants/{b.id}'%20OR%20'1'='1/keys"),
    ]
    return under_a + key_as_tenant + traversal


VALID_BODIES: dict[str, dict[str, Any]] = {
    "limits": {"rpm": 1}, "budget": {"amount": "1"}, "keys": {}, "rotate": {}
}  # fmt: skip


def test_another_tenants_objects_are_404_and_untouched(api: AdminApi, a: Tenant, b: Tenant) -> None:
    random_id = api.get("/tenants/0123456789abcdef0123456789abcdef").json()["error"]
    before = snapshot(api)
    for method, path in foreign_paths(a, b):
        body = VALID_BODIES.get(path.rsplit("/", 1)[-1], {"name": "x"})  # past validation
        response = api.request(method, path, json=body if method != "GET" else None)
        assert response.status_code == 404, (method, path, response.text)
        error = response.json()["error"]
        assert (error["type"], error["code"]) == (random_id["type"], random_id["code"]), path
        assert b.id not in error["message"] or b.id in path
    assert snapshot(api) == before


def test_a_tenants_reads_hold_none_of_the_others_data(api: AdminApi, a: Tenant, b: Tenant) -> None:
    keys = api.get(f"/tenants/{a.id}/keys").json()["data"]
    assert [(k["id"], k["tenant_id"]) for k in keys] == [(a.key_id, a.id)]
    statement = api.get(f"/tenants/{a.id}/statements/{MONTH}")
    assert statement.status_code == 200, statement.text
    assert b.id not in statement.text
    assert "7000" not in statement.text  # B's prompt tokens
    usage = api.get("/usage", params={"tenant_id": a.id, "start": "2025-03-01T00:00:00Z",
                                      "end": "2025-04-01T00:00:00Z"}).json()  # fmt: skip
    assert [(r["tenant_id"], r["prompt_tokens"]) for r in usage["data"]] == [(a.id, 11)]
    budget = api.get(f"/tenants/{a.id}/budget").json()
    assert budget["tenant_id"] == a.id


PRIVILEGED = {
    "id": "0123456789abcdef0123456789abcdef",
    "created_at": "2020-01-01T00:00:00Z",
    "role": "admin",
}


def mass_assignments(a: Tenant, b: Tenant) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, body): a valid body plus one field the schema does not declare."""
    price = {"model": "m", "input_per_mtok": "1", "effective_from": "2024-01-01T00:00:00Z"}
    valid = [
        ("POST", "/tenants", {"name": "mass"}),
        ("PATCH", f"/tenants/{a.id}", {"name": "renamed"}),
        ("POST", f"/tenants/{a.id}/keys", {"name": "k2"}),
        ("POST", f"/keys/{a.key_id}/rotate", {}),
        ("PUT", f"/tenants/{a.id}/limits", {"rpm": 5}),
        ("PUT", f"/tenants/{a.id}/budget", {"amount": "1"}),
        ("POST", "/prices", price),
        ("POST", "/admin-tokens", {"name": "t", "role": "finance"}),
    ]
    extras = [
        {"tenant_id": b.id},
        {"key_hash": "0" * 64},
        {"key": "gwk_" + "A" * 49},
        {"token_hash": "0" * 64},
        {"spent": "0", "period_start": "2020-01-01T00:00:00Z"},
        {"revoked_at": None, "last_used_at": "2020-01-01T00:00:00Z"},
        *({name: value} for name, value in PRIVILEGED.items()),
    ]
    cases = []
    for method, path, body in valid:
        for extra in extras:
            if set(extra) - set(body):  # `role` is a real field of an admin token
                cases.append((method, path, body | extra))
    return cases


def test_undeclared_fields_are_422_and_nothing_is_written(
    api: AdminApi, a: Tenant, b: Tenant
) -> None:
    before = snapshot(api)
    cases = mass_assignments(a, b)
    for method, path, body in cases:
        response = api.request(method, path, json=body)
        assert response.status_code == 422, (method, path, body, response.text)
        extra = response.json()["errors"]
        assert all(e["type"] == "extra_forbidden" for e in extra), extra
    assert snapshot(api) == before
    assert len(cases) > 60


def test_a_role_outside_the_allow_list_is_422(api: AdminApi) -> None:
    before = snapshot(api)
    for role in ("superuser", "owner", "ADMIN", "tenant"):
        response = api.post("/admin-tokens", json={"name": "x", "role": role})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "role"
    assert snapshot(api) == before
