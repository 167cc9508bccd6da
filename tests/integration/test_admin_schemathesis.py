"""Schemathesis against the admin API's own OpenAPI document: no 5xx, every response matches it.

The document is fetched from a running gateway (`gateway serve` in production mode: Postgres
and Redis, so the database's own type and encoding rules are in play) and checked against the
OpenAPI 3.1 meta-schema. Then every operation gets generated requests with the bootstrap
admin token, schema-valid ones and schema-violating ones, each checked for: no 5xx, a
documented status, a documented content type, and a body that matches the documented schema.
Path parameters are aimed at seeded resources half of the time (a tenant with a key, limits,
a budget and usage; a finance token; a real month), so generated bodies reach the handlers
and not only their 404 branch; deletions run last, the tenant's very last.

`test_found_edge_cases` replays, by hand, the inputs that used to end in a 500 (a NUL in an
id or a query value, dates whose UTC day or default window leaves years 1-9999, tampered
cursors, months whose bounds leave datetime's range): each must be a documented 4xx.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.admin.api import Operation
from gateway.admin.routes import operations
from tests.e2e.stack import base_env, cli, gateway_server, routing_file, simulator
from tests.services import PostgresServer, RedisServer, free_port, run_prefix

PREFIX = "/admin/v1"
ADMIN_TOKEN = "schemathesis-bootstrap-token"
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
# Per operation: requests the schema allows, and requests it forbids (wrong types, missing
# fields, a missing or mangled token...), which must be documented 4xx, never 5xx.
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 15}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Seeded:
    """A running gateway and the real ids that path parameters are aimed at."""

    base_url: str
    log: Path
    ids: dict[str, str]

    def errors_logged(self) -> str:
        """The gateway's log lines about unhandled errors (the server side of a 5xx)."""
        lines = self.log.read_text().splitlines()
        return "\n".join(line[:2000] for line in lines if '"level":"ERROR"' in line)


def _seed(client: httpx.Client) -> dict[str, str]:
    """A tenant with a key, limits, a budget, a priced model and one request of usage."""

    def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.is_success, response.text
        return response.json() if response.content else {}

    tenant = ok(client.post(f"{PREFIX}/tenants", json={"name": "fuzzed"}))["id"]
    key = ok(client.post(f"{PREFIX}/tenants/{tenant}/keys", json={"name": "fuzz"}))
    ok(client.put(f"{PREFIX}/tenants/{tenant}/limits", json={"rpm": 1000, "tpm": 1_000_000}))
    ok(client.put(f"{PREFIX}/tenants/{tenant}/budget", json={"amount": "50"}))
    price = {"model": "mistral-small-latest", "input_per_mtok": "0.1", "output_per_mtok": "0.3"}
    ok(client.post(f"{PREFIX}/prices", json={**price, "effective_from": "2020-01-01T00:00:00Z"}))
    token = ok(client.post(f"{PREFIX}/admin-tokens", json={"name": "fin", "role": "finance"}))
    chat = client.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key['key']}"},
        json={"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 200, chat.text
    return {"tenant_id": tenant, "key_id": key["id"], "token_id": token["id"], "month": "2025-01"}


@pytest.fixture(scope="module")
def seeded(
    tmp_path_factory: pytest.TempPathFactory, pg_server: PostgresServer, redis_srv: RedisServer
) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    env = base_env()
    database = pg_server.create_database()
    prefix = run_prefix()
    env |= {
        "GATEWAY_DATABASE_URL": pg_server.async_url(database),
        "GATEWAY_REDIS_URL": redis_srv.url,
        "GATEWAY_REDIS_KEY_PREFIX": prefix,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_SPOOL_DIR": str(tmp / "spool"),
    }
    try:
        with simulator("mistral", tmp, env) as mistral, simulator("vllm", tmp, env) as vllm:
            env["GATEWAY_CONFIG"] = str(routing_file(tmp / "r.yaml", mistral, vllm, free_port()))
            cli(env, "migrate")
            log = tmp / "gateway.log"
            with gateway_server(env, log) as base_url:
                with httpx.Client(base_url=base_url, headers=AUTH, timeout=10) as client:
                    ids = _seed(client)
                yield Seeded(base_url, log, ids)
    finally:
        pg_server.drop_database(database)
        redis_srv.delete_prefix(prefix)


@pytest.fixture(scope="module")
def admin_schema(seeded: Seeded) -> Any:
    schema = schemathesis.openapi.from_url(
        f"{seeded.base_url}{PREFIX}/openapi.json", headers=AUTH, timeout=10
    )

    def aim(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        """Half of the generated ids (picked by their own hash, so a replay agrees) become
        the seeded ones."""
        if not path_parameters:
            return path_parameters
        return {
            name: seeded.ids[name]
            if name in seeded.ids and zlib.crc32(str(value).encode()) % 2 == 0
            else value
            for name, value in path_parameters.items()
        }

    schema.hook("map_path_parameters")(aim)
    return schema


def test_document_is_valid_openapi_3_1(admin_schema: Any) -> None:
    admin_schema.validate()  # raises on any violation of the OpenAPI 3.1 meta-schema
    assert admin_schema.raw_schema["openapi"] == "3.1.0"
    paths = admin_schema.raw_schema["paths"]
    documented = {(method.upper(), path) for path in paths for method in paths[path]}
    assert documented == {(op.method, PREFIX + op.path) for op in operations()}


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


TENANT, KEY = "/tenants/{tenant_id}", "/keys/{key_id}"
STATEMENT = "/tenants/{tenant_id}/statements/{month}"
PRICE = {"model": "m", "input_per_mtok": "1", "effective_from": "2024-01-01T00:00:00Z"}
EDGE_CASES = [
    # (name, method, path, path parameters, query, body, status)
    ("nul in a tenant id", "GET", TENANT, {"tenant_id": "a\x00b"}, None, None, 404),
    ("nul in a key id", "DELETE", KEY, {"key_id": "a\x00b"}, None, None, 404),
    ("nul in a query id", "GET", "/usage", None, {"tenant_id": "a\x00b"}, None, 422),
    ("nul in the audit filter", "GET", "/audit", None, {"tenant_id": "\x00"}, None, 422),
    ("default start before year 1", "GET", "/usage", None, {"end": "0001-01-01T00:00:00Z"}, None, 422),
    ("end's day after 9999", "GET", "/usage", None,
     {"start": "9999-12-30T00:00:00Z", "end": "9999-12-31T12:00:00Z"}, None, 422),
    ("start before year 1 in UTC", "GET", "/usage", None,
     {"start": "0001-01-01T00:00:00+01:00"}, None, 422),
    ("nul in a deployment", "POST", "/prices", None, None, {**PRICE, "deployment": "a\x00"}, 422),
    ("effective before year 1 in UTC", "POST", "/prices", None, None,
     {**PRICE, "effective_from": "0001-01-01T00:00:00+01:00"}, 422),
    ("effective after 9999 in UTC", "POST", "/prices", None, None,
     {**PRICE, "effective_from": "9999-12-31T23:00:00-05:00"}, 422),
    ("month 9999-12", "GET", STATEMENT, {"month": "9999-12"}, None, None, 422),
    ("month 0000-01", "GET", STATEMENT, {"month": "0000-01"}, None, None, 422),
    ("text cursor on an integer sort", "GET", "/prices", None, {"cursor": _cursor(["a", 1])}, None, 422),
    ("object in a cursor", "GET", "/audit", None, {"cursor": _cursor([1, {"a": 1}])}, None, 422),
    ("integer cursor past 32 bits", "GET", "/audit", None, {"cursor": _cursor([2**40, 1])}, None, 422),
    ("naive time in a cursor", "GET", "/tenants", None,
     {"cursor": _cursor(["2024-01-01T00:00:00", "x"])}, None, 422),
    ("nul id in a cursor", "GET", "/admin-tokens", None,
     {"cursor": _cursor(["2024-01-01T00:00:00+00:00", "\x00"])}, None, 422),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "path_parameters", "query", "body", "status"),
    [case[1:] for case in EDGE_CASES],
    ids=[case[0] for case in EDGE_CASES],
)
def test_found_edge_cases(
    admin_schema: Any,
    seeded: Seeded,
    method: str,
    path: str,
    path_parameters: dict[str, str] | None,
    query: dict[str, str] | None,
    body: dict[str, Any] | None,
    status: int,
) -> None:
    operation = admin_schema[PREFIX + path][method]
    named = {name: value for name, value in seeded.ids.items() if f"{{{name}}}" in path}
    parameters = named | (path_parameters or {})
    case = operation.Case(
        path_parameters=parameters or None,
        query=query,
        **({"body": body, "media_type": "application/json"} if body is not None else {}),
    )
    response = case.call_and_validate(
        base_url=seeded.base_url, headers=AUTH, checks=CHECKS, timeout=10
    )
    assert response.status_code == status, response.text


def _run_order(op: Operation) -> tuple[bool, bool]:
    """Deletions after everything else, and the seeded tenant's deletion (keys, limits and
    budget go with it) last of all."""
    return op.method == "DELETE", (op.method, op.path) == ("DELETE", "/tenants/{tenant_id}")


ORDERED = [(op.method, PREFIX + op.path) for op in sorted(operations(), key=_run_order)]


@pytest.mark.parametrize(("method", "path"), ORDERED, ids=[f"{m} {p}" for m, p in ORDERED])
def test_every_operation_conforms(
    admin_schema: Any, seeded: Seeded, method: str, path: str
) -> None:
    operation = admin_schema[path][method]
    for mode, examples in EXAMPLES.items():

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=examples,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same requests every run: a failure is a real regression
        )
        def conforms(case: Any) -> None:
            case.call_and_validate(
                base_url=seeded.base_url, headers=AUTH, checks=CHECKS, timeout=10
            )

        try:
            conforms()
        except Exception:
            print(seeded.errors_logged())
            raise
