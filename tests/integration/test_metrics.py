"""`/metrics` after a scripted mix of traffic shows the right counts per label, and
`/readyz` follows the failure policy. The registry is process-wide, so the test compares a
scrape before the traffic with one after it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import parse_config
from gateway.db.migrate import upgrade
from gateway.settings import Settings
from gateway.upstream.simulated import SimulatorOptions, create_simulator_app, parse_faults
from tests.integration.test_ledger import CHAT, PEPPER, _config, _seed

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, str, str, object]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    upgrade(url)
    tenant_id, key = asyncio.run(_seed(url))
    settings = Settings(database_url=url, key_pepper=PEPPER.decode(), spool_dir=tmp_path / "sp")
    simulator = create_simulator_app(SimulatorOptions(output_tokens=5))
    app = create_app(
        settings, parse_config(_config(tmp_path)), transport=httpx.ASGITransport(app=simulator)
    )
    with TestClient(app) as client:
        yield client, tenant_id, key, simulator


def test_counts_per_label_after_a_scripted_mix(app_client) -> None:
    client, tenant, key, simulator = app_client
    headers = {"authorization": f"Bearer {key}"}
    before = scrape(client)
    body = {"model": "mistral-small-latest", "messages": CHAT, "max_tokens": 5}
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for _ in range(3):
        response = client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200
        for name in usage:
            usage[name] += response.json()["usage"][name]
    streamed = client.post("/v1/chat/completions", json=body | {"stream": True}, headers=headers)
    assert streamed.status_code == 200
    simulator.state.simulator.state.faults.extend(parse_faults([{"status": 503}]))
    failed = client.post("/v1/chat/completions", json=body, headers=headers)
    assert failed.status_code == 503
    embed = client.post(
        "/v1/embeddings", json={"model": "mistral-embed", "input": "hello"}, headers=headers
    )
    assert embed.status_code == 200
    after = scrape(client)

    requests = "gateway_requests_total"
    small = {"tenant": tenant, "model": "mistral-small-latest", "deployment": "sim"}
    assert delta(before, after, requests, **small, status="200") == 4
    assert delta(before, after, requests, **small, status="503") == 1
    embed_labels = {"tenant": tenant, "model": "mistral-embed", "deployment": "sim"}
    assert delta(before, after, requests, **embed_labels, status="200") == 1
    tokens = "gateway_tokens_total"
    prompt = delta(
        before, after, tokens, tenant=tenant, model="mistral-small-latest", direction="prompt"
    )
    assert prompt >= usage["prompt_tokens"]  # plus the streamed request's
    completion = delta(
        before, after, tokens, tenant=tenant, model="mistral-small-latest", direction="completion"
    )
    assert completion == usage["completion_tokens"] + 5  # the stream's 5 tokens
    assert (
        delta(
            before,
            after,
            "gateway_upstream_attempts_total",
            deployment="sim",
            reason="balanced",
            outcome="503",
        )
        == 1
    )
    assert delta(before, after, "gateway_ttft_seconds_count", model="mistral-small-latest") == 1
    assert delta(before, after, "gateway_overhead_seconds_count") == 6
    cost = delta(
        before,
        after,
        "gateway_cost_micros_total",
        tenant=tenant,
        model="mistral-small-latest",
        currency="EUR",
    )
    assert cost > 0
    available = after[
        ("gateway_deployment_available", (("deployment", "sim"), ("state", "closed")))
    ]
    assert available == 1.0
    text = client.get("/metrics").text
    assert key not in text and "request_id" not in text  # bounded labels, no key material


def test_readyz_is_ready_in_embedded_mode(app_client) -> None:
    client, *_ = app_client
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "degraded": False,
        "checks": {"config": True, "database": True, "redis": None},
    }
    assert client.get("/healthz").text == "ok"
