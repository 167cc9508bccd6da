"""`/admin/v1/tenants/{id}/limits`: the whole document read and replaced, against the real app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gateway.db.limits import load_tenant_limits
from gateway.limits.policy import RateLimits, TenantLimits
from tests.integration.admin_api import AdminApi, admin_api


class RecordingInvalidator:
    """Stands in for the app's invalidator: remembers what was published."""

    def __init__(self) -> None:
        self.tenants: list[str] = []

    async def publish(self, *, tenant: str | None = None, key_hash: str | None = None) -> None:
        if tenant is not None:
            self.tenants.append(tenant)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-limits")) as running:
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


FULL = {
    "rpm": 60,
    "tpm": 10_000,
    "rpm_burst": 90,
    "tpm_burst": None,
    "concurrency": 4,
    "models": {
        "mistral-large-latest": {"rpm": 10, "tpm": 2_000, "rpm_burst": None, "tpm_burst": 3_000},
        "codestral-latest": {"rpm": 5, "tpm": None, "rpm_burst": None, "tpm_burst": None},
    },
}


def _tenant_limits(api: AdminApi, tenant_id: str) -> TenantLimits:
    async def load() -> TenantLimits:
        async with api.services.sessions() as session:
            return await load_tenant_limits(session, tenant_id)

    return api.run(load)


def test_a_new_tenant_is_unlimited(api: AdminApi) -> None:
    tenant = api.new_tenant()
    response = api.get(f"/tenants/{tenant}/limits")
    assert response.status_code == 200
    assert response.json() == {
        "rpm": None,
        "tpm": None,
        "rpm_burst": None,
        "tpm_burst": None,
        "concurrency": None,
        "models": {},
    }
    assert response.headers["etag"].startswith('"')


def test_put_replaces_every_row(api: AdminApi, published: RecordingInvalidator) -> None:
    tenant = api.new_tenant()
    first = api.put(f"/tenants/{tenant}/limits", json=FULL)
    assert first.status_code == 200, first.text
    assert first.json() == FULL
    assert api.get(f"/tenants/{tenant}/limits").json() == FULL

    # A second PUT drops the override it leaves out and the defaults it leaves out.
    second = {"tpm": 500, "models": {"codestral-latest": {"tpm": 50}}}
    replaced = api.put(f"/tenants/{tenant}/limits", json=second)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["models"] == {
        "codestral-latest": {"rpm": None, "tpm": 50, "rpm_burst": None, "tpm_burst": None}
    }
    assert replaced.json()["rpm"] is None and replaced.json()["concurrency"] is None

    # What admission reads is what the API showed.
    stored = _tenant_limits(api, tenant)
    assert stored.default == RateLimits(tpm=500)
    assert stored.concurrency is None
    assert dict(stored.models) == {"codestral-latest": RateLimits(tpm=50)}

    # Every replica drops the tenant's cached principals, once per change.
    assert published.tenants == [tenant, tenant]

    # An empty document clears every row.
    cleared = api.put(f"/tenants/{tenant}/limits", json={})
    assert cleared.status_code == 200
    assert _tenant_limits(api, tenant).models == {}
    assert _tenant_limits(api, tenant).default == RateLimits()


def test_a_change_reaches_admission_at_once(api: AdminApi) -> None:
    """The real invalidator drops the cached principal: no waiting for the cache TTL."""
    body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {api.tenant_key}"}

    def chat() -> int:
        response = api.client.post("/v1/chat/completions", json=body, headers=headers)
        return response.status_code

    path = f"/tenants/{api.key_tenant}/limits"
    try:
        assert chat() == 200  # the principal is now cached, unlimited
        assert api.put(path, json={"rpm": 1}).status_code == 200
        assert chat() == 200
        assert chat() == 429
    finally:
        assert api.put(path, json={}).status_code == 200
    assert chat() == 200


def test_each_change_is_audited_with_before_and_after(api: AdminApi) -> None:
    tenant = api.new_tenant()
    assert api.put(f"/tenants/{tenant}/limits", json=FULL).status_code == 200
    assert api.put(f"/tenants/{tenant}/limits", json={"rpm": 1}).status_code == 200
    changes = [e for e in api.audit(tenant) if e["action"] == "limits.replace"]
    assert len(changes) == 2
    assert changes[0]["before"]["models"] == {} and changes[0]["after"] == FULL
    assert changes[1]["before"] == FULL and changes[1]["after"]["rpm"] == 1
    assert changes[1]["actor"] == "bootstrap (bootstrap)"
    assert changes[1]["resource_type"] == "limits" and changes[1]["resource_id"] == tenant


@pytest.mark.parametrize(
    ("body", "locs"),
    [
        ({"rpm": 0}, ["rpm"]),
        ({"rpm": "many"}, ["rpm"]),
        ({"rpm_burst": 5}, ["rpm_burst"]),  # a burst needs its rate
        ({"models": {"m": {"tpm_burst": 5}}}, ["models.m.tpm_burst"]),
        ({"models": {"m": {"concurrency": 2}}}, ["models.m.concurrency"]),  # tenant-wide only
        ({"models": {"": {"rpm": 1}}}, ["models..[key]"]),  # the key itself
        ({"rpm": -1, "tpm": 0}, ["rpm", "tpm"]),
        ({"rpm": 1, "burst": 2}, ["burst"]),  # unknown field
    ],
)
def test_invalid_bodies_are_422_with_every_field(
    api: AdminApi, body: dict[str, Any], locs: list[str]
) -> None:
    tenant = api.new_tenant()
    response = api.put(f"/tenants/{tenant}/limits", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert [e["loc"] for e in response.json()["errors"]] == locs
    assert api.get(f"/tenants/{tenant}/limits").json()["models"] == {}  # nothing changed


def test_a_body_that_is_not_an_object_is_422(api: AdminApi) -> None:
    tenant = api.new_tenant()
    assert api.put(f"/tenants/{tenant}/limits", json=[1]).status_code == 422


def test_unknown_tenant_is_404(api: AdminApi) -> None:
    assert api.get("/tenants/nope/limits").status_code == 404
    missing = api.put("/tenants/nope/limits", json={"rpm": 1})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_if_match_guards_against_lost_updates(api: AdminApi) -> None:
    tenant = api.new_tenant()
    etag = api.get(f"/tenants/{tenant}/limits").headers["etag"]
    ours = api.put(f"/tenants/{tenant}/limits", json={"rpm": 5}, headers={"if-match": etag})
    assert ours.status_code == 200
    assert ours.headers["etag"] != etag
    stale = api.put(f"/tenants/{tenant}/limits", json={"rpm": 6}, headers={"if-match": etag})
    assert stale.status_code == 412
    assert stale.json()["error"]["code"] == "precondition_failed"
    assert api.get(f"/tenants/{tenant}/limits").json()["rpm"] == 5
    fresh = api.put(
        f"/tenants/{tenant}/limits", json={"rpm": 7}, headers={"if-match": ours.headers["etag"]}
    )
    assert fresh.status_code == 200
    anything = api.put(f"/tenants/{tenant}/limits", json={"rpm": 8}, headers={"if-match": "*"})
    assert anything.status_code == 200


def test_only_admins_read_or_write_limits(api: AdminApi) -> None:
    tenant = api.new_tenant()
    path = f"/tenants/{tenant}/limits"
    assert api.get(path, token=api.finance).status_code == 403
    denied = api.put(path, json={"rpm": 1}, token=api.finance)
    assert denied.status_code == 403
    assert denied.json()["error"]["type"] == "permission_error"
    assert api.get(path, token=None).status_code == 401
    assert api.put(path, json={"rpm": 1}, token=None).status_code == 401
    assert api.get(path, token=api.tenant_key).status_code == 401
    assert api.put(path, json={"rpm": 1}, token=api.tenant_key).status_code == 401
    assert api.get(path).json()["rpm"] is None
    assert not [e for e in api.audit(tenant) if e["action"] == "limits.replace"]
