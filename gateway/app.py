"""The composition root: `create_app` wires settings, config and backends into one Starlette app.

Nothing else builds objects with dependencies; everything below receives them as arguments.
`create_app_from_env` is the factory uvicorn calls in each worker process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from gateway.auth.principal import Authenticator
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig, load_config
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import GatewayError
from gateway.observability.logging import configure_logging
from gateway.settings import Settings
from gateway.state import Gateway
from gateway.web import errors as web_errors
from gateway.web.middleware import EdgeMiddleware
from gateway.web.routes import routes


def create_app(
    settings: Settings,
    config: GatewayConfig,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """Build the gateway application. `transport` replaces the network (tests)."""
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings)
        auth = Authenticator(
            make_sessionmaker(engine),
            pepper=settings.key_pepper.get_secret_value().encode(),
            clock=clock,
            ttl_s=settings.auth_cache_ttl_s,
        )
        gateway = Gateway.build(settings, config, clock=clock, auth=auth, transport=transport)
        app.state.gateway = gateway
        try:
            yield
        finally:
            await gateway.close()
            await engine.dispose()

    return Starlette(
        routes=routes(),
        middleware=[Middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes)],
        exception_handlers={
            GatewayError: web_errors.gateway_error,
            HTTPException: web_errors.http_exception,
            Exception: web_errors.unexpected_error,
        },
        lifespan=lifespan,
    )


def create_app_from_env() -> Starlette:
    """uvicorn's factory: settings from the environment, the routing file they name."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings, load_config(settings.config))
