"""SIMULATOR error responses: `SimError` and its body in each style's shape.

Default (type, code) per style and status come from API-FACTS §1.6 (Mistral, as observed) and
§2.4 (vLLM: exception class names and the int status as code); OpenAI uses string codes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from gateway.upstream.simulated.options import Style

JSON = "application/json"

_MISTRAL_TYPES = {401: "authentication_error", 429: "rate_limited"}
_VLLM_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}


class SimError(Exception):
    """An error response; type and code default per style when not given."""

    def __init__(
        self,
        status: int,
        message: Any,
        *,
        type_: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(str(message))
        self.body = body  # a verbatim body, for errors that break the style's usual shape
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}


def render_error(style: Style, error: SimError) -> Response:
    """An error response in the style's body shape."""
    status = error.status
    if error.body is not None:
        body: dict[str, Any] = error.body
    elif style == "mistral":
        type_ = error.type or _MISTRAL_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        code = error.code if error.code is not None else ("1300" if status == 429 else None)
        body = {
            "object": "error",
            "message": error.message,
            "type": type_,
            "param": error.param,
            "code": code,
        }
    elif style == "vllm":
        type_ = error.type or _VLLM_TYPES.get(
            status, "InternalServerError" if status >= 500 else "BadRequestError"
        )
        body = {"error": {"message": error.message, "type": type_, "param": error.param}}
        body["error"]["code"] = status
    else:
        type_ = error.type or ("server_error" if status >= 500 else "invalid_request_error")
        code = error.code or _OPENAI_CODES.get(status)
        body = {"error": {"message": error.message, "type": type_, "param": error.param}}
        body["error"]["code"] = code
    return Response(orjson.dumps(body), status, headers=error.headers, media_type=JSON)


def invalid(style: Style, field_name: str, kind: str, message: str, value: Any) -> SimError:
    """A request-validation error: Mistral's pydantic-shaped 422, or a 400 elsewhere."""
    if style == "mistral":
        detail = {"type": kind, "loc": ["body", field_name], "msg": message, "input": value}
        return SimError(422, {"detail": [detail]})
    return SimError(400, f"{field_name}: {message}", param=field_name)
