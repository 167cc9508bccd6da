"""The gateway as a real server, in both modes: embedded (SQLite, in-process backends) and
production (its own Postgres database and Redis key prefix)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.ledger_stack import sim_server
from tests.e2e.stack import (
    Stack,
    base_env,
    cli,
    create_tenant,
    gateway_server,
    routing_file,
    simulator,
)
from tests.services import PostgresServer, RedisServer, free_port, run_prefix

MAX_BODY_BYTES = 1024 * 1024


@pytest.fixture(scope="session", params=["embedded", "production"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pg_server: PostgresServer,
    redis_srv: RedisServer,
) -> Iterator[Stack]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"stack-{mode}")
    env = base_env()
    database = None
    prefix = run_prefix()
    if mode == "embedded":
        env["GATEWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / 'gateway.db'}"
    else:
        database = pg_server.create_database()
        env["GATEWAY_DATABASE_URL"] = pg_server.async_url(database)
        env["GATEWAY_REDIS_URL"] = redis_srv.url
        env["GATEWAY_REDIS_KEY_PREFIX"] = prefix
    env["GATEWAY_MAX_BODY_BYTES"] = str(MAX_BODY_BYTES)
    env["GATEWAY_AUTH_CACHE_TTL_S"] = "0.2"
    try:
        with simulator("mistral", tmp, env) as mistral_url, simulator("vllm", tmp, env) as vllm_url:
            config = routing_file(tmp / "routing.yaml", mistral_url, vllm_url, free_port())
            env["GATEWAY_CONFIG"] = str(config)
            cli(env, "migrate")
            tenant_id, key = create_tenant(env, "acme", "--residency", "eu")
            log = tmp / "gateway.log"
            with gateway_server(env, log) as base_url:
                yield Stack(
                    mode=mode,
                    base_url=base_url,
                    key=key,
                    tenant_id=tenant_id,
                    env=env,
                    upstreams={"sim-plateforme": mistral_url, "sim-vllm": vllm_url},
                    log=log,
                )
    finally:
        if database is not None:
            pg_server.drop_database(database)
        redis_srv.delete_prefix(prefix)


@pytest.fixture
def gw(stack: Stack) -> Stack:
    """The stack with its simulators' logs and fault queues cleared for this test."""
    stack.reset_sims()
    return stack


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulated upstream per module (ledger and chaos tests): 12 output tokens, 5 ms
    apart."""
    tmp = tmp_path_factory.mktemp("ledger-sim")
    with sim_server(tmp, base_env(), token_delay_ms=5, output_tokens=12) as url:
        yield url


@pytest.fixture
def upstream(sim: str) -> str:
    """The simulator with its request log and fault queue cleared for this test."""
    httpx.post(f"{sim}/_sim/reset", timeout=5).raise_for_status()
    return sim
