"""The route table, and nothing else. Every `/v1` route authenticates the tenant itself, every
`/admin/v1` route an admin token; only the health probes, `/metrics` (expose it to the cluster
network only: it names tenants and models) and the static cost page `/finance` are open (the page
holds no data: it calls `/admin/v1` with the user's token)."""

from __future__ import annotations

from starlette.routing import Mount, Route

from gateway.admin.routes import admin_routes
from gateway.web.endpoints import ProxyEndpoint
from gateway.web.finance import finance_routes
from gateway.web.model_list import list_models, retrieve_model
from gateway.web.ops import healthz, metrics_endpoint, readyz


def routes(proxied: dict[str, ProxyEndpoint]) -> list[Route | Mount]:
    """All routes of the gateway; `proxied` maps each `/v1` POST path to its raw ASGI app
    (which `GatewayApp` calls directly: the router only answers their wrong methods)."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *finance_routes(),
        Mount("/admin/v1", routes=admin_routes()),
        Mount(
            "/v1",
            routes=[
                *(
                    Route(path.removeprefix("/v1"), app, methods=["POST"])
                    for path, app in proxied.items()
                ),
                Route("/models", list_models, methods=["GET"]),
                Route("/models/{model:path}", retrieve_model, methods=["GET"]),
            ],
        ),
    ]
