"""A routing stack for end-to-end tests: five simulated upstreams, two tenants, one gateway.

Five `gateway simulate` processes, each on its own port:

    simulator  style    stands for
    vllm-1     vllm     an EU vLLM replica
    vllm-2     vllm     an EU vLLM replica
    vllm-3     vllm     an EU vLLM replica
    mistral    mistral  La Plateforme (EU)
    us         vllm     a vLLM replica outside the EU (jurisdiction `us`)

Health, balancing counters and retry budgets are kept per deployment *name* in the gateway, so
each test gets deployments of its own, under a public model of its own, pointing at these
simulators: one gateway serves every test and none inherits another's ejections. The tests run
one at a time and clear the simulators first, so a simulator's log holds one test's traffic.

    test       public model            deployments (simulator, priority)
    residency  mistral-small-latest    res-eu-vllm-1..3 (vllm-1..3, 0), res-la-plateforme
                                       (mistral, 1), res-us-vllm (us, 0; jurisdiction us)
    retries    retry-codestral         retry-codestral (mistral): its only deployment
    ejection   eject-small             eject-eu-vllm-1..3 (vllm-1..3)
    spread     spread-small/-large     spread-eu-vllm-1..3 (vllm-1..3)
    catch-up   catchup-small           catchup-eu-vllm-1..3 (vllm-1..3)
    hang-up    stream-codestral        stream-codestral (mistral)
    early exit hangup-codestral        hangup-codestral (vllm-3)

The retry-budget test needs other retry settings, which are global, so it starts a gateway of
its own (`RoutingStack.gateway(**routing)`) over the residency deployments.

Faults are queued per simulator and restricted to the deployment's upstream model, so failing
`res-la-plateforme` (`mistral-small-latest`) leaves `retry-codestral` on the same simulator alone.
Simulator log entries carry the gateway's `x-request-id` (the attempts of one client request
share it) and `time.monotonic()` stamps; on Linux that is CLOCK_MONOTONIC, one clock for every
process, so they compare with the test's own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.stack import ROOT, base_env, cli, create_tenant, gateway_server, wait_for_port
from tests.services import free_port

SMALL = "mistral-small-latest"
LARGE = "mistral-large-latest"
CODESTRAL = "codestral-latest"
CHAT_PATH = "/v1/chat/completions"

SIMULATORS: dict[str, tuple[str, ...]] = {
    "vllm-1": ("--style", "vllm"),
    "vllm-2": ("--style", "vllm"),
    "vllm-3": ("--style", "vllm"),
    "mistral": ("--style", "mistral"),
    "us": ("--style", "vllm"),
}


@dataclass(frozen=True)
class Spec:
    """One deployment of the routing file."""

    name: str
    sim: str
    provider: str
    region: str
    jurisdiction: str
    models: dict[str, str]  # public -> upstream
    priority: int = 0
    first_byte_s: float = 5.0

    def document(self, sims: dict[str, str]) -> dict[str, Any]:
        """This deployment as a routing-file entry."""
        return {
            "name": self.name,
            "provider": self.provider,
            "base_url": f"{sims[self.sim]}/v1",
            "region": self.region,
            "jurisdiction": self.jurisdiction,
            "priority": self.priority,
            "models": self.models,
            "timeouts": {
                "connect_s": 2,
                "first_byte_s": self.first_byte_s,
                "read_s": 10,
                "total_s": 30,
            },
        }


def eu_replicas(prefix: str, models: dict[str, str]) -> tuple[Spec, ...]:
    """Three equal EU vLLM deployments, on simulators vllm-1..3."""
    return tuple(
        Spec(f"{prefix}-eu-vllm-{i}", f"vllm-{i}", "vllm", "eu-west", "eu", models)
        for i in (1, 2, 3)
    )


RES_REPLICAS = eu_replicas("res", {SMALL: SMALL})
RES_EU = (
    *RES_REPLICAS,
    Spec("res-la-plateforme", "mistral", "mistral", "eu-west", "eu", {SMALL: SMALL}, priority=1),
)
RES_US = Spec("res-us-vllm", "us", "vllm", "us-east", "us", {SMALL: SMALL})
RETRY = Spec(
    "retry-codestral", "mistral", "mistral", "eu-west", "eu", {"retry-codestral": CODESTRAL}
)
EJECT_REPLICAS = eu_replicas("eject", {"eject-small": SMALL})
SPREAD_REPLICAS = eu_replicas("spread", {"spread-small": SMALL, "spread-large": LARGE})
STREAM = Spec(
    "stream-codestral", "mistral", "mistral", "eu-west", "eu", {"stream-codestral": CODESTRAL}
)
CATCHUP_REPLICAS = eu_replicas("catchup", {"catchup-small": SMALL})
# A short first-byte timeout, so the request the gateway fails to cancel ends soon anyway.
HANGUP = Spec(
    "hangup-codestral",
    "vllm-3",
    "vllm",
    "eu-west",
    "eu",
    {"hangup-codestral": CODESTRAL},
    first_byte_s=2.0,
)
DEPLOYMENTS = {
    spec.name: spec
    for spec in (
        *RES_EU,
        RES_US,
        RETRY,
        *EJECT_REPLICAS,
        *SPREAD_REPLICAS,
        *CATCHUP_REPLICAS,
        STREAM,
        HANGUP,
    )
}

# Production's shape with test-sized times. The budget's floor is generous so the retry and
# ejection tests are never cut short by it; the budget test sets its own.
ROUTING: dict[str, Any] = {
    "retries": {
        "max_attempts": 3,
        "backoff_base_s": 0.2,
        "backoff_cap_s": 1.0,
        "deadline_s": 10.0,
        "budget_ratio": 0.2,
        "budget_min_retries": 30,
        "budget_window_s": 10.0,
    },
    "ejection": {"consecutive_failures": 3, "base_s": 1.0, "max_s": 4.0},
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied, nested dicts merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def launch_simulators(
    stack: ExitStack,
    tmp: Path,
    env: dict[str, str],
    simulators: dict[str, tuple[str, ...]] = SIMULATORS,
) -> dict[str, tuple[int, subprocess.Popen]]:
    """Start every simulator of `simulators` (name -> `gateway simulate` arguments) without
    waiting; `stack` stops them."""
    launched = {}
    for name, args in simulators.items():
        port = free_port()
        sink = stack.enter_context((tmp / f"sim-{name}.log").open("wb"))
        command = [sys.executable, "-m", "gateway", "simulate", "--port", str(port), *args]
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
        stack.callback(_stop, proc)
        launched[name] = (port, proc)
    return launched


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class Reply:
    """What the client saw of one request."""

    status: int
    deployment: str | None
    region: str | None
    attempts: int | None
    request_id: str | None
    code: str | None  # the error code, for errors
    sent_s: float
    done_s: float


@dataclass
class RoutingStack:
    """Simulators, a database with two tenants, and a way to start gateways over them."""

    tmp: Path
    env: dict[str, str]
    sims: dict[str, str]
    eu_key: str
    any_key: str
    _gateways: int = field(default=0)

    @contextmanager
    def gateway(self, **routing: Any) -> Iterator[str]:
        """A gateway over every deployment, `ROUTING` overridden by `routing`; yields its URL."""
        self._gateways += 1
        document = {
            "routing": merged(ROUTING, routing),
            "deployments": [spec.document(self.sims) for spec in DEPLOYMENTS.values()],
        }
        path = self.tmp / f"routing-{self._gateways}.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        env = self.env | {"GATEWAY_CONFIG": str(path)}
        with gateway_server(env, self.tmp / f"gateway-{self._gateways}.log") as base_url:
            yield base_url

    def reset(self) -> None:
        """Clear every simulator's fault queue and request log."""
        for url in self.sims.values():
            httpx.post(f"{url}/_sim/reset", timeout=5).raise_for_status()

    def received(self, deployment: str) -> list[dict[str, Any]]:
        """Chat requests the deployment's simulator got for the deployment's upstream models."""
        spec = DEPLOYMENTS[deployment]
        log = httpx.get(f"{self.sims[spec.sim]}/_sim/requests", timeout=10).json()
        models = set(spec.models.values())
        return [e for e in log if e["path"] == CHAT_PATH and e["model"] in models]

    def fail(
        self, deployment: str, count: int = 5000, *, model: str | None = None, **fault: Any
    ) -> None:
        """Queue `count` faults (default: 503) for the deployment's (or `model`'s) requests."""
        spec = DEPLOYMENTS[deployment]
        upstream = model or next(iter(spec.models.values()))
        one = {"status": 503, "path": CHAT_PATH, "model": upstream} | fault
        one = {key: value for key, value in one.items() if value is not None}
        url = f"{self.sims[spec.sim]}/_sim/faults"
        httpx.post(url, json=[one] * count, timeout=10).raise_for_status()

    def heal(self, deployment: str) -> None:
        """Clear the queued faults (and the request log) of the deployment's simulator."""
        url = self.sims[DEPLOYMENTS[deployment].sim]
        httpx.post(f"{url}/_sim/reset", timeout=5).raise_for_status()


@contextmanager
def routing_stack(tmp: Path) -> Iterator[RoutingStack]:
    """Start the simulators, migrate a SQLite database and create the `eu` and `any` tenants."""
    env = base_env()
    env["GATEWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp / 'gateway.db'}"
    env["GATEWAY_LOG_LEVEL"] = "WARNING"
    with ExitStack() as stack:
        launched = launch_simulators(stack, tmp, env)
        # The CLI runs while the simulators boot (tokenizers first, ~2 s of CPU each).
        cli(env, "migrate")
        _, eu_key = create_tenant(env, "routing-eu", "--residency", "eu")
        _, any_key = create_tenant(env, "routing-any", "--residency", "any")
        for port, proc in launched.values():
            wait_for_port(port, timeout_s=60, process=proc)
        sims = {name: f"http://127.0.0.1:{port}" for name, (port, _) in launched.items()}
        yield RoutingStack(tmp, env, sims, eu_key, any_key)


def chat_body(model: str, *, stream: bool = False, max_tokens: int = 4) -> dict[str, Any]:
    """A short chat request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": max_tokens,
    }
    if stream:
        body["stream"] = True
    return body


async def chat(
    client: httpx.AsyncClient, key: str, model: str, headers: dict[str, str] | None = None
) -> Reply:
    """One non-streamed chat request through the gateway."""
    sent_s = time.monotonic()
    response = await client.post(
        CHAT_PATH,
        json=chat_body(model),
        headers={"authorization": f"Bearer {key}", **(headers or {})},
    )
    done_s = time.monotonic()
    code = response.json()["error"]["code"] if response.status_code >= 400 else None
    attempts = response.headers.get("x-gateway-attempts")
    return Reply(
        response.status_code,
        response.headers.get("x-gateway-deployment"),
        response.headers.get("x-gateway-region"),
        int(attempts) if attempts is not None else None,
        response.headers.get("x-request-id"),
        None if code is None else str(code),
        sent_s,
        done_s,
    )


async def blast(
    base_url: str,
    key: str,
    model: str,
    count: int,
    *,
    concurrency: int = 16,
    headers: dict[str, str] | None = None,
) -> list[Reply]:
    """`count` chat requests, `concurrency` at a time; replies in the order they were sent."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    replies: list[Reply | None] = [None] * count
    indexes = iter(range(count))  # shared by the workers: each takes the next index

    async def worker(client: httpx.AsyncClient) -> None:
        for index in indexes:
            replies[index] = await chat(client, key, model, headers)

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return [reply for reply in replies if reply is not None]


def tally(replies: Sequence[Reply]) -> dict[tuple[int, str | None], int]:
    """(status, deployment or error code) -> count, most common first."""
    counts = Counter((r.status, r.deployment if r.status < 400 else r.code) for r in replies)
    return dict(counts.most_common())
