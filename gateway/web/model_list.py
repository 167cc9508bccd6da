"""GET /v1/models: only the models this tenant may use, as cards both SDKs parse.

Cards carry OpenAI's fields and Mistral's (`type: "base"`, `capabilities`), so the `mistralai`
SDK parses them as typed `BaseModelCard`s instead of unknown entries.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import ModelNotFound
from gateway.state import Gateway


def _card(model: str, created: int) -> dict[str, Any]:
    embedding = "embed" in model
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "gateway",
        "type": "base",
        "capabilities": {
            "completion_chat": not embedding,
            "function_calling": not embedding,
            "completion_fim": model.startswith("codestral") and not embedding,
            "fine_tuning": False,
            "vision": False,
            "classification": False,
        },
    }


async def list_models(request: Request) -> Response:
    """GET /v1/models."""
    gw: Gateway = request.app.state.gateway
    principal = await gw.auth.authenticate(request.headers.get("authorization"))
    created = gw.routing.created_s
    cards = [_card(model, created) for model in gw.routing.models_for(principal)]
    return Response(orjson.dumps({"object": "list", "data": cards}), media_type="application/json")


async def retrieve_model(request: Request) -> Response:
    """GET /v1/models/{model}."""
    gw: Gateway = request.app.state.gateway
    principal = await gw.auth.authenticate(request.headers.get("authorization"))
    model = request.path_params["model"]
    if model not in gw.routing.models_for(principal):
        raise ModelNotFound(model)
    return Response(orjson.dumps(_card(model, gw.routing.created_s)), media_type="application/json")
