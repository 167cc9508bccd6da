"""The route table, and nothing else. Every `/v1` route authenticates the tenant itself;
only the health probes are open."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from gateway.web.endpoints import chat_completions, embeddings, fim_completions
from gateway.web.model_list import list_models, retrieve_model


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return PlainTextResponse("ok")


def routes() -> list[Route | Mount]:
    """All routes of the gateway."""
    return [
        Route("/healthz", healthz, methods=["GET"]),
        Mount(
            "/v1",
            routes=[
                Route("/chat/completions", chat_completions, methods=["POST"]),
                Route("/fim/completions", fim_completions, methods=["POST"]),
                Route("/embeddings", embeddings, methods=["POST"]),
                Route("/models", list_models, methods=["GET"]),
                Route("/models/{model:path}", retrieve_model, methods=["GET"]),
            ],
        ),
    ]
