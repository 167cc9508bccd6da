"""OpenAI/Mistral request shapes in: one orjson parse, and checks of only what the gateway needs.

The gateway validates the fields it acts on (model, messages/input/prompt, stream, max_tokens,
tools) and passes everything else through for the upstream to judge, so new upstream fields
work without a gateway release. Each failure is an `InvalidRequest` naming the `param`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest
from gateway.upstream.adapter import Endpoint

MAX_TOKENS_CEILING = 1_000_000  # no model has a larger output window; bigger is a mistake


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong."""
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc.msg} at byte {exc.pos}). "
            "Send valid JSON with `Content-Type: application/json`."
        ) from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return payload


def _require_model(payload: dict[str, Any]) -> str:
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` must be a non-empty string.", param="model")
    return model


def _check_optional_int(payload: dict[str, Any], field: str, low: int, high: int) -> None:
    value = payload.get(field)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(
            f"`{field}` must be an integer from {low} to {high}; got {value!r}.", param=field
        )


def _check_stream(payload: dict[str, Any]) -> None:
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be true or false.", param="stream")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array of messages.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(
                f"`messages[{index}]` must be an object.", param=f"messages[{index}]"
            )
        role = message.get("role")
        if not isinstance(role, str):
            raise InvalidRequest(
                f"`messages[{index}].role` is required (system, user, assistant or tool).",
                param=f"messages[{index}].role",
            )


def validate(endpoint: Endpoint, payload: dict[str, Any]) -> str:
    """Check what the gateway relies on; return the requested public model name."""
    model = _require_model(payload)
    if endpoint is Endpoint.CHAT:
        _check_messages(payload.get("messages"))
        tools = payload.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise InvalidRequest("`tools` must be an array.", param="tools")
    elif endpoint is Endpoint.FIM:
        if not isinstance(payload.get("prompt"), str):
            raise InvalidRequest("`prompt` must be a string.", param="prompt")
        suffix = payload.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise InvalidRequest("`suffix` must be a string.", param="suffix")
    else:
        _check_embedding_input(payload.get("input"))
    if endpoint is not Endpoint.EMBEDDINGS:
        _check_stream(payload)
        _check_optional_int(payload, "max_tokens", 1, MAX_TOKENS_CEILING)
        _check_optional_int(payload, "max_completion_tokens", 1, MAX_TOKENS_CEILING)
    return model


def _check_embedding_input(value: Any) -> None:
    if isinstance(value, str):
        if value:
            return
    elif isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            return
        if all(isinstance(item, list) and item for item in value):
            return
    raise InvalidRequest(
        "`input` must be a non-empty string or a non-empty array of strings.", param="input"
    )
