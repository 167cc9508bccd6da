"""One call end to end: plan, forward, relay.

`forward` is what every `/v1` handler calls once the request is authenticated and parsed:
it plans the targets (routing), translates the payload for the chosen upstream (adapter),
sends it over that deployment's pooled client, and hands back either a whole body or a stream
to relay. Upstream failures arrive as `UpstreamError`s, already translated by the client.

Invariants: the client's own `Authorization` never goes upstream (each deployment sends its own
credential, or none); response bodies are relayed as the upstream sent them, streams chunk by
chunk; a stream that breaks mid-way ends with an SSE error event the SDKs raise on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.principal import Principal
from gateway.errors import UpstreamInterrupted
from gateway.state import Gateway
from gateway.upstream.adapter import Endpoint, adapter_for
from gateway.upstream.client import ERROR_BODY_LIMIT_BYTES, UpstreamResponse
from gateway.upstream.rejection import normalise_upstream_error
from gateway.web.sse import SseWatcher

# Upstream headers worth passing on: the content type, and the provider's own rate-limit
# report (shared/API-FACTS.md §1.7: pass every x-ratelimit* / ratelimitbysize* through).
_PASSED_PREFIXES = ("x-ratelimit", "ratelimitbysize")


@dataclass(frozen=True, slots=True)
class Relayed:
    """A whole response body, as the upstream sent it."""

    status: int
    media_type: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Streamed:
    """A streamed response: bytes to relay as they arrive."""

    status: int
    media_type: str
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]


async def forward(
    gw: Gateway,
    principal: Principal,
    endpoint: Endpoint,
    model: str,
    payload: dict[str, Any],
    request_id: str,
) -> Relayed | Streamed:
    """Send one parsed request to the best target and return what to relay."""
    routing = gw.routing
    target = routing.plan(principal, model, endpoint)[0]
    deployment = target.deployment
    call = adapter_for(deployment.provider).prepare(endpoint, payload, target.upstream_model)
    headers = gw.upstream_headers[deployment.name] | {"x-request-id": request_id}
    response = await gw.clients[deployment.name].post(
        deployment.base + call.path, headers, call.body
    )
    if response.status >= 400:
        body = await response.read(ERROR_BODY_LIMIT_BYTES)
        raise normalise_upstream_error(
            response.status,
            body,
            deployment=deployment.name,
            retry_after=response.headers.get("retry-after"),
        )
    out_headers = _passed_headers(response)
    out_headers["x-gateway-deployment"] = deployment.name
    out_headers["x-gateway-region"] = deployment.region
    media_type = response.headers.get("content-type", "application/json")
    if call.stream:
        watcher = SseWatcher(hide_usage_chunk=call.hide_usage_chunk)
        return Streamed(response.status, media_type, out_headers, _relay(response, watcher))
    return Relayed(response.status, media_type, out_headers, await response.read())


def _passed_headers(response: UpstreamResponse) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower().startswith(_PASSED_PREFIXES)
    }


async def _relay(response: UpstreamResponse, watcher: SseWatcher) -> AsyncIterator[bytes]:
    """Relay upstream chunks; a break mid-stream ends with an SSE `error` event."""
    try:
        async for chunk in response.chunks():
            out = watcher.feed(chunk)
            if out:
                yield out
        tail = watcher.flush()
        if tail:
            yield tail
    except UpstreamInterrupted as exc:
        error = {
            "error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}
        }
        yield b"data: " + orjson.dumps(error) + b"\n\n"
    finally:
        await response.close()
