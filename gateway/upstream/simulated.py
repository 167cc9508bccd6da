"""SIMULATOR: a fake OpenAI/Mistral-compatible upstream. It runs no model.

The gateway's built-in stand-in for La Plateforme or a vLLM server, used by tests, demos and
load tests (`gateway simulate`). It is always labelled as a simulator: models are
`owned_by: "gateway-simulator"`, every response carries `x-simulator: true`, and log lines say
"simulator".

It speaks three dialects (`SimulatorOptions.style`):
- "mistral": 422 `extra_forbidden` for unknown fields (API-FACTS §1.1-1.2), usage inside the
  last content chunk of a stream, `/v1/fim/completions`, Mistral-style error bodies;
- "vllm": unknown fields ignored, `stream_options` (`include_usage`, `continuous_usage_stats`),
  `/v1/completions`, `tool_choice: "any"` → 400, `{"error": {...}}` bodies with int codes;
- "openai": like vllm, with OpenAI's string error codes and no continuous usage.

Answers are deterministic pseudo-text seeded by the prompt. Token counts are honest: prompt
tokens come from the same `TokenCounter` the gateway uses, and the completion is built from
pieces of exactly one token each, so `usage` is what a re-tokenisation of the output gives.

Faults, for testing the gateway's failure handling: `fail_rate`/`fail_status` options,
per-request `x-sim-*` headers, and a FIFO queue programmed through `POST /_sim/faults` (the
gateway does not forward client headers). `GET /_sim/requests` shows what the gateway sent.

Failure mode: this module *is* the failure injector. A fault that cuts a stream raises
`SimulatedDrop` inside the body iterator; `SimulatorEdge` stops the response there, unfinished,
and uvicorn closes the connection (logging "ASGI callable returned without completing response",
which is expected). Hangs wait until the client gives up or `serve_simulator` is cancelled.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import random
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.upstream.tokenizer import ModelTokenizer, TokenCounter

logger = logging.getLogger(__name__)

Style = Literal["mistral", "vllm", "openai"]
OWNED_BY = "gateway-simulator"

# La Plateforme's ChatCompletionRequest fields (API-FACTS §1.2), SDK-3.7-only ones included.
MISTRAL_CHAT_FIELDS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
        "random_seed", "metadata", "response_format", "tools", "tool_choice",
        "presence_penalty", "frequency_penalty", "n", "prediction", "parallel_tool_calls",
        "prompt_mode", "reasoning_effort", "guardrails", "prompt_cache_key", "safe_prompt",
        "min_tokens", "repetition_penalty", "top_k", "logprobs", "top_logprobs",
        "prompt_logprobs", "top_prompt_logprobs", "service_tier",
    }
)  # fmt: skip
MISTRAL_FIM_FIELDS = frozenset(
    {
        "model", "prompt", "suffix", "temperature", "top_p", "max_tokens", "min_tokens",
        "stream", "stop", "random_seed", "metadata", "prompt_cache_key",
    }
)  # fmt: skip
MISTRAL_EMBEDDING_FIELDS = frozenset(
    {"model", "input", "output_dimension", "output_dtype", "encoding_format", "metadata"}
)

_SSE_DONE = b"data: [DONE]\n\n"
_JSON = "application/json"
_SSE = "text/event-stream"
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_HANGS = ("before_headers", "after_headers")
_USAGE_FAULTS = ("omit", "wrong")
_WRONG_USAGE_OFFSET = 1000
_MAX_CHOICES = 8


@dataclass(frozen=True)
class SimulatorOptions:
    """How the simulated upstream behaves; every field has a test-friendly default."""

    style: Style = "mistral"
    models: tuple[str, ...] = (
        "mistral-small-latest",
        "mistral-large-latest",
        "codestral-latest",
        "mistral-embed",
    )
    ttft_ms: float = 0
    token_delay_ms: float = 0
    output_tokens: int = 16
    fail_rate: float = 0
    fail_status: int = 503
    api_key: str | None = None
    seed: int = 0
    embedding_dim: int = 16
    request_log_limit: int = 10_000


@dataclass(frozen=True)
class Fault:
    """One programmed misbehaviour; `path`/`model`, when set, restrict which request takes it."""

    status: int | None = None
    retry_after: float | None = None
    drop_after_chunks: int | None = None
    hang: str | None = None
    usage: str | None = None
    ttft_ms: float | None = None
    token_delay_ms: float | None = None
    path: str | None = None
    model: str | None = None

    def matches(self, path: str, model: str | None) -> bool:
        """Whether a queued fault applies to this request."""
        return (self.path is None or self.path == path) and (
            self.model is None or self.model == model
        )

    def overlaid(self, other: Fault) -> Fault:
        """This fault with every field `other` sets taking precedence."""
        changes = {f.name: getattr(other, f.name) for f in fields(other)}
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


class SimulatedDrop(Exception):
    """Raised inside a response body on purpose, so the server resets the connection."""


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


@dataclass
class _Completion:
    """What one request produced, before it is rendered as JSON or as SSE chunks."""

    prompt_tokens: int
    pieces: list[str]
    completion_tokens: int
    finish_reason: str
    tool_calls: list[dict[str, Any]] | None = None
    extra_choices: list[tuple[str, int]] = field(default_factory=list)  # n > 1: (text, tokens)


@dataclass
class _State:
    """The fault queue and the request log; reset by `POST /_sim/reset`."""

    options: SimulatorOptions
    faults: deque[Fault] = field(default_factory=deque)
    requests: deque[dict[str, Any]] = field(default_factory=deque)
    rng: random.Random = field(default_factory=random.Random)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)

    def take_fault(self, path: str, model: str | None) -> Fault | None:
        """Pop the first queued fault that matches this request."""
        for index, fault in enumerate(self.faults):
            if fault.matches(path, model):
                del self.faults[index]
                return fault
        return None

    def reset(self) -> None:
        """Forget queued faults and logged requests, and restart the fail_rate sequence."""
        self.faults.clear()
        self.requests = deque(maxlen=self.options.request_log_limit)
        self.rng.seed(self.options.seed)


# Default (type, code) per style and status, from API-FACTS §1.6 (Mistral, as observed) and
# §2.4 (vLLM: exception class names and the int status as code).
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
    return Response(orjson.dumps(body), status, headers=error.headers, media_type=_JSON)


def _invalid(style: Style, field_name: str, kind: str, message: str, value: Any) -> SimError:
    """A request-validation error: Mistral's pydantic-shaped 422, or a 400 elsewhere."""
    if style == "mistral":
        detail = {"type": kind, "loc": ["body", field_name], "msg": message, "input": value}
        return SimError(422, {"detail": [detail]})
    return SimError(400, f"{field_name}: {message}", param=field_name)


def _reject_extra_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    """Mistral's `additionalProperties: false`: one 422 listing every unknown field."""
    detail = [
        {"type": "extra_forbidden", "loc": ["body", key], "msg": "Extra inputs are not permitted"}
        | {"input": value}
        for key, value in body.items()
        if key not in allowed
    ]
    if detail:
        raise SimError(422, {"detail": detail})


def _usage(prompt_tokens: int, completion_tokens: int, fault: Fault) -> dict[str, int] | None:
    """The usage object, or None / inflated numbers when a usage fault says so."""
    if fault.usage == "omit":
        return None
    if fault.usage == "wrong":
        prompt_tokens += _WRONG_USAGE_OFFSET
        completion_tokens += _WRONG_USAGE_OFFSET
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _header_fault(request: Request) -> Fault:
    """The fault described by this request's `x-sim-*` headers (all fields None if none)."""
    headers = request.headers
    try:
        fault = Fault(
            status=_opt(headers.get("x-sim-status"), int),
            retry_after=_opt(headers.get("x-sim-retry-after"), float),
            drop_after_chunks=_opt(headers.get("x-sim-drop-after-chunks"), int),
            hang=headers.get("x-sim-hang"),
            usage=headers.get("x-sim-usage"),
            ttft_ms=_opt(headers.get("x-sim-ttft-ms"), float),
            token_delay_ms=_opt(headers.get("x-sim-token-delay-ms"), float),
        )
        _check_fault(fault)
    except ValueError as exc:
        raise SimError(400, f"bad x-sim-* header: {exc}") from exc
    return fault


def _opt(value: str | None, kind: type[int] | type[float]) -> Any:
    return None if value is None else kind(value)


def _check_fault(fault: Fault) -> None:
    if fault.hang is not None and fault.hang not in _HANGS:
        raise ValueError(f"hang must be one of {_HANGS}")
    if fault.usage is not None and fault.usage not in _USAGE_FAULTS:
        raise ValueError(f"usage must be one of {_USAGE_FAULTS}")
    if fault.status is not None and not 400 <= fault.status <= 599:
        raise ValueError("status must be a 4xx or 5xx code")


def parse_faults(payload: Any) -> list[Fault]:
    """Fault objects from a `POST /_sim/faults` body (one object or a list of them)."""
    items = payload if isinstance(payload, list) else [payload]
    kinds = {"status": int, "drop_after_chunks": int, "path": str, "model": str, "hang": str}
    kinds |= {"usage": str, "retry_after": float, "ttft_ms": float, "token_delay_ms": float}
    faults = []
    for item in items:
        if not isinstance(item, dict) or not set(item) <= set(kinds):
            raise ValueError(f"a fault is an object with keys from {sorted(kinds)}: {item!r}")
        # Numbers may arrive as strings ("retry_after": "2"), as they would in headers.
        values = {k: None if v is None else kinds[k](v) for k, v in item.items()}
        fault = Fault(**values)
        _check_fault(fault)
        faults.append(fault)
    return faults


def _prompt_seed(seed: int, *parts: Any) -> str:
    """A stable seed string for the answer text, derived from the prompt."""
    return f"{seed}:" + hashlib.blake2b(orjson.dumps(parts), digest_size=12).hexdigest()


def _tool_call(tools: list[dict[str, Any]], choice: Any, seed: str) -> dict[str, Any]:
    """A call to the named tool (or the first one), with placeholder required arguments."""
    wanted = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    function = tools[0].get("function", {})
    for tool in tools:
        if tool.get("function", {}).get("name") == wanted:
            function = tool["function"]
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    placeholders = {"string": "simulated", "integer": 1, "number": 1.0, "boolean": True}
    arguments = {
        name: placeholders.get((properties.get(name) or {}).get("type", "string"), "simulated")
        for name in parameters.get("required") or []
    }
    rng = random.Random(seed)
    return {
        "id": "".join(rng.choices(_ALNUM, k=9)),
        "type": "function",
        "function": {
            "name": function.get("name", "tool"),
            "arguments": orjson.dumps(arguments).decode(),
        },
    }


def _model_card(model: str, created: int, style: Style) -> dict[str, Any]:
    """One `/v1/models` entry; the Mistral style adds what the mistralai SDK types need."""
    card: dict[str, Any] = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": OWNED_BY,
    }
    if style == "mistral":
        chat = "embed" not in model
        card["type"] = "base"
        card["capabilities"] = {
            "completion_chat": chat,
            "function_calling": chat,
            "completion_fim": model.startswith("codestral"),
            "fine_tuning": False,
            "vision": False,
        }
    return card


def embedding_vector(text: str, dim: int, seed: int = 0) -> list[float]:
    """A deterministic unit vector for text, float32-exact (so base64 round-trips equal)."""
    digest = hashlib.shake_128(f"{seed}:{text}".encode()).digest(4 * dim)
    raw = [value / 2**31 - 1.0 for value in struct.unpack(f"<{dim}I", digest)]
    norm = sum(value * value for value in raw) ** 0.5 or 1.0
    return list(struct.unpack(f"<{dim}f", struct.pack(f"<{dim}f", *(v / norm for v in raw))))


class _Simulator:
    """The endpoints, bound to one options object and one fault/request state."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.style: Style = options.style
        self.models = frozenset(options.models)
        self.state = _State(options)
        self.state.reset()
        created = int(time.time())
        cards = [_model_card(model, created, options.style) for model in options.models]
        self.models_body = orjson.dumps({"object": "list", "data": cards})

    # -- plumbing shared by every POST endpoint ------------------------------------------------

    async def serve(self, request: Request, handler: Any) -> Response:
        """Log, authenticate, parse, apply faults, then run one endpoint handler."""
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.path,
            "model": None,
            "stream": False,
            "body": None,
            "had_auth": "authorization" in request.headers,
            "t_mono": time.monotonic(),
            "status": None,
            "outcome": None,
        }
        self.state.requests.append(entry)
        try:
            self._authenticate(request)
            body = await self._parse(request)
            model = body.get("model") if isinstance(body.get("model"), str) else None
            entry.update(model=model, stream=body.get("stream") is True, body=body)
            fault = self._fault(request, model)
            if fault.status is not None:
                entry["outcome"] = "fault"
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                raise SimError(
                    fault.status, f"simulated fault: status {fault.status}", headers=headers
                )
            if fault.hang == "before_headers":
                entry["outcome"] = "hang"
                await self._hang(request)
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

    async def _parse(self, request: Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise SimError(400, f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise SimError(400, "the request body must be a JSON object")
        return body

    def _fault(self, request: Request, model: str | None) -> Fault:
        fault = self.state.take_fault(request.url.path, model) or Fault()
        fault = fault.overlaid(_header_fault(request))
        rate = self.options.fail_rate
        if fault.status is None and rate > 0 and self.state.rng.random() < rate:
            fault = replace(fault, status=self.options.fail_status)
        return fault

    async def _hang(self, request: Request | None = None) -> None:
        """Wait until the client goes away or the server stops, then cut the connection."""
        # Inside a streaming body Starlette itself cancels us on disconnect (request=None);
        # before the headers nobody listens for the disconnect, so watch `receive` here.
        waits = [asyncio.ensure_future(self.state.shutdown.wait())]
        if request is not None:
            waits.append(asyncio.ensure_future(request.receive()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        raise SimulatedDrop("simulated hang ended: the client left or the server is stopping")

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model in (None, "") and self.style == "vllm":
            return self.options.models[0]  # vLLM accepts a missing model (API-FACTS §2.2)
        if model is None:
            raise _invalid(self.style, "model", "missing", "Field required", body)
        if not isinstance(model, str):
            raise _invalid(self.style, "model", "string_type", "Input should be a string", model)
        if model not in self.models:
            message = {
                "mistral": f"Invalid model: {model}",
                "vllm": f"The model `{model}` does not exist.",
                "openai": f"The model `{model}` does not exist or you do not have access to it.",
            }[self.style]
            code = "unknown_model" if self.style == "mistral" else None
            raise SimError(404, message, param="model", code=code)
        return model

    def _max_tokens(self, body: dict[str, Any]) -> int | None:
        names = (
            ("max_tokens",) if self.style == "mistral" else ("max_completion_tokens", "max_tokens")
        )
        for name in names:
            value = body.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _invalid(
                    self.style, name, "int_type", "Input should be a valid integer", value
                )
            return value
        return None

    def _text(
        self, tokenizer: ModelTokenizer, limit: int | None, seed: str, *, json_mode: bool
    ) -> tuple[list[str], int, str]:
        """(pieces, completion tokens, finish_reason) of a text answer."""
        wanted = self.options.output_tokens
        n = wanted if limit is None else min(limit, wanted)
        finish = "length" if limit is not None and limit < wanted else "stop"
        if not json_mode:
            return tokenizer.sample_text(n, seed), n, finish
        # JSON mode: braces and quotes are tokens too, so count what was produced.
        words = tokenizer.sample_text(max(n - 6, 0), seed)
        pieces = ['{"answer":"', *words, '"}'] if words else ["{}"]
        return pieces, tokenizer.count_text("".join(pieces)).tokens, finish

    def _delays_s(self, fault: Fault) -> tuple[float, float]:
        ttft = self.options.ttft_ms if fault.ttft_ms is None else fault.ttft_ms
        delay = (
            self.options.token_delay_ms if fault.token_delay_ms is None else fault.token_delay_ms
        )
        return ttft / 1000, delay / 1000

    def _response_id(self, kind: str) -> str:
        prefix = {"chat": "chatcmpl-", "text": "cmpl-", "embedding": "embd-"}[kind]
        return uuid.uuid4().hex if self.style == "mistral" else prefix + uuid.uuid4().hex

    # -- endpoints ------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]) -> Response:
        """POST /v1/chat/completions."""
        style = self.style
        if style == "mistral":
            _reject_extra_fields(body, MISTRAL_CHAT_FIELDS)
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            kind, msg = (
                ("missing", "Field required")
                if messages is None
                else ("list_type", "Input should be a valid list")
            )
            raise _invalid(style, "messages", kind, msg, messages)
        tools = body.get("tools") or None
        if tools is not None and not isinstance(tools, list):
            raise _invalid(style, "tools", "list_type", "Input should be a valid list", tools)
        tool_choice = body.get("tool_choice")
        self._check_tool_choice(tool_choice)
        tokenizer = TokenCounter.for_model(model)
        prompt_tokens = tokenizer.count_chat(messages, tools).tokens
        seed = _prompt_seed(self.options.seed, model, messages, tools)
        if tools and (tool_choice in ("any", "required") or isinstance(tool_choice, dict)):
            call = _tool_call(tools, tool_choice, seed)
            # What a Mistral model emits: [TOOL_CALLS] + [{"name": …, "arguments": …}].
            spoken = orjson.dumps(
                [{"name": call["function"]["name"], "arguments": call["function"]["arguments"]}]
            )
            tokens = tokenizer.count_text(spoken.decode()).tokens + 1
            completion = _Completion(prompt_tokens, [], tokens, "tool_calls", [call])
        else:
            response_format = body.get("response_format") or {}
            json_mode = isinstance(response_format, dict) and response_format.get("type") in (
                "json_object",
                "json_schema",
            )
            limit = self._max_tokens(body)
            pieces, tokens, finish = self._text(tokenizer, limit, seed, json_mode=json_mode)
            completion = _Completion(prompt_tokens, pieces, tokens, finish)
            # `n` answers without streaming only, capped so a request cannot stall the simulator.
            n = body.get("n")
            copies = min(n, _MAX_CHOICES) if isinstance(n, int) and not body.get("stream") else 1
            for index in range(1, copies):
                more, more_tokens, _ = self._text(
                    tokenizer, limit, f"{seed}#{index}", json_mode=json_mode
                )
                completion.extra_choices.append(("".join(more), more_tokens))
        return await self._respond(body, fault, entry, model, completion, "chat")

    def _check_tool_choice(self, choice: Any) -> None:
        allowed = (
            ("auto", "none", "any", "required")
            if self.style == "mistral"
            else ("auto", "none", "required")
        )
        if choice is None or choice in allowed:
            return
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            return
        if self.style == "mistral":
            raise _invalid("mistral", "tool_choice", "enum", f"Input should be {allowed}", choice)
        raise SimError(
            400,
            f'Only named tools, "none", "auto" or "required" are supported, got {choice!r}',
            param="tool_choice",
        )

    async def fim(self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]) -> Response:
        """POST /v1/fim/completions (Mistral only; vLLM has no FIM route)."""
        if self.style != "mistral":
            raise HTTPException(404)
        _reject_extra_fields(body, MISTRAL_FIM_FIELDS)
        model = self._model(body)
        prompt, suffix = body.get("prompt"), body.get("suffix")
        if not isinstance(prompt, str):
            kind, msg = (
                ("missing", "Field required")
                if prompt is None
                else ("string_type", "Input should be a valid string")
            )
            raise _invalid("mistral", "prompt", kind, msg, prompt)
        if suffix is not None and not isinstance(suffix, str):
            raise _invalid(
                "mistral", "suffix", "string_type", "Input should be a valid string", suffix
            )
        tokenizer = TokenCounter.for_model(model)
        prompt_tokens = tokenizer.count_fim(prompt, suffix).tokens
        seed = _prompt_seed(self.options.seed, model, prompt, suffix)
        pieces, tokens, finish = self._text(
            tokenizer, self._max_tokens(body), seed, json_mode=False
        )
        completion = _Completion(prompt_tokens, pieces, tokens, finish)
        return await self._respond(body, fault, entry, model, completion, "chat")

    async def completions(
        self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]
    ) -> Response:
        """POST /v1/completions (vllm/openai styles): prompt text or token ids."""
        if self.style == "mistral":
            raise HTTPException(404)
        model = self._model(body)
        if body.get("suffix") and self.style == "vllm":
            raise SimError(
                400,
                "suffix is only supported for models with FIM completion rendering",
                param="suffix",
            )
        tokenizer = TokenCounter.for_model(model)
        prompt = body.get("prompt")
        prompt_tokens = self._prompt_tokens(tokenizer, prompt)
        seed = _prompt_seed(self.options.seed, model, prompt)
        pieces, tokens, finish = self._text(
            tokenizer, self._max_tokens(body), seed, json_mode=False
        )
        completion = _Completion(prompt_tokens, pieces, tokens, finish)
        return await self._respond(body, fault, entry, model, completion, "text")

    def _prompt_tokens(self, tokenizer: ModelTokenizer, prompt: Any) -> int:
        # A text prompt is encoded with BOS, as vLLM does (add_special_tokens defaults to true).
        if isinstance(prompt, str):
            return tokenizer.count_text(prompt).tokens + 1
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return sum(tokenizer.count_text(p).tokens + 1 for p in prompt)
            if all(isinstance(p, int) for p in prompt):
                return len(prompt)
            if all(isinstance(p, list) for p in prompt):
                return sum(len(p) for p in prompt)
        raise SimError(
            400, "prompt must be a string, a list of strings or a list of token ids", param="prompt"
        )

    async def embeddings(
        self, body: dict[str, Any], fault: Fault, entry: dict[str, Any]
    ) -> Response:
        """POST /v1/embeddings: deterministic unit vectors, float or base64."""
        style = self.style
        if style == "mistral":
            _reject_extra_fields(body, MISTRAL_EMBEDDING_FIELDS)
        model = self._model(body)
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _invalid(
                style, "input", "string_type", "Input should be a string or a list of strings", raw
            )
        dim_field = "output_dimension" if style == "mistral" else "dimensions"
        dim = body.get(dim_field) or self.options.embedding_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= 8192:
            raise _invalid(style, dim_field, "int_type", "Input should be a positive integer", dim)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _invalid(
                style, "encoding_format", "enum", "Input should be 'float' or 'base64'", encoding
            )
        prompt_tokens = TokenCounter.for_model(model).count_texts(texts).tokens
        data = []
        for index, text in enumerate(texts):
            vector: Any = embedding_vector(text, dim, self.options.seed)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "embedding": vector, "index": index})
        out: dict[str, Any] = {
            "id": self._response_id("embedding"),
            "object": "list",
            "data": data,
            "model": model,
        }
        usage = _usage(prompt_tokens, 0, fault)
        if usage is not None:
            if style != "mistral":
                del usage["completion_tokens"]
            out["usage"] = usage
        ttft_s, _ = self._delays_s(fault)
        if ttft_s:
            await asyncio.sleep(ttft_s)
        return self._json(out, fault, entry)

    # -- rendering ------------------------------------------------------------------------------

    async def _respond(
        self,
        body: dict[str, Any],
        fault: Fault,
        entry: dict[str, Any],
        model: str,
        completion: _Completion,
        kind: Literal["chat", "text"],
    ) -> Response:
        if body.get("stream") is True:
            events = self._stream_events(body, fault, model, completion, kind)
            entry["outcome"] = "streaming"
            return StreamingResponse(self._paced(events, fault, entry), media_type=_SSE)
        ttft_s, delay_s = self._delays_s(fault)
        if ttft_s or delay_s:  # what a client would wait for the whole answer
            await asyncio.sleep(ttft_s + delay_s * max(completion.completion_tokens - 1, 0))
        text = "".join(completion.pieces)
        texts = [(text, completion.completion_tokens), *completion.extra_choices]
        choices = [
            self._final_choice(kind, index, t, completion) for index, (t, _) in enumerate(texts)
        ]
        out: dict[str, Any] = {
            "id": self._response_id(kind),
            "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
        }
        usage = _usage(completion.prompt_tokens, sum(tokens for _, tokens in texts), fault)
        if usage is not None:
            out["usage"] = usage
        return self._json(out, fault, entry)

    def _final_choice(
        self, kind: str, index: int, text: str, completion: _Completion
    ) -> dict[str, Any]:
        if kind == "text":
            return {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": completion.finish_reason,
            }
        message: dict[str, Any] = {"role": "assistant", "content": text, "tool_calls": None}
        if completion.tool_calls:
            # Mistral sends "" beside tool calls; OpenAI-compatible servers send null.
            message.update(
                content="" if self.style == "mistral" else None, tool_calls=completion.tool_calls
            )
        choice = {"index": index, "message": message, "finish_reason": completion.finish_reason}
        if self.style != "mistral":
            choice["logprobs"] = None
        return choice

    def _json(self, out: dict[str, Any], fault: Fault, entry: dict[str, Any]) -> Response:
        """A JSON 200, unless a fault hangs after the headers or cuts the body short."""
        payload = orjson.dumps(out)
        if fault.hang != "after_headers" and fault.drop_after_chunks is None:
            return Response(payload, media_type=_JSON)

        async def faulty_body() -> AsyncIterator[bytes]:
            if fault.hang == "after_headers":
                entry["outcome"] = "hang"
                await self._hang()
            entry["outcome"] = "dropped"
            yield payload[: len(payload) // 2]
            raise SimulatedDrop("simulated fault: connection dropped mid-body")

        return StreamingResponse(faulty_body(), media_type=_JSON)

    def _stream_events(
        self,
        body: dict[str, Any],
        fault: Fault,
        model: str,
        completion: _Completion,
        kind: Literal["chat", "text"],
    ) -> Iterator[tuple[bytes, bool]]:
        """The SSE data events of a stream, as (bytes, carries-a-token), without [DONE]."""
        options = body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        mistral = self.style == "mistral"
        include_usage = not mistral and options.get("include_usage") is True
        continuous = (
            self.style == "vllm" and include_usage and options.get("continuous_usage_stats") is True
        )
        prompt_tokens, total_tokens = completion.prompt_tokens, completion.completion_tokens
        head = {
            "id": self._response_id(kind),
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

        def frame(choice: dict[str, Any] | None, usage: dict[str, int] | None) -> bytes:
            chunk = head | {"choices": [choice] if choice is not None else []}
            if usage is not None:
                chunk["usage"] = usage
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            if kind == "text":
                return {
                    "index": 0,
                    "text": delta.get("content", ""),
                    "logprobs": None,
                    "finish_reason": finish,
                }
            out = {"index": 0, "delta": delta, "finish_reason": finish}
            if not mistral:
                out["logprobs"] = None
            return out

        def usage_at(tokens: int, last: bool) -> dict[str, int] | None:
            if (mistral and last) or continuous:
                return _usage(prompt_tokens, tokens, fault)
            return None

        if kind == "chat":
            yield (
                frame(choice({"role": "assistant", "content": ""}, None), usage_at(0, False)),
                False,
            )
        if completion.tool_calls:
            calls = [call | {"index": 0} for call in completion.tool_calls]
            yield (
                frame(choice({"tool_calls": calls}, "tool_calls"), usage_at(total_tokens, True)),
                True,
            )
        else:
            pieces = completion.pieces or [""]
            last_index = len(pieces) - 1
            for index, piece in enumerate(pieces):
                last = index == last_index
                tokens = total_tokens if last else min(index + 1, total_tokens)
                finish = completion.finish_reason if last else None
                yield frame(choice({"content": piece}, finish), usage_at(tokens, last)), True
        if include_usage:
            usage = _usage(prompt_tokens, total_tokens, fault)
            if usage is not None:
                yield frame(None, usage), False

    async def _paced(
        self, events: Iterator[tuple[bytes, bool]], fault: Fault, entry: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        """Emit events with TTFT and inter-token delays; apply hang and drop faults."""
        ttft_s, delay_s = self._delays_s(fault)
        drop_after = fault.drop_after_chunks
        finished = False
        try:
            if fault.hang == "after_headers":
                entry["outcome"] = "hang"
                await self._hang()
            if ttft_s:
                await asyncio.sleep(ttft_s)
            sent, first_token = 0, True
            for event, is_token in events:
                if drop_after is not None and sent >= drop_after:
                    break
                if is_token and not first_token and delay_s:
                    await asyncio.sleep(delay_s)
                first_token = first_token and not is_token
                yield event
                sent += 1
            if drop_after is not None:
                entry["outcome"] = "dropped"
                raise SimulatedDrop(f"simulated fault: connection dropped after {sent} chunks")
            yield _SSE_DONE
            finished = True
        finally:
            if finished:
                entry["outcome"] = "ok"
            elif entry["outcome"] == "streaming":
                entry["outcome"] = "cancelled"

    # -- GET endpoints and the control API ---------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        """GET /v1/models."""
        try:
            self._authenticate(request)
        except SimError as error:
            return render_error(self.style, error)
        return Response(self.models_body, media_type=_JSON)

    async def program_faults(self, request: Request) -> Response:
        """POST /_sim/faults: queue faults (FIFO, one consumed per matching request)."""
        try:
            faults = parse_faults(orjson.loads(await request.body()))
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            return Response(orjson.dumps({"error": str(exc)}), 400, media_type=_JSON)
        self.state.faults.extend(faults)
        return Response(orjson.dumps({"queued": len(self.state.faults)}), media_type=_JSON)

    async def request_log(self, request: Request) -> Response:
        """GET /_sim/requests: every request received since the last reset."""
        return Response(orjson.dumps(list(self.state.requests)), media_type=_JSON)

    async def reset(self, request: Request) -> Response:
        """POST /_sim/reset: clear the fault queue and the request log."""
        self.state.reset()
        return Response(b'{"ok":true}', media_type=_JSON)


async def _health(request: Request) -> Response:
    return Response(b'{"status":"ok","simulator":true}', media_type=_JSON)


async def _not_found(request: Request, exc: Exception) -> Response:
    # FastAPI's shape, which both La Plateforme and vLLM answer unknown routes with.
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    detail = exc.detail if isinstance(exc, HTTPException) else "Not Found"
    return Response(orjson.dumps({"detail": detail}), status, media_type=_JSON)


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
    sim = _Simulator(options)

    def post(handler: Any) -> Any:
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

    routes = [
        Route("/v1/chat/completions", post(sim.chat), methods=["POST"]),
        Route("/v1/fim/completions", post(sim.fim), methods=["POST"]),
        Route("/v1/completions", post(sim.completions), methods=["POST"]),
        Route("/v1/embeddings", post(sim.embeddings), methods=["POST"]),
        Route("/v1/models", sim.list_models, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/_sim/faults", sim.program_faults, methods=["POST"]),
        Route("/_sim/requests", sim.request_log, methods=["GET"]),
        Route("/_sim/reset", sim.reset, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SimulatorEdge)],
        exception_handlers={HTTPException: _not_found},
        lifespan=lifespan,
    )
    app.state.simulator = sim
    return app


async def serve_simulator(host: str, port: int, options: SimulatorOptions) -> None:
    """Run the simulator with uvicorn in the current event loop until cancelled or signalled."""
    app = create_simulator_app(options)
    # log_config=None: the embedding process (CLI, test run) owns logging configuration.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    logger.info("simulator: SIMULATED %s-style upstream on http://%s:%d", options.style, host, port)
    try:
        await server.serve()
    except asyncio.CancelledError:
        # Cancellation skips uvicorn's own shutdown: wake hung requests, close sockets and
        # connections, so the port is free again when this returns.
        app.state.simulator.state.shutdown.set()
        if server.started:
            server.should_exit = True
            await server.shutdown()
        raise


def run_simulator(host: str, port: int, options: SimulatorOptions) -> None:
    """Run the simulator until Ctrl-C (blocking; uses uvloop when it is installed)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        uvloop = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None:
            uvloop.run(serve_simulator(host, port, options))
        else:
            asyncio.run(serve_simulator(host, port, options))
