"""Upstream targets come only from operator config (OWASP API7 SSRF, RELIABILITY I8/R30/R33).

Three simulators on real ports: `one` (vLLM style) and `two` (Mistral style) are deployments,
each with its own provider key (`api_key_env`); `canary` is no deployment at all, so any
request it logs is a request the gateway should never have sent. The simulators log every
request with its headers, which is the oracle here:
- each deployment sees only its own `Authorization`, never the tenant's `gwk_` key, and never
  the client's headers (`Host`, `X-Forwarded-Host`, `x-gateway-deployment`, ...);
- body fields (`base_url`, `api_base`, `url`, `deployment`, `api_key`) and headers cannot move
  a request to another deployment or to the canary;
- an upstream that answers 3xx with a `Location` at the canary is not followed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.upstream.simulated import credential_fingerprint
from tests.e2e.routing_stack import CHAT_PATH, SMALL, chat_body, launch_simulators
from tests.e2e.stack import base_env, cli, create_tenant, gateway_server, wait_for_port
from tests.e2e.test_errors import assert_error

KEYS = {"one": "sk-one-provider-key", "two": "sk-two-provider-key"}
MODELS = {"one": "egress-one", "two": "egress-two"}


def own_credential(deployment: str) -> str | None:
    """The fingerprint of the `Authorization` a deployment's provider key makes."""
    return credential_fingerprint(f"Bearer {KEYS[deployment]}")


@dataclass(frozen=True)
class Egress:
    base_url: str
    key: str
    sims: dict[str, str]  # one, two, canary -> base URL

    def chat(self, model: str, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        body = chat_body(model) | kwargs.pop("extra", {})
        return httpx.post(f"{self.base_url}{CHAT_PATH}", json=body, headers=headers, timeout=20)

    def log(self, sim: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.sims[sim]}/_sim/requests", timeout=5).json()

    def reset(self) -> None:
        for url in self.sims.values():
            httpx.post(f"{url}/_sim/reset", timeout=5).raise_for_status()


def _routing(path: Path, sims: dict[str, str]) -> Path:
    def deployment(name: str, provider: str) -> dict[str, Any]:
        return {
            "name": name,
            "provider": provider,
            "base_url": f"{sims[name]}/v1",
            "region": "eu-west",
            "jurisdiction": "eu",
            "api_key_env": f"EGRESS_KEY_{name.upper()}",
            "models": {MODELS[name]: SMALL},
        }

    document = {
        "routing": {"retries": {"max_attempts": 1}},
        "deployments": [deployment("one", "vllm"), deployment("two", "mistral")],
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def egress(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Egress]:
    tmp = tmp_path_factory.mktemp("egress")
    env = base_env() | {
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'gateway.db'}",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **{f"EGRESS_KEY_{name.upper()}": key for name, key in KEYS.items()},
    }
    styles = {
        "one": ("--style", "vllm"),
        "two": ("--style", "mistral"),
        "canary": ("--style", "vllm"),
    }
    with ExitStack() as stack:
        launched = launch_simulators(stack, tmp, env, styles)
        cli(env, "migrate")  # while the simulators boot
        _, key = create_tenant(env, "egress", "--residency", "eu")
        for port, proc in launched.values():
            wait_for_port(port, timeout_s=60, process=proc)
        sims = {name: f"http://127.0.0.1:{port}" for name, (port, _) in launched.items()}
        env["GATEWAY_CONFIG"] = str(_routing(tmp / "routing.yaml", sims))
        with gateway_server(env, tmp / "gateway.log") as base_url:
            yield Egress(base_url, key, sims)


@pytest.fixture
def gw(egress: Egress) -> Egress:
    egress.reset()
    return egress


CLIENT_HEADERS = {
    "x-gateway-deployment": "two",
    "x-forwarded-host": "127.0.0.1",
    "x-forwarded-for": "169.254.169.254",
    "forwarded": "host=127.0.0.1;proto=http",
    "x-sim-status": "500",  # a simulator fault header: reaching the upstream would apply it
    "openai-organization": "org-evil",
}


def _steering(canary: str) -> dict[str, Any]:
    """Body fields other gateways have let a client use to pick the upstream."""
    return {
        "base_url": canary,
        "api_base": f"{canary}/v1",
        "url": f"{canary}{CHAT_PATH}",
        "deployment": "two",
        "api_key": "sk-client-chosen",
        "extra_headers": {"authorization": "Bearer sk-client-chosen"},
    }


def test_each_deployment_sees_only_its_own_credential(gw: Egress) -> None:
    for model in MODELS.values():
        assert gw.chat(model).status_code == 200
        streamed = gw.chat(model, extra={"stream": True})
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
    for name in MODELS:
        log = gw.log(name)
        assert len(log) == 2
        assert {entry["authorization_sha256"] for entry in log} == {own_credential(name)}
        assert gw.key not in json.dumps(log) and "gwk_" not in json.dumps(log)
    assert gw.log("canary") == []


def test_client_fields_and_headers_cannot_steer_a_request(gw: Egress) -> None:
    host = gw.sims["canary"].removeprefix("http://")
    headers = {**CLIENT_HEADERS, "host": host}
    response = gw.chat(MODELS["one"], headers=headers, extra=_steering(gw.sims["canary"]))
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-deployment"] == "one"
    [entry] = gw.log("one")
    received = entry["headers"]
    assert received["host"] == gw.sims["one"].removeprefix("http://")
    assert entry["authorization_sha256"] == own_credential("one")
    assert not set(CLIENT_HEADERS) & set(received), received
    # La Plateforme refuses the unknown fields (422): the request still went to `two` only.
    refused = gw.chat(MODELS["two"], headers=headers, extra=_steering(gw.sims["canary"]))
    assert refused.status_code == 422
    assert [e["authorization_sha256"] for e in gw.log("two")] == [own_credential("two")]
    assert len(gw.log("one")) == 1
    assert gw.log("canary") == []


def test_a_model_name_is_not_a_target(gw: Egress) -> None:
    for model in (gw.sims["canary"], f"{gw.sims['canary']}/v1", "one/../canary", "two"):
        assert_error(gw.chat(model), 404, "model_not_found")
    assert gw.log("one") == gw.log("two") == gw.log("canary") == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed(gw: Egress, status: int) -> None:
    location = f"{gw.sims['canary']}{CHAT_PATH}"
    fault = {"status": status, "location": location}
    httpx.post(f"{gw.sims['one']}/_sim/faults", json=[fault] * 2, timeout=5).raise_for_status()
    plain = gw.chat(MODELS["one"])
    streamed = gw.chat(MODELS["one"], extra={"stream": True})
    assert gw.log("canary") == []  # the target of the redirect received nothing
    for response in (plain, streamed):
        assert "location" not in response.headers  # nor is it handed to the client to follow


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_an_upstream_error_to_the_client(gw: Egress, status: int) -> None:
    fault = {"status": status, "location": f"{gw.sims['canary']}{CHAT_PATH}"}
    httpx.post(f"{gw.sims['one']}/_sim/faults", json=fault, timeout=5).raise_for_status()
    response = gw.chat(MODELS["one"])
    # 502 upstream_redirect when the chat meets the redirect; 503 when the active health probe
    # met it first and took the deployment out: either way an error, never the redirect.
    assert response.status_code in (502, 503), response.text
    error = response.json()["error"]
    assert error["type"] == "api_error"
    assert error["code"] in ("upstream_redirect", "no_deployment_available")
    assert "simulated_redirect" not in response.text  # upstream bodies are not echoed
