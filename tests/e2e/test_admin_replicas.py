"""Two gateway replicas: a change made through one replica's admin API is enforced by the other
within a second.

Two `gateway serve` processes share Postgres and Redis (production mode) with an auth cache TTL
of 60 s, so only the Redis pub/sub invalidation (`gateway/admin/invalidation.py`) can explain a
change reaching replica B that fast. Each test warms B's cache with a request first, changes
the tenant through replica A, then polls B. The control test makes the same kind of change
straight in the database (no publish): B keeps serving from its cache well past a second.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.stack import base_env, cli, gateway_server, routing_file, simulator
from tests.services import PostgresServer, RedisServer, free_port, run_prefix

ADMIN_TOKEN = "replicas-bootstrap-token"
ADMIN = "/admin/v1"
PROPAGATION_S = 1.0
CACHE_TTL_S = 60


@dataclass
class Replicas:
    a: str
    b: str
    dsn: str  # the shared database, for the control test

    def admin_a(self) -> httpx.Client:
        """The admin API of replica A."""
        headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.Client(base_url=self.a + ADMIN, headers=headers, timeout=10)

    def new_key(self, **limits: int) -> tuple[str, str, str]:
        """A fresh tenant (with `limits`, if any) and key, made through A: (tenant, key id, key)."""
        with self.admin_a() as admin:
            tenant = expect(admin.post("/tenants", json={"name": uuid.uuid4().hex}), 201)["id"]
            if limits:
                expect(admin.put(f"/tenants/{tenant}/limits", json=limits), 200)
            key = expect(admin.post(f"/tenants/{tenant}/keys", json={}), 201)
        return tenant, key["id"], key["key"]


def chat(base_url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


def models(base_url: str, key: str) -> httpx.Response:
    return httpx.get(
        f"{base_url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, f"{response.request.url}: {response.text}"
    return response.json() if response.content else None


def seconds_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """How long `condition` took to hold, polled every 10 ms; fails after `timeout_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer, redis_srv: RedisServer
) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    env = base_env()
    database, prefix = pg_server.create_database(), run_prefix()
    env |= {
        "GATEWAY_DATABASE_URL": pg_server.async_url(database),
        "GATEWAY_REDIS_URL": redis_srv.url,
        "GATEWAY_REDIS_KEY_PREFIX": prefix,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_AUTH_CACHE_TTL_S": str(CACHE_TTL_S),
        "GATEWAY_REPLICAS": "2",
    }
    try:
        with ExitStack() as stack:
            mistral = stack.enter_context(simulator("mistral", tmp, env))
            vllm = stack.enter_context(simulator("vllm", tmp, env))
            env["GATEWAY_CONFIG"] = str(routing_file(tmp / "r.yaml", mistral, vllm, free_port()))
            cli(env, "migrate")
            urls = [
                stack.enter_context(
                    gateway_server(
                        env | {"GATEWAY_SPOOL_DIR": str(tmp / name)}, tmp / f"{name}.log"
                    )
                )
                for name in ("a", "b")
            ]
            yield Replicas(urls[0], urls[1], pg_server.dsn(database))
    finally:
        pg_server.drop_database(database)
        redis_srv.delete_prefix(prefix)


def test_a_key_revoked_through_a_is_refused_by_b(replicas: Replicas) -> None:
    _, key_id, key = replicas.new_key()
    expect(chat(replicas.b, key), 200)  # B now holds the key in its cache (for 60 s)
    with replicas.admin_a() as admin:
        expect(admin.delete(f"/keys/{key_id}"), 204)
    took_s = seconds_until(lambda: models(replicas.b, key).status_code == 401)
    assert took_s <= PROPAGATION_S, took_s
    refused = expect(chat(replicas.b, key), 401)
    assert refused["error"]["message"] == "This API key has been revoked."


def test_a_tenant_suspended_through_a_is_refused_by_b(replicas: Replicas) -> None:
    tenant, _, key = replicas.new_key()
    expect(chat(replicas.b, key), 200)
    with replicas.admin_a() as admin:
        expect(admin.patch(f"/tenants/{tenant}", json={"status": "suspended"}), 200)
        took_s = seconds_until(lambda: models(replicas.b, key).status_code == 401)
        assert took_s <= PROPAGATION_S, took_s
        assert expect(chat(replicas.b, key), 401)["error"]["message"] == "This tenant is suspended."
        expect(admin.patch(f"/tenants/{tenant}", json={"status": "active"}), 200)
        back_s = seconds_until(lambda: models(replicas.b, key).status_code == 200)
        assert back_s <= PROPAGATION_S, back_s


def test_a_limit_changed_through_a_applies_on_b(replicas: Replicas) -> None:
    tenant, _, key = replicas.new_key(rpm=100)
    assert chat(replicas.b, key).headers["x-ratelimit-limit-requests"] == "100"
    with replicas.admin_a() as admin:
        expect(admin.put(f"/tenants/{tenant}/limits", json={"rpm": 7}), 200)

    def seven() -> bool:  # a 429 carries the headers too
        return chat(replicas.b, key).headers.get("x-ratelimit-limit-requests") == "7"

    took_s = seconds_until(seven)
    assert took_s <= PROPAGATION_S, took_s


def test_control_a_change_without_the_admin_api_waits_for_the_ttl(replicas: Replicas) -> None:
    """The same revocation written straight to the database publishes nothing: B keeps
    serving the key from its cache, so the tests above measure the invalidation, not the TTL."""
    _, key_id, key = replicas.new_key()
    expect(models(replicas.b, key), 200)
    with psycopg.connect(replicas.dsn, autocommit=True) as db:
        db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (key_id,))
    deadline = time.monotonic() + 3 * PROPAGATION_S
    while time.monotonic() < deadline:
        expect(models(replicas.b, key), 200)
        time.sleep(0.05)
    expect(models(replicas.a, key), 401)  # A never cached it: it reads the database
