"""One call end to end: plan, admit, forward, relay, settle.

`forward` is what every `/v1` handler calls once the request is authenticated and parsed:
it plans the targets (routing), translates the payload for the chosen upstream (adapter),
reserves the tenant's limits (admit), sends it over that deployment's pooled client, and hands
back either a whole body or a stream to relay. Upstream failures arrive as `UpstreamError`s,
already translated by the client. Whatever happens after admission, the reservation is settled
exactly once: with the usage the upstream reported, with metered tokens for a stream that broke,
or with nothing used when the upstream refused or never answered.

Invariants: the client's own `Authorization` never goes upstream (each deployment sends its own
credential, or none); response bodies are relayed as the upstream sent them, streams chunk by
chunk; a stream that breaks mid-way ends with an SSE error event the SDKs raise on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.principal import Principal
from gateway.errors import UpstreamInterrupted
from gateway.ledger import usage
from gateway.limits.admission import Admitter, Ticket
from gateway.routing.attempts import Answer
from gateway.routing.plan import Target
from gateway.routing.trace import RouteTrace
from gateway.state import Gateway
from gateway.upstream.adapter import Endpoint, UpstreamCall, adapter_for
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
    trace: RouteTrace


@dataclass(frozen=True, slots=True)
class Streamed:
    """A streamed response: bytes to relay as they arrive."""

    status: int
    media_type: str
    headers: dict[str, str]
    chunks: AsyncIterator[bytes]
    trace: RouteTrace


async def forward(
    gw: Gateway,
    principal: Principal,
    endpoint: Endpoint,
    model: str,
    payload: dict[str, Any],
    request_id: str,
    residency: str | None = None,
) -> Relayed | Streamed:
    """Send one parsed request to the best target (retrying, falling back) and return what
    to relay. `residency` is the request's own residency header, which may only narrow."""
    plan = gw.routing.plan(principal, model, endpoint, principal.residency.narrowed(residency))
    admitter = gw.admitter
    ticket = await admitter.admit(
        principal, endpoint, plan.model, payload, plan.first.upstream_model
    )
    trace = RouteTrace(plan.model, plan.policy.label, plan.eligible)
    calls: dict[str, UpstreamCall] = {}

    async def send(target: Target) -> UpstreamResponse:
        deployment = target.deployment
        call = adapter_for(deployment.provider).prepare(endpoint, payload, target.upstream_model)
        calls[deployment.name] = call
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
        return response

    try:
        answer = await gw.attempter.run(plan, send, trace)
    except BaseException:
        admitter.settle(ticket, usage.NOTHING_USED)
        raise
    response, deployment = answer.response, answer.target.deployment
    out_headers = _passed_headers(response)
    if ticket is not None:
        out_headers.update(ticket.headers)
    out_headers["x-gateway-deployment"] = deployment.name
    out_headers["x-gateway-region"] = deployment.region
    out_headers["x-gateway-attempts"] = str(len(trace.attempts))
    media_type = response.headers.get("content-type", "application/json")
    call = calls[deployment.name]
    if call.stream:
        watcher = SseWatcher(hide_usage_chunk=call.hide_usage_chunk)
        chunks = _relay(answer, watcher, admitter, ticket)
        return Streamed(response.status, media_type, out_headers, chunks, trace)
    try:
        body = await response.read()
    except BaseException as exc:
        answer.finished(ok=None if isinstance(exc, asyncio.CancelledError) else False)
        admitter.settle(ticket, None)  # unknown how much was generated: the reservation stands
        raise
    answer.finished(ok=True)
    admitter.settle(ticket, usage.from_body(body))
    return Relayed(response.status, media_type, out_headers, body, trace)


def _passed_headers(response: UpstreamResponse) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower().startswith(_PASSED_PREFIXES)
    }


async def _relay(
    answer: Answer, watcher: SseWatcher, admitter: Admitter, ticket: Ticket | None
) -> AsyncIterator[bytes]:
    """Relay upstream chunks; a break mid-stream ends with an SSE `error` event.

    Settles in `finally`, so a client that hangs up (the server cancels this generator) is
    still charged for what was generated up to then, and the upstream request is aborted.
    """
    response = answer.response
    ok: bool | None = None  # the client left before the end: no verdict on the deployment
    try:
        async for chunk in response.chunks():
            out = watcher.feed(chunk)
            if out:
                yield out
        tail = watcher.flush()
        if tail:
            yield tail
        ok = True
    except UpstreamInterrupted as exc:
        ok = False
        error = {
            "error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}
        }
        yield b"data: " + orjson.dumps(error) + b"\n\n"
    finally:
        answer.finished(ok=ok)
        prompt_tokens = ticket.prompt_tokens if ticket is not None else 0
        used = usage.from_usage(watcher.usage) or usage.metered(
            prompt_tokens, watcher.content_events
        )
        admitter.settle(ticket, used)
        await response.close()
