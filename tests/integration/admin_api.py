"""The real gateway app in process, for the admin API tests (`test_admin_*.py`).

`admin_api` migrates a SQLite file, runs `create_app` with the demo routing file (its
simulator stands in as the transport instead of a process on a port) and a bootstrap admin
token, then issues a finance token and a tenant key through the API itself. Each test module
shares one app (startup dominates) and makes its own tenants, so tests stay independent.
`AdminApi.run` runs a coroutine on the app's event loop, with the app's own database engine.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from starlette.testclient import TestClient

from gateway.admin.api import AdminServices
from gateway.app import create_app
from gateway.config import load_config
from gateway.db.migrate import upgrade
from gateway.db.usage import insert_usage
from gateway.ledger.record import UsageRecord
from gateway.settings import DEMO_CONFIG_PATH, Settings
from gateway.upstream.simulated import SimulatorOptions, create_simulator_app

ADMIN_TOKEN = "test-bootstrap-admin-token"
PEPPER = "test-pepper"
PREFIX = "/admin/v1"

T = TypeVar("T")


@dataclass
class AdminApi:
    """A client for `/admin/v1`, with a token of each kind."""

    client: TestClient
    finance: str = ""  # a `finance` admin token
    tenant_key: str = ""  # a tenant API key (gwk_...)
    key_tenant: str = ""  # the id of the tenant that owns `tenant_key`

    @property
    def services(self) -> AdminServices:
        return self.client.app.state.admin  # type: ignore[attr-defined]

    def request(
        self, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any
    ) -> httpx.Response:
        """`path` is relative to `/admin/v1`; `token=None` sends no Authorization header."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return self.client.request(method, PREFIX + path, headers=headers, **kwargs)

    def request_from(
        self, address: str, method: str, path: str, *, token: str | None = ADMIN_TOKEN
    ) -> httpx.Response:
        """Like `request`, from another client address (the app sees `address` as its peer)."""
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=self.client.app, client=(address, 40000))

        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
                return await client.request(method, PREFIX + path, headers=headers)

        return self.run(send)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def new_tenant(self) -> str:
        """A fresh tenant's id."""
        response = self.post("/tenants", json={"name": f"t-{uuid.uuid4().hex[:12]}"})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def audit(self, tenant_id: str | None = None) -> list[dict[str, Any]]:
        """Every audit entry (of one tenant), oldest first."""
        entries: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 500}
        if tenant_id is not None:
            params["tenant_id"] = tenant_id
        while True:
            page = self.get("/audit", params=params)
            assert page.status_code == 200, page.text
            entries += page.json()["data"]
            if page.json()["next_cursor"] is None:
                return entries
            params["cursor"] = page.json()["next_cursor"]

    def run(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `function(*args)` on the app's event loop."""
        portal = self.client.portal
        assert portal is not None, "only inside the running app"
        return portal.call(function, *args)

    def record_usage(self, *records: UsageRecord) -> None:
        """Write usage records to the ledger (events and daily rollup), as the writer would."""

        async def write() -> None:
            async with self.services.sessions() as session, session.begin():
                await insert_usage(session, list(records))

        self.run(write)


def usage_record(
    tenant_id: str,
    started_at: datetime,
    *,
    model: str = "mistral-small-latest",
    deployment: str | None = "simulator",
    prompt_tokens: int = 10,
    completion_tokens: int = 5,
    cost_micros: int | None = 100,
    currency: str | None = "EUR",
) -> UsageRecord:
    """One ledger record; `cost_micros=None` makes it unpriced."""
    at_ms = int(started_at.timestamp() * 1000)
    return UsageRecord(
        request_id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        key_id="key",
        endpoint="chat",
        model=model,
        upstream_model=model,
        deployment=deployment,
        region="eu-west",
        stream=False,
        status=200,
        error_code=None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        token_source="provider",
        cost_micros=cost_micros,
        currency=currency if cost_micros is not None else None,
        unpriced=cost_micros is None,
        price_version_id=None,
        attempts=1,
        residency="any",
        jurisdictions="eu",
        route={},
        upstream_id=None,
        gateway_latency_ms=5,
        upstream_latency_ms=4,
        ttft_ms=None,
        started_at_ms=at_ms,
        finished_at_ms=at_ms + 5,
    )


@contextmanager
def admin_api(tmp_path: Path) -> Iterator[AdminApi]:
    """The running app and a client with an admin, a finance and a tenant token."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    settings = Settings(
        database_url=url, key_pepper=PEPPER, admin_token=ADMIN_TOKEN, spool_dir=tmp_path / "spool"
    )
    config = load_config(DEMO_CONFIG_PATH).model_copy(update={"simulator": None})
    transport = httpx.ASGITransport(app=create_simulator_app(SimulatorOptions()))
    app = create_app(settings, config, transport=transport)
    with TestClient(app) as client:
        api = AdminApi(client)
        created = api.post("/admin-tokens", json={"name": "finance", "role": "finance"})
        assert created.status_code == 201, created.text
        api.finance = created.json()["token"]
        api.key_tenant = api.new_tenant()
        key = api.post(f"/tenants/{api.key_tenant}/keys", json={})
        assert key.status_code == 201, key.text
        api.tenant_key = key.json()["key"]
        yield api
