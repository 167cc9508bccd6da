"""Active health checks in one process: the real app and prober, simulated vLLM upstreams
behind an httpx transport that a test can switch off path by path."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from gateway.config import parse_config
from gateway.routing.probes import parse_vllm_load
from gateway.upstream.simulated import SimulatorOptions, create_simulator_app
from tests.integration.running_app import running_gateway, wait_until

FAST = {"interval_s": 0.05, "timeout_s": 1.0}


class Switchboard(httpx.AsyncBaseTransport):
    """One simulator app per host; (host, path) pairs in `down` answer 503 instead."""

    def __init__(self, hosts: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.hosts = hosts
        self.down: set[tuple[str, str]] = set()
        self.seen: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if (request.url.host, request.url.path) in self.down:
            return httpx.Response(503, json={"detail": "switched off by the test"})
        return await self.hosts[request.url.host].handle_async_request(request)

    def probed(self, host: str) -> list[str]:
        return [r.url.path for r in self.seen if r.url.host == host and r.method == "GET"]


def vllm(name: str, **health: object) -> dict:
    return {
        "name": name,
        "provider": "vllm",
        "base_url": f"http://{name}.sim/v1",
        "region": "eu-west",
        "jurisdiction": "eu",
        "models": {"open-small": "mistral-small-latest"},
        "health": {**FAST, **health},
    }


def config(*deployments: dict) -> object:
    return parse_config(
        {
            "deployments": list(deployments),
            # only the active checks may take a deployment out in these tests
            "routing": {"ejection": {"consecutive_failures": 1000}},
        }
    )


def simulators(*names: str) -> dict[str, httpx.AsyncBaseTransport]:
    return {
        f"{name}.sim": httpx.ASGITransport(app=create_simulator_app(SimulatorOptions(style="vllm")))
        for name in names
    }


async def test_a_deployment_failing_checks_gets_no_traffic_until_it_passes_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.routing.probes")
    switch = Switchboard(simulators("v1", "v2"))
    async with running_gateway(tmp_path, config(vllm("v1"), vllm("v2")), switch) as gw:
        board = gw.gw.attempter.board
        await wait_until(lambda: len(switch.probed("v2.sim")) >= 2)
        assert board["v2"].active_ok

        switch.down.add(("v2.sim", "/health"))
        await wait_until(lambda: not board["v2"].active_ok)
        for _ in range(6):
            reply = await gw.chat("open-small")
            assert reply.status == 200
            assert reply.headers["x-gateway-deployment"] == "v1"
            await reply.body()

        switch.down.clear()
        await wait_until(lambda: board["v2"].active_ok)
        served = []
        for _ in range(4):
            reply = await gw.chat("open-small")
            assert reply.status == 200
            served.append(reply.headers["x-gateway-deployment"])
            await reply.body()
        assert "v2" in served
        await asyncio.sleep(0.2)  # more passing checks: nothing more to log

    # vLLM serves /health at the server root, not under /v1
    assert set(switch.probed("v2.sim")) == {"/health"}
    messages = [r.getMessage() for r in caplog.records]
    down = [m for m in messages if "v2 failed 2 health checks" in m]
    assert len(down) == 1, messages
    assert "answered 503" in down[0]
    assert sum("v2 passes its health check again" in m for m in messages) == 1
    assert not any("v1" in m for m in messages)


async def test_every_deployment_down_is_a_clear_503(tmp_path: Path) -> None:
    switch = Switchboard(simulators("v1"))
    switch.down.add(("v1.sim", "/health"))
    async with running_gateway(tmp_path, config(vllm("v1")), switch) as gw:
        await wait_until(lambda: not gw.gw.attempter.board["v1"].active_ok)
        reply = await gw.chat("open-small")
        assert reply.status == 503
        assert (await reply.json())["error"]["code"] == "no_deployment_available"
    assert not any(r.method == "POST" for r in switch.seen)


async def test_load_is_scraped_from_vllm_metrics_and_zero_when_the_scrape_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.routing.probes")
    switch = Switchboard(simulators("v1"))
    direct = httpx.AsyncClient(transport=switch.hosts["v1.sim"], base_url="http://v1.sim")

    async def slow_request() -> None:
        body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "x"}]}
        # 16 output tokens, 60 ms apart: each request is in flight for about a second
        response = await direct.post(
            "/v1/chat/completions", json=body, headers={"x-sim-token-delay-ms": "60"}
        )
        assert response.status_code == 200

    deployment = vllm("v1", scrape_load=True)
    async with running_gateway(tmp_path, config(deployment), switch) as gw:
        health = gw.gw.attempter.board["v1"]
        busy = [asyncio.create_task(slow_request()) for _ in range(2)]
        await wait_until(lambda: health.load_running == 2)
        assert health.load_waiting == 0
        await asyncio.gather(*busy)
        await wait_until(lambda: health.load_running == 0)

        busy = [asyncio.create_task(slow_request()) for _ in range(3)]
        await wait_until(lambda: health.load_running == 3)
        switch.down.add(("v1.sim", "/metrics"))
        await wait_until(lambda: health.load_running == 0)  # unknown load counts as 0 ...
        assert not all(task.done() for task in busy)  # ... though the requests still run
        assert health.active_ok  # a failed scrape is not a failed health check
        await asyncio.gather(*busy)
        switch.down.clear()
        await asyncio.sleep(0.2)
    await direct.aclose()

    assert {"/health", "/metrics"} <= set(switch.probed("v1.sim"))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("load scrape of http://v1.sim/metrics failed" in m for m in messages) == 1
    assert sum("load scrape of http://v1.sim/metrics works again" in m for m in messages) == 1


async def test_la_plateforme_is_checked_with_its_own_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PROBE_TEST_KEY", "sk-probe-test")
    seen: list[httpx.Request] = []
    status = {"code": 200}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status["code"], json={"object": "list", "data": []})

    plateforme = {
        "name": "plat",
        "provider": "mistral",
        "base_url": "https://plat.test/v1",
        "api_key_env": "PROBE_TEST_KEY",
        "region": "eu-west",
        "jurisdiction": "eu",
        "models": {"mistral-small-latest": "mistral-small-latest"},
        "health": FAST,
    }
    async with running_gateway(tmp_path, config(plateforme), httpx.MockTransport(handler)) as gw:
        await wait_until(lambda: len(seen) >= 1)
        status["code"] = 401  # the key was revoked: every request would fail the same way
        await wait_until(lambda: not gw.gw.attempter.board["plat"].active_ok)

    assert {(r.method, r.url.path) for r in seen} == {("GET", "/v1/models")}
    assert {r.headers["authorization"] for r in seen} == {"Bearer sk-probe-test"}
    assert any("plat failed 2 health checks" in r.getMessage() for r in caplog.records)


def test_vllm_load_sums_engines_and_ignores_look_alikes() -> None:
    page = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
            'vllm:num_requests_running{engine="1",model_name="m"} 2.0',
            "# TYPE vllm:num_requests_waiting gauge",
            'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
            'vllm:num_requests_waiting{engine="1",model_name="m"} 0.0',
            "# TYPE vllm:num_requests_waiting_by_reason gauge",
            'vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 1.0',
            "# TYPE vllm:e2e_request_latency_seconds histogram",
            'vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="m"} 4.0',
            'vllm:e2e_request_latency_seconds_count{model_name="m"} 9.0',
            "",
        ]
    )
    assert parse_vllm_load(page) == (5, 1)
    with pytest.raises(ValueError, match="no vllm"):
        parse_vllm_load("# nothing here\nprocess_cpu_seconds_total 1.0\n")
