"""`/admin/v1/admin-tokens`: issued once, stored hashed, refused the moment they are revoked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from gateway.admin.auth import hash_admin_token
from gateway.db.tables import AdminToken
from tests.integration.admin_api import PEPPER, AdminApi, admin_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminApi]:
    with admin_api(tmp_path_factory.mktemp("admin-tokens")) as running:
        yield running


def _row(api: AdminApi, token_id: str) -> AdminToken:
    async def load() -> AdminToken:
        async with api.services.sessions() as session:
            row = await session.scalar(select(AdminToken).where(AdminToken.id == token_id))
            assert row is not None
            return row

    return api.run(load)


def test_issue_shows_the_token_once_and_stores_its_hash(api: AdminApi) -> None:
    created = api.post("/admin-tokens", json={"name": "ops bot", "role": "admin"})
    assert created.status_code == 201, created.text
    issued = created.json()
    token = issued.pop("token")
    assert token.startswith("gwa_") and len(token) > 40
    assert issued["prefix"] == token[:12]
    assert (issued["name"], issued["role"], issued["revoked_at"]) == ("ops bot", "admin", None)

    row = _row(api, issued["id"])
    assert row.token_hash == hash_admin_token(token, PEPPER.encode())
    assert token not in (row.token_hash, row.prefix)

    listed = api.get("/admin-tokens", params={"limit": 500}).json()["data"]
    assert issued in listed
    assert all("token" not in entry for entry in listed)

    # The new token works, and the audit log names it as the actor (never its secret).
    tenant = api.post("/tenants", json={"name": "made-by-bot"}, token=token)
    assert tenant.status_code == 201
    entries = api.audit()
    assert entries[-1]["actor"] == f"ops bot ({issued['id']})"
    assert token not in str(entries)
    creation = next(e for e in entries if e["resource_id"] == issued["id"])
    assert creation["action"] == "admin_token.create"
    assert creation["after"] == issued


def test_a_revoked_token_is_refused_at_once(api: AdminApi) -> None:
    created = api.post("/admin-tokens", json={"name": "temp", "role": "finance"}).json()
    assert api.get("/usage", token=created["token"]).status_code == 200
    revoked = api.delete(f"/admin-tokens/{created['id']}")
    assert revoked.status_code == 204
    refused = api.get("/usage", token=created["token"])
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    listed = {t["id"]: t for t in api.get("/admin-tokens", params={"limit": 500}).json()["data"]}
    assert listed[created["id"]]["revoked_at"] is not None

    # Revoking again changes nothing and writes no second record.
    assert api.delete(f"/admin-tokens/{created['id']}").status_code == 204
    actions = [e["action"] for e in api.audit() if e["resource_id"] == created["id"]]
    assert actions == ["admin_token.create", "admin_token.revoke"]


def test_a_token_can_revoke_itself(api: AdminApi) -> None:
    created = api.post("/admin-tokens", json={"name": "self", "role": "admin"}).json()
    own = api.delete(f"/admin-tokens/{created['id']}", token=created["token"])
    assert own.status_code == 204
    assert api.get("/admin-tokens", token=created["token"]).status_code == 401


def test_unknown_token_id_is_404(api: AdminApi) -> None:
    response = api.delete("/admin-tokens/nope")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "token_id"


def test_the_list_pages(api: AdminApi) -> None:
    for n in range(3):
        assert api.post("/admin-tokens", json={"name": f"p{n}", "role": "finance"}).is_success
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = api.get("/admin-tokens", params=params).json()
        ids += [t["id"] for t in page["data"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert len(ids) == len(set(ids)) >= 4


@pytest.mark.parametrize(
    ("body", "locs"),
    [
        ({"name": "x", "role": "root"}, ["role"]),
        ({"role": "admin"}, ["name"]),
        ({"name": "", "role": "admin"}, ["name"]),
        ({"name": "x\n", "role": "admin"}, ["name"]),
        ({"name": "x", "role": "admin", "token": "gwa_mine"}, ["token"]),  # unknown field
        ({}, ["name", "role"]),
    ],
)
def test_invalid_bodies_are_422_with_every_field(
    api: AdminApi, body: dict[str, Any], locs: list[str]
) -> None:
    before = len(api.get("/admin-tokens", params={"limit": 500}).json()["data"])
    response = api.post("/admin-tokens", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["errors"]] == locs
    assert len(api.get("/admin-tokens", params={"limit": 500}).json()["data"]) == before


def test_only_admins_manage_tokens(api: AdminApi) -> None:
    body = {"name": "sneaky", "role": "admin"}
    some_id = api.get("/admin-tokens").json()["data"][0]["id"]
    assert api.post("/admin-tokens", json=body, token=api.finance).status_code == 403
    assert api.get("/admin-tokens", token=api.finance).status_code == 403
    assert api.delete(f"/admin-tokens/{some_id}", token=api.finance).status_code == 403
    for token in (None, api.tenant_key, "gwa_" + "x" * 43, "not-even-a-token"):
        assert api.post("/admin-tokens", json=body, token=token).status_code == 401
        assert api.get("/admin-tokens", token=token).status_code == 401
        assert api.delete(f"/admin-tokens/{some_id}", token=token).status_code == 401
    names = {t["name"] for t in api.get("/admin-tokens", params={"limit": 500}).json()["data"]}
    assert "sneaky" not in names
    assert _row(api, some_id).revoked_at is None
