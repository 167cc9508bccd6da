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
chunk; a stream that breaks mid-way ends with an SSE error event the SDKs raise on. Nothing
lost: a whole answer, an error answer and a stream's final `[DONE]` event are handed to the
client only once the call's usage record is stored in the journal (or spooled), so a gateway
killed at any moment has recorded every answer a client received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.principal import Principal
from gateway.errors import GatewayError, UpstreamInterrupted
from gateway.ledger import usage
from gateway.ledger.ledger import CallFacts, Ledger
from gateway.ledger.record import UsageRecord
from gateway.ledger.usage import UsedTokens
from gateway.limits.admission import Ticket
from gateway.limits.tokens import count_prompt_tokens, count_text_tokens
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
CLIENT_CLOSED = 499  # the status nginx logs for a client that left before the answer


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
    """A streamed response: bytes to relay as they arrive.

    The server must call `close()` once the response is over, however it ended: a client that
    leaves before the first chunk is read never starts `chunks`, so its cleanup (settle,
    record, abort the upstream) would otherwise never run.
    """

    status: int
    media_type: str
    headers: dict[str, str]
    chunks: AsyncGenerator[bytes, None]
    trace: RouteTrace
    _unstarted: Callable[[], Awaitable[None]]

    async def close(self) -> None:
        """Finish the call now if relaying did not (idempotent)."""
        await self.chunks.aclose()  # runs the relay's cleanup if it had started
        await self._unstarted()  # and this one if it never had


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
    clock = gw.clock
    started_at_s, started_mono_s = clock.now_s(), clock.monotonic_s()
    plan = gw.routing.plan(principal, model, endpoint, principal.residency.narrowed(residency))
    admitter = gw.admitter
    ticket = await admitter.admit(
        principal, endpoint, plan.model, payload, plan.first.upstream_model, plan.eligible
    )
    facts = CallFacts(
        request_id,
        principal.tenant_id,
        principal.key_id,
        endpoint.value,
        plan.model,
        started_at_s,
        started_mono_s,
        stream=payload.get("stream") is True,
    )
    trace = RouteTrace(plan.model, plan.policy.label, plan.eligible)
    finish = _Finish(gw, ticket, facts, trace, endpoint, payload)
    calls: dict[str, UpstreamCall] = {}

    async def send(target: Target) -> UpstreamResponse:
        deployment = target.deployment
        call = adapter_for(deployment.provider).prepare(endpoint, payload, target.upstream_model)
        calls[deployment.name] = call
        facts.deployment, facts.region = deployment.name, deployment.region
        facts.upstream_model = target.upstream_model
        headers = gw.upstream_headers[deployment.name] | {"x-request-id": request_id}
        sent_s = clock.monotonic_s()
        if facts.first_send_mono_s is None:
            facts.first_send_mono_s = sent_s
        response = await gw.clients[deployment.name].post(
            deployment.base + call.path, headers, call.body
        )
        facts.upstream_latency_s = clock.monotonic_s() - sent_s
        if response.status >= 300:  # a redirect is never followed, nor relayed as an answer
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
    except BaseException as exc:
        finish.failed(exc)
        if isinstance(exc, GatewayError):
            await finish.stored()  # the error answer, too, goes out once it is recorded
        raise
    response, deployment = answer.response, answer.target.deployment
    facts.status = response.status
    out_headers = _passed_headers(response)
    if ticket is not None:
        out_headers.update(ticket.headers)
    out_headers["x-gateway-deployment"] = deployment.name
    out_headers["x-gateway-region"] = deployment.region
    out_headers["x-gateway-attempts"] = str(len(trace.attempts))
    media_type = response.headers.get("content-type", "application/json")
    call = calls[deployment.name]
    if call.stream:
        facts.stream = True
        watcher = SseWatcher(hide_usage_chunk=call.hide_usage_chunk, hold_done=True)
        chunks = _relay(answer, watcher, finish)

        async def never_relayed() -> None:
            if finish.finished:
                return
            facts.error_code = "client_disconnected"
            answer.finished(ok=None)
            finish.done(usage.metered(finish.prompt_tokens(), 0))
            await response.close()

        return Streamed(response.status, media_type, out_headers, chunks, trace, never_relayed)
    try:
        body = await response.read()
    except BaseException as exc:
        answer.finished(ok=None if isinstance(exc, asyncio.CancelledError) else False)
        finish.failed(exc, reservation_stands=True)
        raise
    answer.finished(ok=True)
    used, facts.upstream_id = usage.from_body(body)
    if used is None and response.status < 300:  # no usage reported: count the answer ourselves
        used = usage.estimated(finish.prompt_tokens(), finish.answer_tokens(body))
    finish.done(used)
    await finish.stored()
    return Relayed(response.status, media_type, out_headers, body, trace)


class _Finish:
    """Settles the reservation and records the call: exactly once, whatever path ends it."""

    __slots__ = ("_done", "_storing", "endpoint", "facts", "gw", "payload", "ticket", "trace")

    def __init__(
        self,
        gw: Gateway,
        ticket: Ticket | None,
        facts: CallFacts,
        trace: RouteTrace,
        endpoint: Endpoint,
        payload: dict[str, Any],
    ) -> None:
        self.gw, self.ticket, self.facts, self.trace = gw, ticket, facts, trace
        self.endpoint, self.payload = endpoint, payload
        self._done = False
        self._storing: asyncio.Future[None] | None = None

    @property
    def finished(self) -> bool:
        """Whether the call was settled and recorded already."""
        return self._done

    def done(self, used: UsedTokens | None, *, reservation_stands: bool = False) -> None:
        """The call ended; `used` None means no usage is known (an estimate is recorded)."""
        if self._done:
            return
        self._done = True
        gw = self.gw
        record, append = gw.ledger.record(
            self.facts, self.trace, used or usage.estimated(self.prompt_tokens())
        )
        if reservation_stands:
            settlement = gw.admitter.settlement(self.ticket, None)
        else:
            settlement = gw.admitter.settlement(self.ticket, used, record.cost_micros)
        if append is None and settlement is None:
            Ledger.observe(record, self.facts)
            return
        if append is not None:
            self._storing = asyncio.get_running_loop().create_future()
        # One task for all of it: it outlives a client that hangs up, and shutdown waits for it.
        gw.ledger.tasks.spawn(
            _commit(append, self._storing, settlement, record, self.facts),
            name="call.commit",
        )

    async def stored(self) -> None:
        """Wait until the record is in the journal (or spooled). The append runs in its own
        task, so a client that leaves meanwhile cancels only this wait (and the future, which
        nothing else awaits), never the append: no `shield` and its extra loop turn needed."""
        storing = self._storing
        if storing is not None and not storing.done():
            await storing

    def failed(self, exc: BaseException, *, reservation_stands: bool = False) -> None:
        """The call ended in an error before a whole answer was relayed."""
        facts = self.facts
        if isinstance(exc, GatewayError):
            facts.status, facts.error_code = exc.status, exc.code
        elif isinstance(exc, asyncio.CancelledError):
            facts.status, facts.error_code = CLIENT_CLOSED, "client_disconnected"
        else:
            facts.status, facts.error_code = 500, "internal_error"
        self.done(
            None if reservation_stands else usage.NOTHING_USED,
            reservation_stands=reservation_stands,
        )

    def answer_tokens(self, body: bytes) -> int:
        """The generated text of a whole answer, counted (for an answer without usage)."""
        model = self.facts.upstream_model
        if model is None or self.endpoint is Endpoint.EMBEDDINGS:
            return 0
        try:
            return count_text_tokens(usage.answer_text(body), model)
        except Exception:  # an estimate must never fail the recording
            return 0

    def prompt_tokens(self) -> int:
        if self.ticket is not None and self.ticket.prompt_tokens:
            return self.ticket.prompt_tokens
        model = self.facts.upstream_model
        if model is None:
            return 0
        try:
            return count_prompt_tokens(self.endpoint, self.payload, model)
        except Exception:  # an estimate must never fail the recording
            return 0


async def _commit(
    append: Coroutine[Any, Any, None] | None,
    stored: asyncio.Future[None] | None,
    settlement: Coroutine[Any, Any, None] | None,
    record: UsageRecord,
    facts: CallFacts,
) -> None:
    """Journal the record (then tell whoever waits for it), and only once the answer is out,
    report the call and settle the limits: neither of those may delay the answer."""
    try:
        if append is not None:
            try:
                await append
            finally:
                if stored is not None and not stored.done():
                    stored.set_result(None)
            # The waiting handler's wake-up is queued now; yield so it sends the answer first.
            await asyncio.sleep(0)
    finally:
        try:
            Ledger.observe(record, facts)
        finally:
            if settlement is not None:
                await settlement


def _passed_headers(response: UpstreamResponse) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower().startswith(_PASSED_PREFIXES)
    }


async def _relay(answer: Answer, watcher: SseWatcher, finish: _Finish) -> AsyncIterator[bytes]:
    """Relay upstream chunks; a break mid-stream ends with an SSE `error` event.

    Settles and records when the upstream's stream ends (then relays the held-back end once
    the record is stored), or in `finally`, so a client that hangs up (the server cancels
    this generator) is still charged for what was generated up to then, and the upstream
    request is aborted at once by closing its response.
    """
    response = answer.response
    facts = finish.facts
    ok: bool | None = None  # the client left before the end: no verdict on the deployment
    try:
        async for chunk in response.chunks():
            out = watcher.feed(chunk)
            if out:
                if facts.first_chunk_mono_s is None:
                    facts.first_chunk_mono_s = finish.gw.clock.monotonic_s()
                yield out
        tail = watcher.flush()
        ok = True
        # The usage is known now: record it, and let the client see the end of the stream
        # (`[DONE]`, held back by the watcher) only once the record is stored.
        answer.finished(ok=True)
        finish.done(_stream_usage(watcher, finish))
        await finish.stored()
        if tail:
            yield tail
    except UpstreamInterrupted as exc:
        ok = False
        facts.error_code = exc.code
        answer.finished(ok=False)
        finish.done(_stream_usage(watcher, finish))
        await finish.stored()
        error = {
            "error": {"message": exc.message, "type": exc.type, "code": exc.code, "param": None}
        }
        yield b"data: " + orjson.dumps(error) + b"\n\n"
    finally:
        if ok is None and facts.error_code is None:
            facts.error_code = "client_disconnected"
        if not finish.finished:
            answer.finished(ok=ok)
            finish.done(_stream_usage(watcher, finish))
        await response.close()


def _stream_usage(watcher: SseWatcher, finish: _Finish) -> UsedTokens:
    """The stream's reported usage, or tokens metered from what was delivered."""
    prompt_tokens = finish.ticket.prompt_tokens if finish.ticket is not None else 0
    return usage.from_usage(watcher.usage) or usage.metered(
        prompt_tokens or finish.prompt_tokens(), watcher.content_events
    )
