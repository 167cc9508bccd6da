"""SIMULATOR app: the Starlette app, its routes, the request log and the control API.

Every POST goes through `Simulator.serve`: log the request, authenticate, parse, take a fault,
then run the endpoint. `GET /_sim/requests` shows what the gateway sent (its headers, with `Authorization` only as a
SHA-256 fingerprint, so egress tests can tell which credential reached which upstream without
the log holding one); `POST /_sim/faults`
queues faults; `POST /_sim/reset` clears both. `SimulatorEdge` labels every response
`x-simulator: true` and turns a deliberate `SimulatedDrop` into a cut connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.upstream.simulated.delivery import Delivery
from gateway.upstream.simulated.endpoints import Endpoints
from gateway.upstream.simulated.errors import JSON, SimError, render_error
from gateway.upstream.simulated.faults import (
    Fault,
    SimulatedDrop,
    next_fault,
    parse_faults,
    status_error,
)
from gateway.upstream.simulated.metrics import Load, LoadCounter, metrics_endpoint
from gateway.upstream.simulated.options import SimulatorOptions
from gateway.upstream.simulated.wire import models_body
from gateway.upstream.tokenizer import TokenCounter

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Fault, dict[str, Any]], Awaitable[Response]]


@dataclass
class _State:
    """The fault queue and the request log; reset by `POST /_sim/reset`."""

    options: SimulatorOptions
    faults: deque[Fault] = field(default_factory=deque)
    requests: deque[dict[str, Any]] = field(default_factory=deque)
    rng: random.Random = field(default_factory=random.Random)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)

    def reset(self) -> None:
        """Forget queued faults and logged requests, and restart the fail_rate sequence."""
        self.faults.clear()
        self.requests = deque(maxlen=self.options.request_log_limit)
        self.rng.seed(self.options.seed)


class Simulator:
    """One simulated upstream: options, state, and the plumbing around every endpoint."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.style = options.style
        self.state = _State(options)
        self.state.reset()
        self.delivery = Delivery(options, self.state.shutdown)
        self.endpoints = Endpoints(options, self.delivery)
        self.models_body = models_body(options)

    async def serve(self, request: Request, handler: Handler) -> Response:
        """Log, authenticate, parse, apply faults, then run one endpoint handler."""
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "model": None,
            "stream": False,
            "body": None,
            "had_auth": "authorization" in request.headers,
            "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
            "authorization_sha256": credential_fingerprint(request.headers.get("authorization")),
            "t_mono": time.monotonic(),
            "request_id": request.headers.get("x-request-id"),
            "status": None,
            "outcome": None,
            "t_end_mono": None,  # when a streamed body or a hang ended (done, dropped, left)
            "events_sent": None,  # SSE data events a stream sent before it ended
        }
        self.state.requests.append(entry)
        try:
            self._authenticate(request)
            body = await _parse(request)
            model = body.get("model") if isinstance(body.get("model"), str) else None
            entry.update(model=model, stream=body.get("stream") is True, body=body)
            state = self.state
            fault = next_fault(
                state.faults, request.headers, request.url.path, model, self.options, state.rng
            )
            error = status_error(fault)
            if error is not None:
                entry["outcome"] = "fault"
                raise error
            if fault.hang == "before_headers":
                await self.delivery.hang(entry, request)
            response: Response = await handler(body, fault, entry)
        except HTTPException as exc:  # a route this style does not have
            entry.update(status=exc.status_code, outcome="error")
            raise
        except SimError as error:
            entry.update(status=error.status, outcome=entry["outcome"] or "error")
            logger.debug("simulator: %s -> %d", request.url.path, error.status)
            return render_error(self.style, error)
        entry["status"] = response.status_code
        entry["outcome"] = entry["outcome"] or "ok"
        return response

    def _authenticate(self, request: Request) -> None:
        key = self.options.api_key
        if key is None or request.headers.get("authorization") == f"Bearer {key}":
            return
        if self.style == "vllm":  # vLLM's auth middleware answers a bare string (§2.1)
            raise SimError(401, "Unauthorized", body={"error": "Unauthorized"})
        raise SimError(
            401, "Unauthorized" if self.style == "mistral" else "Incorrect API key provided"
        )

    async def list_models(self, request: Request) -> Response:
        """GET /v1/models."""
        try:
            self._authenticate(request)
        except SimError as error:
            return render_error(self.style, error)
        return Response(self.models_body, media_type=JSON)

    async def program_faults(self, request: Request) -> Response:
        """POST /_sim/faults: queue faults (FIFO, one consumed per matching request)."""
        try:
            faults = parse_faults(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return Response(orjson.dumps({"error": str(exc)}), 400, media_type=JSON)
        self.state.faults.extend(faults)
        return Response(orjson.dumps({"queued": len(self.state.faults)}), media_type=JSON)

    async def request_log(self, request: Request) -> Response:
        """GET /_sim/requests: every request received since the last reset."""
        return Response(orjson.dumps(list(self.state.requests)), media_type=JSON)

    async def reset(self, request: Request) -> Response:
        """POST /_sim/reset: clear the fault queue and the request log."""
        self.state.reset()
        return Response(b'{"ok":true}', media_type=JSON)


def credential_fingerprint(authorization: str | None) -> str | None:
    """How the request log shows an `Authorization` header: its SHA-256, hex."""
    return None if authorization is None else hashlib.sha256(authorization.encode()).hexdigest()


async def _parse(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise SimError(400, f"invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise SimError(400, "the request body must be a JSON object")
    return body


async def _health(request: Request) -> Response:
    return Response(b'{"status":"ok","simulator":true}', media_type=JSON)


async def _not_found(request: Request, exc: Exception) -> Response:
    # FastAPI's shape, which both La Plateforme and vLLM answer unknown routes with.
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    detail = exc.detail if isinstance(exc, HTTPException) else "Not Found"
    return Response(orjson.dumps({"detail": detail}), status, media_type=JSON)


class SimulatorEdge:
    """Pure ASGI middleware: labels every response `x-simulator: true`, and ends a deliberate
    `SimulatedDrop` by returning with the response incomplete, so uvicorn closes the
    connection with a one-line log instead of a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-simulator", b"true")]
            await send(message)

        try:
            await self.app(scope, receive, send_labelled)
        except SimulatedDrop as drop:
            logger.info("simulator: cutting the connection (%s)", drop)


def create_simulator_app(options: SimulatorOptions) -> Starlette:
    """The simulated upstream as a Starlette app (`app.state.simulator` holds its state)."""
    sim = Simulator(options)

    def post(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await sim.serve(request, handler)

        return endpoint

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Load tokenizers before the first request rather than stall it (~0.8 s for Tekken).
        await asyncio.to_thread(TokenCounter.preload, options.models)
        logger.info("simulator: SIMULATED upstream ready (style=%s, no real model)", options.style)
        yield
        sim.state.shutdown.set()

    endpoints = sim.endpoints
    routes = [
        Route("/v1/chat/completions", post(endpoints.chat), methods=["POST"]),
        Route("/v1/fim/completions", post(endpoints.fim), methods=["POST"]),
        Route("/v1/completions", post(endpoints.completions), methods=["POST"]),
        Route("/v1/embeddings", post(endpoints.embeddings), methods=["POST"]),
        Route("/v1/models", sim.list_models, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/_sim/faults", sim.program_faults, methods=["POST"]),
        Route("/_sim/requests", sim.request_log, methods=["GET"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
    ]
    load = Load()
    if options.style == "vllm":  # only vLLM serves Prometheus metrics
        routes.append(Route("/metrics", metrics_endpoint(load, options.models[0]), methods=["GET"]))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SimulatorEdge), Middleware(LoadCounter, load=load)],
        exception_handlers={HTTPException: _not_found},
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app
