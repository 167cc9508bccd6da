"""Config reload of a running `gateway serve`: edit the routing file, send SIGHUP, and the new
model is served while streams that started before the reload run to their end."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx
import yaml

from tests.e2e.stack import base_env, cli, create_tenant, gateway_process, simulator

SMALL, CODESTRAL = "mistral-small-latest", "codestral-latest"


def write_routing(path: Path, sim_url: str, *models: str) -> Path:
    config = {
        "deployments": [
            {
                "name": "sim",
                "provider": "mistral",
                "base_url": f"{sim_url}/v1",
                "region": "eu-west",
                "jurisdiction": "eu",
                "models": {m: m for m in models},
            }
        ]
    }
    scratch = path.with_suffix(".tmp")
    scratch.write_text(yaml.safe_dump(config))
    scratch.replace(path)
    return path


def log_lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


def test_sighup_serves_the_new_model_without_cutting_streams(tmp_path: Path) -> None:
    env = base_env()
    env["GATEWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    with simulator("mistral", tmp_path, env) as sim_url:
        routing = write_routing(tmp_path / "routing.yaml", sim_url, SMALL)
        env["GATEWAY_CONFIG"] = str(routing)
        cli(env, "migrate")
        _, key = create_tenant(env, "reload", "--residency", "eu")
        log = tmp_path / "gateway.log"
        with gateway_process(env, log) as (base_url, proc):
            client = httpx.Client(
                base_url=base_url, headers={"authorization": f"Bearer {key}"}, timeout=30
            )

            def chat(model: str, **extra: object) -> httpx.Response:
                body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
                return client.post("/v1/chat/completions", json=body)

            assert chat(CODESTRAL).status_code == 404

            # two streams of 16 tokens, 150 ms apart: each runs for more than 2 s
            slow = [{"token_delay_ms": 150, "path": "/v1/chat/completions"}] * 2
            httpx.post(f"{sim_url}/_sim/faults", json=slow, timeout=5).raise_for_status()
            started = threading.Barrier(3)
            bodies: list[str] = []

            def stream() -> None:
                body = {
                    "model": SMALL,
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                }
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    chunks = response.iter_text()
                    text = next(chunks)
                    started.wait(10)
                    bodies.append(text + "".join(chunks))

            threads = [threading.Thread(target=stream) for _ in range(2)]
            for thread in threads:
                thread.start()
            started.wait(10)
            write_routing(routing, sim_url, SMALL, CODESTRAL)
            os.kill(proc.pid, signal.SIGHUP)
            served = chat(CODESTRAL)
            for _ in range(50):  # the reload takes a moment (it loads codestral's tokenizer)
                if served.status_code == 200:
                    break
                threading.Event().wait(0.1)
                served = chat(CODESTRAL)
            assert served.status_code == 200, served.text
            assert served.json()["model"] == CODESTRAL

            assert any(thread.is_alive() for thread in threads)  # the streams outlived it
            for thread in threads:
                thread.join(15)
            assert len(bodies) == 2
            for text in bodies:
                assert text.rstrip().endswith("data: [DONE]")
                assert '"error"' not in text

            # SIGHUP again: the process survives it and finds nothing to change
            os.kill(proc.pid, signal.SIGHUP)
            for _ in range(50):
                if log_lines(log, "(SIGHUP): no change"):
                    break
                threading.Event().wait(0.1)
            assert proc.poll() is None
            assert len(log_lines(log, "routing file reloaded (")) == 2
            assert chat(SMALL).status_code == 200
            client.close()
