"""Upstream error bodies, normalised to OpenAI's shape with the upstream status kept.

La Plateforme's error bodies follow no single schema (shared/API-FACTS.md §1.6): a `message`
that is a string or an object of validation details, a `code` that is a string, an int or
null, or just `{"detail": ...}` / `{"message": ...}`. vLLM sends OpenAI's `{"error": {...}}`.
Whatever arrives becomes one `UpstreamRejected` whose message is a plain string.

An upstream 401/403 means the gateway's own provider credential was refused; the client's key
is fine, so that becomes a 502 that says so instead of telling the client to fix its key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamRejected

# OpenAI's error types; an upstream type outside this set (Mistral's `rate_limited`, vLLM's
# `BadRequestError`) is replaced by the type OpenAI uses for that status.
OPENAI_ERROR_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "rate_limit_error",
        "insufficient_quota",
        "api_error",
        "server_error",
        "timeout",
    }
)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _message_text(message: Any) -> str:
    if isinstance(message, str):
        return message
    if isinstance(message, Mapping) and isinstance(message.get("detail"), list):
        return _detail_text(message["detail"])
    if isinstance(message, list):
        return _detail_text(message)
    return orjson.dumps(message).decode()


def _detail_text(detail: list[Any]) -> str:
    parts = []
    for item in detail:
        if isinstance(item, Mapping):
            location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            parts.append(f"{location}: {item.get('msg', '')}" if location else str(item.get("msg")))
        else:
            parts.append(str(item))
    return "; ".join(parts)


def _param_from_detail(message: Any) -> str | None:
    detail = message.get("detail") if isinstance(message, Mapping) else message
    if isinstance(detail, list) and detail and isinstance(detail[0], Mapping):
        loc = [str(p) for p in detail[0].get("loc", ()) if p != "body"]
        return ".".join(loc) or None
    return None


def normalise_upstream_error(
    status: int, body: bytes, *, deployment: str, retry_after: str | None
) -> UpstreamRejected:
    """Build the OpenAI-shaped error for an upstream error response."""
    if 300 <= status < 400:  # its body and Location may name internal hosts: echo neither
        redirect = UpstreamRejected(
            502,
            f"The upstream `{deployment}` answered with a redirect (status {status}); the "
            "gateway never follows one. An operator must fix the deployment's URL.",
            type_="api_error",
            code="upstream_redirect",
            deployment=deployment,
        )
        redirect.retryable = False  # type: ignore[misc]  # a wrong URL stays wrong on retry
        return redirect
    if status in (401, 403):
        return UpstreamRejected(
            502,
            f"The upstream `{deployment}` refused the gateway's credentials (status {status}); "
            "an operator must fix the deployment's API key.",
            type_="api_error",
            code="upstream_auth_failed",
            deployment=deployment,
        )
    try:
        data: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, Mapping) and isinstance(data.get("error"), Mapping):
        data = data["error"]
    message: str
    type_ = _TYPE_BY_STATUS.get(status, "api_error")
    code: str | None = None
    param: str | None = None
    if isinstance(data, Mapping):
        raw_message = data.get("message", data.get("detail"))
        message = _message_text(raw_message) if raw_message is not None else ""
        param = data.get("param") if isinstance(data.get("param"), str) else None
        param = param or _param_from_detail(raw_message)
        if data.get("type") in OPENAI_ERROR_TYPES:
            type_ = data["type"]
        if data.get("code") is not None:
            code = str(data["code"])
    else:
        message = body[:500].decode("utf-8", "replace").strip()
    if not message:
        message = f"The upstream `{deployment}` answered with status {status}."
    return UpstreamRejected(
        status,
        message,
        type_=type_,
        code=code,
        param=param,
        deployment=deployment,
        retry_after=retry_after,
    )
