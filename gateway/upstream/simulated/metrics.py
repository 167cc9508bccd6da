"""SIMULATOR load: `GET /metrics` the way vLLM serves it, so load-aware routing can be tested.

vLLM exposes `vllm:num_requests_running` and `vllm:num_requests_waiting` gauges, labelled by
`model_name` (the first served name) and `engine` (shared/API-FACTS.md §2.5). The simulator has
no batch and no queue: every `POST /v1/...` request being served (its streamed body included) counts as
running, and none ever waits. Only the vLLM style has this route, like the real servers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


class Load:
    """`POST /v1/...` requests in flight right now."""

    def __init__(self) -> None:
        self.running = 0


class LoadCounter:
    """Pure ASGI middleware: counts each `POST /v1/...` from arrival until its last byte."""

    def __init__(self, app: ASGIApp, load: Load) -> None:
        self.app = app
        self.load = load

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        self.load.running += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.load.running -= 1


def metrics_endpoint(load: Load, model_name: str) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`: the two vLLM load gauges in Prometheus text format."""
    labels = f'{{engine="0",model_name="{model_name}"}}'

    async def metrics(request: Request) -> Response:
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(load.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{labels} 0.0\n"
        )
        return Response(text, media_type=PROMETHEUS_TEXT)

    return metrics
