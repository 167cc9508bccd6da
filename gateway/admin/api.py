"""The admin API's small framework: operations declared once, served and documented from that.

Each `Operation` names its method, path, roles, request/query/response schemas (pydantic, with
unknown fields forbidden) and handler. `mount` turns them into Starlette routes that, per call:
refuse an address with too many failed logins (429, `throttle.py`, before any database work),
authenticate the admin token and check the role (401/403 before anything else), validate the
query and body (422 with one entry per bad field), run the handler inside one database
transaction (the audit record commits with the change), and render JSON with a strong ETag.
`If-Match` on a write is checked by the handler against the current representation (412 when
stale). `openapi.py` documents the same operations from the same schemas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin.auth import ADMIN, FINANCE, AdminActor, authenticate_admin, require_role
from gateway.admin.invalidation import Invalidator
from gateway.admin.throttle import AuthThrottle
from gateway.clock import Clock
from gateway.db.engine import translate_db_errors
from gateway.errors import (
    ClientError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Unauthenticated,
)

ADMIN_ONLY = frozenset({ADMIN})
READERS = frozenset({ADMIN, FINANCE})


class ValidationFailed(ClientError):
    """422: the body or query does not match the schema; `details` lists every field."""

    status = 422
    type = "invalid_request_error"
    code = "validation_error"

    def __init__(self, error: ValidationError, where: str) -> None:
        self.details = [
            {
                "loc": ".".join(str(part) for part in err["loc"]) or where,
                "msg": err["msg"],
                "type": err["type"],
            }
            for err in error.errors(include_url=False, include_input=False)
        ]
        first = self.details[0] if self.details else {"loc": where, "msg": "invalid"}
        super().__init__(
            f"Invalid {where}: {first['loc']}: {first['msg']}"
            + (f" (and {len(self.details) - 1} more)" if len(self.details) > 1 else ""),
            param=first["loc"],
        )

    def body(self) -> bytes:
        error = orjson.loads(super().body())
        return orjson.dumps({**error, "errors": self.details})


class Unprocessable(ClientError):
    """422 for a value the schema allows but the resource does not (e.g. null for a name)."""

    status = 422
    type = "invalid_request_error"
    code = "validation_error"


class PreconditionFailed(ClientError):
    """412: `If-Match` names a version that is no longer current."""

    status = 412
    type = "invalid_request_error"
    code = "precondition_failed"


class Conflict(ClientError):
    """409: the change conflicts with the current state (e.g. a duplicate name)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


@dataclass
class AdminServices:
    """What admin handlers may use besides their session."""

    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    pepper: bytes
    bootstrap_token: str | None
    invalidator: Invalidator | None = None
    served_counts: Callable[[], Awaitable[dict[str, int]]] | None = None
    pending_usage: Callable[[], Awaitable[list[bytes]]] | None = None
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)


@dataclass
class Call:
    """One admin request, as a handler sees it."""

    request: Request
    session: AsyncSession
    actor: AdminActor
    params: dict[str, str]
    body: Any
    query: Any
    now: datetime
    services: AdminServices
    after_commit: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def if_match(self) -> str | None:
        """The `If-Match` header, when the client sent one."""
        return self.request.headers.get("if-match")

    def check_version(self, current: BaseModel | dict[str, Any]) -> None:
        """412 unless `If-Match` is absent, `*`, or the current representation's ETag."""
        wanted = self.if_match
        if wanted is None or wanted.strip() == "*":
            return
        tags = {tag.strip() for tag in wanted.split(",")}
        if etag_of(_jsonable(current)) not in tags:
            raise PreconditionFailed(
                "The resource changed since you read it (If-Match does not match its ETag). "
                "GET it again and retry."
            )


@dataclass
class Reply:
    """What a handler returns: a body (model, dict, list or raw bytes) and its status."""

    body: Any
    status: int = 200
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    etag: bool = False  # add an ETag (single resources)


Handler = Callable[[Call], Awaitable[Reply]]


@dataclass(frozen=True)
class Operation:
    """One documented admin endpoint."""

    method: str
    path: str  # relative to /admin/v1, Starlette syntax: /tenants/{tenant_id}
    handler: Handler
    summary: str
    tag: str
    roles: frozenset[str] = ADMIN_ONLY
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    csv: bool = False  # also answers `Accept: text/csv`
    errors: tuple[int, ...] = (404,)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def etag_of(data: Any) -> str:
    """A strong ETag of a JSON-ready value."""
    digest = hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f'"{digest[:32]}"'


def _parse(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(exc, where) from None


def _refuse_nul(request: Request) -> None:
    """No id or query value holds a NUL character, and Postgres text cannot store one: refuse
    it here (404 for an id, 422 for a query value) rather than fail in the database."""
    if any("\x00" in value for value in request.path_params.values()):
        raise NotFound("No such resource (an id never contains a NUL character).")
    for name, value in request.query_params.multi_items():
        if "\x00" in value:
            raise Unprocessable(f"{name}: may not contain a NUL character.", param=name)


def _endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        services: AdminServices = request.app.state.admin  # built by the app's lifespan
        address = request.client.host if request.client else ""
        now_s = services.clock.monotonic_s()
        services.auth_throttle.check(address, now_s)
        with translate_db_errors():  # database down, or a table locked: 503, at once
            return await _serve(operation, request, services, address, now_s)

    return endpoint


async def _serve(
    operation: Operation, request: Request, services: AdminServices, address: str, now_s: float
) -> Response:
    """Authenticate, parse, run the operation in one transaction, render its reply."""
    async with services.sessions() as session:
        async with session.begin():
            try:
                actor = await authenticate_admin(
                    session,
                    request.headers.get("authorization"),
                    bootstrap=services.bootstrap_token,
                    pepper=services.pepper,
                )
            except Unauthenticated:
                services.auth_throttle.failed(address, now_s)
                raise
            require_role(actor, operation.roles)
            _refuse_nul(request)
            query = None
            if operation.query is not None:
                query = _parse(operation.query, dict(request.query_params), "query")
            body = None
            if operation.body is not None:
                raw = await request.body()
                try:
                    data = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    raise InvalidRequest("The body is not valid JSON.") from None
                body = _parse(operation.body, data, "body")
            call = Call(
                request,
                session,
                actor,
                dict(request.path_params),
                body,
                query,
                datetime.fromtimestamp(services.clock.now_s(), tz=UTC),
                services,
            )
            reply = await operation.handler(call)
        for action in call.after_commit:
            await action()
    return _render(reply)


def _render(reply: Reply) -> Response:
    headers = dict(reply.headers)
    if isinstance(reply.body, bytes):
        content = reply.body
    else:
        data = _jsonable(reply.body)
        content = orjson.dumps(data)
        if reply.etag:
            headers["etag"] = etag_of(data)
    if reply.status == 204:
        return Response(status_code=204, headers=headers)
    return Response(content, status_code=reply.status, headers=headers, media_type=reply.media_type)


def mount(operations: Sequence[Operation]) -> list[Route]:
    """Starlette routes for the operations (one Route per path, methods merged)."""
    by_path: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {}
    for operation in operations:
        by_path.setdefault(operation.path, {})[operation.method] = _endpoint(operation)
    routes = []
    for path, methods in by_path.items():

        async def dispatch(request: Request, methods: dict[str, Any] = methods) -> Response:
            handler = methods.get(request.method)
            if handler is None:  # starlette's own 405 lacks our error shape
                raise MethodNotAllowed(f"Method {request.method} is not allowed on this path.")
            return await handler(request)

        routes.append(Route(path, dispatch, methods=list(methods)))
    return routes
