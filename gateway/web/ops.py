"""Operator endpoints: `/healthz` (alive), `/readyz` (ready for traffic), `/metrics`.

Readiness never depends on Postgres: requests authenticate from the principal cache and usage
waits in the journal or spool, so a database outage must not pull every pod. Redis counts per
the limiter's failure mode: with `closed` a pod that cannot reach Redis refuses every request,
so it is not ready; with `open` it serves the local share and stays ready (reported degraded).
"""

from __future__ import annotations

import asyncio

import orjson
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from gateway.observability import metrics

CHECK_TIMEOUT_S = 1.0


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return PlainTextResponse("ok")


async def _database_ok(request: Request) -> bool:
    admin = getattr(request.app.state, "admin", None)
    if admin is None:
        return False
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S), admin.sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


async def _redis_ok(request: Request) -> bool | None:
    redis = getattr(request.app.state, "redis_probe", None)
    if redis is None:
        return None  # embedded mode: no Redis
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await redis.ping()
    except Exception:
        return False
    return True


async def readyz(request: Request) -> Response:
    """503 until the app has started, and while a required dependency is down."""
    gw = getattr(request.app.state, "gateway", None)
    if gw is None:
        return _ready(False, {"config": False})
    database, redis = await asyncio.gather(_database_ok(request), _redis_ok(request))
    redis_required = gw.settings.limiter_failure_mode == "closed"
    ready = redis is not False or not redis_required
    checks = {"config": True, "database": database, "redis": redis}
    return _ready(ready, checks, degraded=not database or redis is False)


def _ready(ready: bool, checks: dict[str, bool | None], *, degraded: bool = False) -> Response:
    body = {"ready": ready, "degraded": degraded, "checks": checks}
    return Response(
        orjson.dumps(body), status_code=200 if ready else 503, media_type="application/json"
    )


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition (all workers' counters merged when there are several)."""
    body, content_type = metrics.exposition(getattr(request.app.state, "metrics_state", None))
    return Response(body, media_type=content_type)
