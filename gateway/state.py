"""The running gateway's shared state: what `create_app` builds and every request reads.

One `Gateway` per process, built at startup (clients need the running event loop) and closed
at shutdown. Request handlers read `gw.routing` once per request: a config reload swaps the
reference, so each request sees one snapshot from start to finish.

A reload (`apply_config`) swaps the routing table, clients, upstream headers and attempter in
one synchronous step, so no request sees half of it. The health board is shared across
reloads (kept by deployment name). A deployment whose pool settings (timeouts,
max_connections) are unchanged keeps its client and its warm connections; a new or re-pooled
one gets a new client. A client that is replaced or whose deployment is removed *retires*: it
stays open (and a removed deployment stays resolvable in `clients`/`upstream_headers`) for a
grace period, then is closed. The grace is the old deployment's `timeouts.total_s` plus the old
retry `deadline_s` plus `RETIRE_SLACK_S`: an attempt starts at most `deadline_s` after its
request's first, and the client's total timeout ends it `total_s` later, so no request that could
have picked the old client is still using it when it closes. (The httpx client used with an
injected test transport does not enforce `total_s`.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from gateway.auth.principal import Authenticator
from gateway.clock import Clock
from gateway.config import Deployment, GatewayConfig
from gateway.ledger.ledger import Ledger
from gateway.limits.admission import Admitter
from gateway.routing.attempts import Attempter
from gateway.routing.health import HealthBoard
from gateway.routing.plan import RoutingTable
from gateway.settings import Settings, read_secret_env
from gateway.upstream.client import UpstreamClient, make_client

log = logging.getLogger("gateway.state")

RETIRE_SLACK_S = 1.0  # covers admission, between planning a request and its first attempt


def upstream_headers(config: GatewayConfig) -> dict[str, dict[str, str]]:
    """Per deployment, the fixed headers of every upstream request (its own credential)."""
    headers: dict[str, dict[str, str]] = {}
    for deployment in config.deployments:
        base = {
            "content-type": "application/json",
            "accept-encoding": "identity",  # relay bytes exactly as sent, no re-encoding
            "user-agent": "llm-gateway",
        }
        if deployment.api_key_env:
            secret = read_secret_env(deployment.api_key_env)
            if secret is not None:
                base["authorization"] = f"Bearer {secret.get_secret_value()}"
        headers[deployment.name] = base
    return headers


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What a reload changed, by deployment name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    new_clients: tuple[str, ...]  # changed deployments whose pool was replaced


def _same_pool(old: Deployment, new: Deployment) -> bool:
    """Whether `new` can keep `old`'s client (all a client is built from, besides the name)."""
    return old.timeouts == new.timeouts and old.max_connections == new.max_connections


@dataclass
class Gateway:
    """Everything a request needs, built once."""

    settings: Settings
    clock: Clock
    auth: Authenticator
    admitter: Admitter
    ledger: Ledger
    routing: RoutingTable
    attempter: Attempter
    clients: Mapping[str, UpstreamClient]
    upstream_headers: Mapping[str, Mapping[str, str]]
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)
    _retiring: dict[asyncio.Task[None], UpstreamClient] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: GatewayConfig,
        *,
        clock: Clock,
        auth: Authenticator,
        admitter: Admitter,
        ledger: Ledger,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Gateway:
        """Create clients for every deployment; call inside the running loop."""
        kind = settings.upstream_client
        clients = {d.name: make_client(d, transport, kind) for d in config.deployments}
        board = HealthBoard(d.name for d in config.deployments)
        return cls(
            settings=settings,
            clock=clock,
            auth=auth,
            admitter=admitter,
            ledger=ledger,
            routing=RoutingTable(config, created_s=int(clock.now_s())),
            attempter=Attempter(board, config.routing, clock),
            clients=clients,
            upstream_headers=upstream_headers(config),
            transport=transport,
        )

    def apply_config(self, config: GatewayConfig) -> ConfigChange:
        """Serve `config` from now on (in the event loop; no await, so the swap is atomic).

        Everything is built before anything is swapped: if building fails, nothing changed."""
        old = self.routing.config
        before = {d.name: d for d in old.deployments}
        after = {d.name: d for d in config.deployments}
        routing = RoutingTable(config, created_s=int(self.clock.now_s()))
        attempter = self._attempter_for(config)
        headers = upstream_headers(config)
        clients, retired = self._clients_for(before, after)
        for name, client in self.clients.items():  # removed, not yet retired: still resolvable
            if name not in clients:
                clients[name] = client
                headers[name] = self.upstream_headers[name]
        attempter.board.track(after)
        self.routing, self.attempter = routing, attempter
        self.clients, self.upstream_headers = clients, headers
        for name, client, deployment in retired:
            grace_s = deployment.timeouts.total_s + old.routing.retries.deadline_s
            self._retire(name, client, grace_s + RETIRE_SLACK_S)
        return ConfigChange(
            added=tuple(n for n in after if n not in before),
            removed=tuple(n for n in before if n not in after),
            changed=tuple(n for n in after if n in before and before[n] != after[n]),
            new_clients=tuple(n for n, _, _ in retired if n in after),
        )

    def _clients_for(
        self, before: Mapping[str, Deployment], after: Mapping[str, Deployment]
    ) -> tuple[dict[str, UpstreamClient], list[tuple[str, UpstreamClient, Deployment]]]:
        """The clients of `after` (reused where the pool is unchanged), and those to retire."""
        clients: dict[str, UpstreamClient] = {}
        retired: list[tuple[str, UpstreamClient, Deployment]] = []
        for name, deployment in after.items():
            previous = before.get(name)
            if previous is not None and _same_pool(previous, deployment):
                clients[name] = self.clients[name]
                continue
            clients[name] = make_client(deployment, self.transport, self.settings.upstream_client)
            if previous is not None:
                retired.append((name, self.clients[name], previous))
        retired += [(n, self.clients[n], d) for n, d in before.items() if n not in after]
        return clients, retired

    def _attempter_for(self, config: GatewayConfig) -> Attempter:
        """The current attempter, or a new one on the same board when the policy changed."""
        current = self.attempter
        if config.routing == current.policy:
            return current
        attempter = Attempter(
            current.board, config.routing, self.clock, rng=current.rng, sleep=current.sleep
        )
        if config.routing.retries == current.policy.retries:
            attempter.budget = current.budget  # same budget settings: keep what it has counted
        return attempter

    def _retire(self, name: str, client: UpstreamClient, grace_s: float) -> None:
        task = asyncio.get_running_loop().create_task(
            self._close_later(name, client, grace_s), name=f"retire-client-{name}"
        )
        self._retiring[task] = client
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    async def _close_later(self, name: str, client: UpstreamClient, grace_s: float) -> None:
        await asyncio.sleep(grace_s)
        if self.clients.get(name) is client:  # its deployment was removed: forget the name
            self.clients = {n: c for n, c in self.clients.items() if n != name}
            self.upstream_headers = {n: h for n, h in self.upstream_headers.items() if n != name}
        try:
            await client.close()
        except Exception:
            log.exception("closing the retired client of deployment %s failed", name)
        else:
            log.info("closed the retired client of deployment %s", name)

    @property
    def retiring(self) -> int:
        """How many replaced or removed clients wait for their requests to end."""
        return len(self._retiring)

    async def close(self) -> None:
        """Close every upstream pool, retiring ones included."""
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        unique = {id(c): c for c in [*self.clients.values(), *(c for _, c in retiring)]}
        for client in unique.values():
            await client.close()
