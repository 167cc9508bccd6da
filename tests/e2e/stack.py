"""Real processes for end-to-end tests: simulated upstreams and the gateway, on real ports.

The gateway is started exactly as an operator would start it (`python -m gateway serve`),
after `gateway migrate`, `gateway tenants create` and `gateway keys create`, so the CLI's
output contract is exercised too.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_for_port(
    port: int, timeout_s: float = 30.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited early with {process.returncode}")
        with suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


def cli(env: Mapping[str, str], *args: str) -> str:
    """Run `python -m gateway ARGS` and return its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gateway {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done.stdout


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1].strip()


@contextmanager
def process(
    args: list[str], env: Mapping[str, str], port: int, log: Path
) -> Iterator[subprocess.Popen]:
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            args, env=dict(env), stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT
        )
        try:
            wait_for_port(port, process=proc)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextmanager
def simulator(style: str, tmp: Path, env: Mapping[str, str]) -> Iterator[str]:
    """A simulated upstream process; yields its base URL (without /v1)."""
    port = free_port()
    args = [sys.executable, "-m", "gateway", "simulate", "--port", str(port), "--style", style]
    with process(args, env, port, tmp / f"sim-{style}-{port}.log"):
        yield f"http://127.0.0.1:{port}"


@dataclass
class Stack:
    """A running gateway with its upstreams and a tenant key."""

    mode: str
    base_url: str
    key: str
    tenant_id: str
    env: dict[str, str]
    upstreams: dict[str, str]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def sim(self, name: str) -> httpx.Client:
        return httpx.Client(base_url=self.upstreams[name], timeout=10)

    def reset_sims(self) -> None:
        for url in self.upstreams.values():
            httpx.post(f"{url}/_sim/reset", timeout=5).raise_for_status()

    def sim_requests(self, name: str) -> list[dict]:
        return httpx.get(f"{self.upstreams[name]}/_sim/requests", timeout=5).json()

    def program_faults(self, name: str, faults: list[dict]) -> None:
        httpx.post(f"{self.upstreams[name]}/_sim/faults", json=faults, timeout=5).raise_for_status()


def routing_file(path: Path, mistral_url: str, vllm_url: str, dead_port: int) -> Path:
    config = {
        # One attempt, no ejection: these tests check what one failure looks like to the
        # client, and share one gateway. Routing behaviour has its own tests.
        "routing": {"retries": {"max_attempts": 1}, "ejection": {"consecutive_failures": 1000}},
        "deployments": [
            {
                "name": "sim-plateforme",
                "provider": "mistral",
                "base_url": f"{mistral_url}/v1",
                "region": "eu-west",
                "jurisdiction": "eu",
                "models": {
                    "mistral-small-latest": "mistral-small-latest",
                    "codestral-latest": "codestral-latest",
                    "mistral-embed": "mistral-embed",
                },
                "timeouts": {"connect_s": 2, "read_s": 1.5, "total_s": 30},
            },
            {
                "name": "sim-vllm",
                "provider": "vllm",
                "base_url": f"{vllm_url}/v1",
                "region": "eu-central",
                "jurisdiction": "eu",
                "models": {"open-small": "mistral-small-latest", "open-embed": "mistral-embed"},
            },
            {
                "name": "dead",
                "provider": "vllm",
                "base_url": f"http://127.0.0.1:{dead_port}/v1",
                "region": "us-east",
                "jurisdiction": "us",
                "models": {"dead-model": "dead-model"},
                "timeouts": {"connect_s": 1, "read_s": 1, "total_s": 5},
                # No active checks: they would take it out after two failed probes (then a
                # request gets 503 no_deployment_available), and test_unreachable wants the 502.
                "health": {"enabled": False},
            },
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def create_tenant(env: Mapping[str, str], name: str, *flags: str) -> tuple[str, str]:
    """`gateway tenants create NAME FLAGS` then `gateway keys create NAME`: (tenant id, key)."""
    tenant_id = last_line(cli(env, "tenants", "create", name, *flags))
    key = last_line(cli(env, "keys", "create", name, "--name", "e2e"))
    return tenant_id, key


@contextmanager
def gateway_server(env: Mapping[str, str], log: Path) -> Iterator[str]:
    """`gateway serve` on a free port, as an operator starts it; yields its base URL."""
    port = free_port()
    args = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    with process(args, env, port, log):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def gateway_process(env: Mapping[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Like `gateway_server`, and also yields the process (to send it signals)."""
    port = free_port()
    args = [sys.executable, "-m", "gateway", "serve", "--port", str(port)]
    with process(args, env, port, log) as proc:
        yield f"http://127.0.0.1:{port}", proc


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
