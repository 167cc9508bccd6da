"""A tenant's whole life through the admin API, with plain HTTP against a real `gateway serve`.

create tenant → key → limits → budget → requests through /v1 → usage report (JSON and CSV)
→ rotate the key (the old one works for the grace, then stops; the new one works) → revoke
→ 401 within a second → the audit log lists every step with its actor, before and after.
Also: a finance token reads usage, prices and budgets and is refused every write (403); a
tenant key on the admin API is 401. Runs in both modes: embedded (SQLite, in-process limits)
and production (Postgres and Redis).

Prices are 1 EUR per million tokens in and out, so a request costs one micro-euro per token
and every number below is a token count: the budget's reservation (`x-budget-remaining`)
is prompt + max_tokens on top of what earlier requests cost, and a request's cost in the
usage report is its prompt + completion tokens. The auth cache TTL is 60 s, so only the
admin API's invalidation can explain a revocation taking effect within a second.
"""

from __future__ import annotations

import csv
import io
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.stack import base_env, cli, gateway_server, routing_file, simulator
from tests.services import PostgresServer, RedisServer, free_port, run_prefix

ADMIN_TOKEN = "lifecycle-bootstrap-token"
ADMIN = "/admin/v1"
MODEL = "mistral-small-latest"
RPM, TPM = 10, 50_000
BUDGET_MICROS = 1_000_000  # 1 EUR
MAX_TOKENS = 16
GRACE_S = 2
REQUESTS = 3


@dataclass
class Gateway:
    mode: str
    base_url: str

    def admin(self, token: str = ADMIN_TOKEN) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url + ADMIN,
            headers={"authorization": f"Bearer {token}"},
            timeout=10,
        )

    def chat(self, key: str) -> httpx.Response:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something short."}],
            "max_tokens": MAX_TOKENS,
        }
        return httpx.post(
            f"{self.base_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json=body,
            timeout=10,
        )

    def models(self, key: str) -> httpx.Response:
        """The cheapest authenticated call (it counts against no limit)."""
        return httpx.get(
            f"{self.base_url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10
        )


@pytest.fixture(scope="module", params=["embedded", "production"])
def gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: PostgresServer,
    redis_srv: RedisServer,
) -> Iterator[Gateway]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"lifecycle-{mode}")
    env = base_env()
    env["GATEWAY_ADMIN_TOKEN"] = ADMIN_TOKEN
    env["GATEWAY_AUTH_CACHE_TTL_S"] = "60"
    env["GATEWAY_SPOOL_DIR"] = str(tmp / "spool")
    database, prefix = None, run_prefix()
    if mode == "embedded":
        env["GATEWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / 'gateway.db'}"
    else:
        database = pg_server.create_database()
        env["GATEWAY_DATABASE_URL"] = pg_server.async_url(database)
        env["GATEWAY_REDIS_URL"] = redis_srv.url
        env["GATEWAY_REDIS_KEY_PREFIX"] = prefix
    try:
        with simulator("mistral", tmp, env) as mistral, simulator("vllm", tmp, env) as vllm:
            env["GATEWAY_CONFIG"] = str(routing_file(tmp / "r.yaml", mistral, vllm, free_port()))
            cli(env, "migrate")
            with gateway_server(env, tmp / "gateway.log") as base_url:
                yield Gateway(mode, base_url)
    finally:
        if database is not None:
            pg_server.drop_database(database)
        redis_srv.delete_prefix(prefix)


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.text}"
    return response.json() if response.content and status != 204 else None


def seconds_until(condition: Callable[[], bool], timeout_s: float) -> float:
    """How long `condition` took to hold, polled every 20 ms; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_tenant_from_creation_to_revocation(gateway: Gateway) -> None:
    admin = gateway.admin()
    actor = "bootstrap (bootstrap)"
    price = {"model": MODEL, "input_per_mtok": "1", "output_per_mtok": "1"}
    expect(admin.post("/prices", json={**price, "effective_from": "2020-01-01T00:00:00Z"}), 201)

    # Tenant, key, limits, budget.
    name = f"acme-{uuid.uuid4().hex[:8]}"
    created = admin.post("/tenants", json={"name": name, "residency": "eu"})
    tenant = expect(created, 201)
    assert created.headers["location"] == f"{ADMIN}/tenants/{tenant['id']}"
    assert (tenant["name"], tenant["residency"], tenant["status"]) == (name, "eu", "active")
    issued = expect(admin.post(f"/tenants/{tenant['id']}/keys", json={"name": "ci"}), 201)
    assert issued["key"].startswith("gwk_") and issued["status"] == "active"
    limited = admin.put(f"/tenants/{tenant['id']}/limits", json={"rpm": RPM, "tpm": TPM})
    limits = expect(limited, 200)
    assert (limits["rpm"], limits["tpm"], limits["models"]) == (RPM, TPM, {})
    budget = expect(admin.put(f"/tenants/{tenant['id']}/budget", json={"amount": "1"}), 200)
    assert (budget["amount"], budget["currency"], budget["spent"]) == ("1", "EUR", "0")

    # Requests through /v1: the headers reflect the limits and the budget just set.
    spent_micros, prompt_total, completion_total = 0, 0, 0
    for n in range(1, REQUESTS + 1):
        response = gateway.chat(issued["key"])
        usage = expect(response, 200)["usage"]
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        headers = response.headers
        assert headers["x-ratelimit-limit-requests"] == str(RPM)
        assert headers["x-ratelimit-remaining-requests"] == str(RPM - n)
        assert headers["x-ratelimit-limit-tokens"] == str(TPM)
        # The token bucket refills continuously (TPM / 60 per second): between a bucket that
        # kept every earlier request's tokens and one that has already got them back.
        remaining_tokens = int(headers["x-ratelimit-remaining-tokens"])
        this_request = prompt + MAX_TOKENS
        earlier = prompt_total + completion_total
        assert TPM - earlier - this_request <= remaining_tokens <= TPM - this_request
        reserved = BUDGET_MICROS - spent_micros - (prompt + MAX_TOKENS)
        assert headers["x-budget-remaining"] == f"0.{reserved:06d}"
        prompt_total, completion_total = prompt_total + prompt, completion_total + completion
        spent_micros += prompt + completion
        time.sleep(0.05)  # let the settlement (a background task) land before the next one

    # The usage report, as JSON and as CSV, once the ledger has the requests.
    query = {"tenant_id": tenant["id"], "group_by": "model"}

    def reported() -> bool:
        rows = expect(admin.get("/usage", params=query), 200)["data"]
        return bool(rows) and rows[0]["requests"] == REQUESTS

    seconds_until(reported, timeout_s=15)
    (row,) = expect(admin.get("/usage", params=query), 200)["data"]
    assert row == {
        "tenant_id": tenant["id"],
        "model": MODEL,
        "deployment": None,  # not asked for
        "day": None,
        "month": None,
        "currency": "EUR",
        "requests": REQUESTS,
        "prompt_tokens": prompt_total,
        "completion_tokens": completion_total,
        "cost_micros": spent_micros,
        "cost": f"0.{spent_micros:06d}".rstrip("0"),
        "unpriced_requests": 0,
    }
    as_csv = admin.get("/usage", params=query, headers={"accept": "text/csv"})
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    (line,) = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert line == {
        "tenant_id": tenant["id"],
        "model": MODEL,
        "currency": "EUR",
        "requests": str(REQUESTS),
        "prompt_tokens": str(prompt_total),
        "completion_tokens": str(completion_total),
        "cost": row["cost"],
        "unpriced_requests": "0",
    }
    budget = expect(admin.get(f"/tenants/{tenant['id']}/budget"), 200)
    assert (budget["spent"], budget["remaining"]) == (
        row["cost"],
        f"0.{BUDGET_MICROS - spent_micros:06d}".rstrip("0"),
    )

    # Finance reads usage, prices and budgets, and may write nothing; tenant keys are 401.
    finance = expect(admin.post("/admin-tokens", json={"name": "fin", "role": "finance"}), 201)
    check_finance(gateway, finance["token"], tenant["id"], issued["id"], finance["id"], row)
    for path in ("/tenants", "/usage", f"/tenants/{tenant['id']}/budget", "/openapi.json"):
        refused = expect(gateway.admin(issued["key"]).get(path), 401)
        assert refused["error"]["code"] == "invalid_api_key"

    # Rotation: the old key works for the grace, then stops; the new key works.
    rotated_at = time.monotonic()
    new = expect(admin.post(f"/keys/{issued['id']}/rotate", json={"grace_seconds": GRACE_S}), 201)
    assert new["key"] != issued["key"] and new["name"] == "ci"
    expect(gateway.chat(issued["key"]), 200)
    expect(gateway.chat(new["key"]), 200)
    expect(gateway.models(issued["key"]), 200)
    seconds_until(lambda: gateway.models(issued["key"]).status_code == 401, timeout_s=GRACE_S + 2)
    stopped_after_s = time.monotonic() - rotated_at
    assert GRACE_S - 0.5 <= stopped_after_s <= GRACE_S + 1, stopped_after_s
    assert "expired" in gateway.chat(issued["key"]).json()["error"]["message"]
    assert expect(admin.get(f"/keys/{issued['id']}"), 200)["status"] == "expired"
    expect(gateway.models(new["key"]), 200)

    # Revocation: refused within a second (the auth cache alone would take 60 s).
    expect(admin.delete(f"/keys/{new['id']}"), 204)
    revoked_after_s = seconds_until(
        lambda: gateway.models(new["key"]).status_code == 401, timeout_s=5
    )
    assert revoked_after_s <= 1.0, revoked_after_s
    refused = expect(gateway.chat(new["key"]), 401)
    assert refused["error"]["message"] == "This API key has been revoked."

    # The audit log: every step, oldest first, with its actor and before/after.
    entries = expect(admin.get("/audit", params={"limit": 500}), 200)["data"]
    assert [e["action"] for e in entries] == [
        "price.create",
        "tenant.create",
        "key.create",
        "limits.replace",
        "budget.set",
        "admin_token.create",
        "key.rotate",
        "key.revoke",
    ]
    assert {e["actor"] for e in entries} == {actor}
    steps = {e["action"]: e for e in entries}
    assert steps["price.create"]["after"]["input_per_mtok"] == "1"
    assert steps["tenant.create"]["before"] is None
    assert steps["tenant.create"]["after"]["name"] == name
    assert steps["key.create"]["after"]["id"] == issued["id"]
    assert "key" not in steps["key.create"]["after"]  # the secret is never audited
    assert steps["limits.replace"]["before"]["rpm"] is None
    after_limits = steps["limits.replace"]["after"]
    assert (after_limits["rpm"], after_limits["tpm"]) == (RPM, TPM)
    assert steps["budget.set"]["before"] is None
    assert steps["budget.set"]["after"]["amount"] == "1"
    assert steps["admin_token.create"]["after"]["role"] == "finance"
    rotation = steps["key.rotate"]
    assert rotation["resource_id"] == issued["id"]
    assert (rotation["before"]["status"], rotation["before"]["expires_at"]) == ("active", None)
    assert rotation["after"]["old"]["expires_at"] is not None
    assert rotation["after"]["new"]["id"] == new["id"] and "key" not in rotation["after"]["new"]
    revocation = steps["key.revoke"]
    assert revocation["resource_id"] == new["id"]
    assert (revocation["before"]["status"], revocation["after"]["status"]) == ("active", "revoked")
    global_actions = ("price.create", "admin_token.create")  # not about one tenant
    tenant_ids = {e["tenant_id"] for e in entries if e["action"] not in global_actions}
    assert tenant_ids == {tenant["id"]}


def check_finance(
    gateway: Gateway, token: str, tenant_id: str, key_id: str, token_id: str, row: dict
) -> None:
    """Reads of usage, prices and budgets succeed; every write is 403 and changes nothing."""
    free = {"model": MODEL, "input_per_mtok": "0"}
    finance = gateway.admin(token)
    usage = expect(finance.get("/usage", params={"tenant_id": tenant_id, "group_by": "model"}), 200)
    assert usage["data"] == [row]
    as_csv = finance.get("/usage", params={"tenant_id": tenant_id}, headers={"accept": "text/csv"})
    assert as_csv.status_code == 200 and as_csv.text.startswith("tenant_id,day,currency,")
    assert [p["model"] for p in expect(finance.get("/prices"), 200)["data"]] == [MODEL]
    assert expect(finance.get(f"/tenants/{tenant_id}/budget"), 200)["spent"] == row["cost"]
    writes = [
        ("POST", "/tenants", {"name": "nope"}),
        ("PATCH", f"/tenants/{tenant_id}", {"status": "suspended"}),
        ("DELETE", f"/tenants/{tenant_id}", None),
        ("POST", f"/tenants/{tenant_id}/keys", {}),
        ("POST", f"/keys/{key_id}/rotate", {}),
        ("DELETE", f"/keys/{key_id}", None),
        ("PUT", f"/tenants/{tenant_id}/limits", {"rpm": 1}),
        ("PUT", f"/tenants/{tenant_id}/budget", {"amount": "1000"}),
        ("DELETE", f"/tenants/{tenant_id}/budget", None),
        ("POST", "/prices", {**free, "effective_from": "2021-01-01T00:00:00Z"}),
        ("POST", "/admin-tokens", {"name": "escalate", "role": "admin"}),
        ("DELETE", f"/admin-tokens/{token_id}", None),
    ]
    for method, path, body in writes:
        refused = expect(finance.request(method, path, json=body), 403)
        assert refused["error"]["type"] == "permission_error", (method, path)
    for path in ("/audit", "/admin-tokens", f"/tenants/{tenant_id}/keys"):  # admin-only reads
        expect(finance.get(path), 403)
    audit = expect(gateway.admin().get("/audit", params={"limit": 500}), 200)["data"]
    assert all(entry["actor"] == "bootstrap (bootstrap)" for entry in audit)
