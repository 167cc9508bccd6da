"""The running gateway's shared state: what `create_app` builds and every request reads.

One `Gateway` per process, built at startup (clients need the running event loop) and closed
at shutdown. Request handlers read `gw.routing` once per request: a config reload swaps the
reference, so each request sees one snapshot from start to finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from gateway.auth.principal import Authenticator
from gateway.clock import Clock
from gateway.config import GatewayConfig
from gateway.limits.admission import Admitter
from gateway.routing.attempts import Attempter
from gateway.routing.health import HealthBoard
from gateway.routing.plan import RoutingTable
from gateway.settings import Settings, read_secret_env
from gateway.upstream.client import UpstreamClient, make_client


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


@dataclass
class Gateway:
    """Everything a request needs, built once."""

    settings: Settings
    clock: Clock
    auth: Authenticator
    admitter: Admitter
    routing: RoutingTable
    attempter: Attempter
    clients: Mapping[str, UpstreamClient]
    upstream_headers: Mapping[str, Mapping[str, str]]
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        config: GatewayConfig,
        *,
        clock: Clock,
        auth: Authenticator,
        admitter: Admitter,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Gateway:
        """Create clients for every deployment; call inside the running loop."""
        clients = {d.name: make_client(d, transport) for d in config.deployments}
        board = HealthBoard(d.name for d in config.deployments)
        return cls(
            settings=settings,
            clock=clock,
            auth=auth,
            admitter=admitter,
            routing=RoutingTable(config, created_s=int(clock.now_s())),
            attempter=Attempter(board, config.routing, clock),
            clients=clients,
            upstream_headers=upstream_headers(config),
            transport=transport,
        )

    async def close(self) -> None:
        """Close every upstream pool."""
        for client in self.clients.values():
            await client.close()
