"""The composition root: `create_app` wires settings, config and backends into one Starlette app.

Nothing else builds objects with dependencies; everything below receives them as arguments.
`create_app_from_env` is the factory uvicorn calls in each worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from gateway.admin.api import AdminServices
from gateway.admin.invalidation import Invalidator
from gateway.admin.throttle import AuthThrottle
from gateway.auth.principal import Authenticator
from gateway.clock import Clock, SystemClock
from gateway.config import GatewayConfig, load_config
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.errors import GatewayError
from gateway.heap import freeze_startup_heap
from gateway.ledger.ledger import Ledger
from gateway.ledger.pipeline import LedgerPipeline
from gateway.limits import FailoverLimiter, Limiter, MemoryLimiter, RedisLimiter
from gateway.limits.admission import Admitter
from gateway.observability import metrics
from gateway.observability.logging import configure_logging, flush_logs, flush_logs_forever
from gateway.routing.probes import HealthProber
from gateway.routing.reload import ConfigReloader
from gateway.settings import Settings
from gateway.state import Gateway
from gateway.tasks import BackgroundTasks
from gateway.upstream.tokenizer import TokenCounter
from gateway.web import errors as web_errors
from gateway.web.endpoints import proxy_endpoints
from gateway.web.middleware import EdgeMiddleware, GatewayApp
from gateway.web.routes import routes
from gateway.web.server_protocol import DeadlineHttpToolsProtocol

log = logging.getLogger("gateway.app")


def create_app(
    settings: Settings,
    config: GatewayConfig,
    *,
    clock: Clock | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    config_path: Path | None = None,
) -> Starlette:
    """Build the gateway application. `transport` replaces the network (tests);
    `config_path`, the file `config` came from, is watched and re-read on change or SIGHUP."""
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
        tasks = BackgroundTasks()
        limiter, redis_limiter = make_limiter(settings, clock)
        pipeline = LedgerPipeline(settings, config, make_sessionmaker(engine), clock)
        await pipeline.start(limiter)
        admitter = Admitter(
            limiter,
            default_output_tokens=settings.default_output_tokens,
            tasks=tasks,
            prices=pipeline.catalog,
            clock=clock,
        )
        ledger = Ledger(pipeline.journal, pipeline.catalog, tasks, clock)
        gateway = Gateway.build(
            settings,
            config,
            clock=clock,
            auth=auth,
            admitter=admitter,
            ledger=ledger,
            transport=transport,
        )
        app.state.ledger_pipeline = pipeline
        # Load tokenizers now (~0.8 s each), not on the first request that needs one.
        upstream_models = {m for d in config.deployments for m in d.models.values()}
        await asyncio.to_thread(TokenCounter.preload, upstream_models)
        if redis_limiter is not None and not await redis_limiter.warm_up():
            log.warning("Redis is unavailable at start; the limiter failure mode applies")
        app.state.gateway = gateway
        # Cluster too: PUBLISH reaches every node, so one node's connection hears them all.
        pubsub_client = Redis.from_url(settings.redis_url) if settings.redis_url else None
        invalidator = Invalidator(auth, pubsub_client, key_prefix=settings.redis_key_prefix)
        listener = asyncio.get_running_loop().create_task(invalidator.listen_forever())
        app.state.admin = AdminServices(
            sessions=make_sessionmaker(engine),
            clock=clock,
            pepper=settings.key_pepper.get_secret_value().encode(),
            bootstrap_token=(
                settings.admin_token.get_secret_value() if settings.admin_token else None
            ),
            invalidator=invalidator,
            served_counts=pipeline.served_counts,
            pending_usage=pipeline.pending_payloads,
            auth_throttle=AuthThrottle(
                max_failures=settings.admin_auth_max_failures,
                window_s=settings.admin_auth_window_s,
            ),
        )
        app.state.redis_probe = pubsub_client
        app.state.metrics_state = metrics.StateCollector(
            lambda: (
                app.state.gateway.attempter.board.snapshot(clock.monotonic_s()),
                limiter.degraded if isinstance(limiter, FailoverLimiter) else None,
            )
        )
        prober = HealthProber(gateway, transport)
        prober.start()
        reloader = ConfigReloader(config_path, gateway) if config_path is not None else None
        if reloader is not None:
            reloader.start()
        app.state.prober, app.state.reloader = prober, reloader
        log_flusher = asyncio.get_running_loop().create_task(flush_logs_forever())
        metrics_applier = asyncio.get_running_loop().create_task(metrics.apply_batched_forever())
        log.info("start-up complete; %d objects frozen out of the GC", freeze_startup_heap())
        try:
            yield
        finally:
            log_flusher.cancel()
            metrics_applier.cancel()
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            if pubsub_client is not None:
                await pubsub_client.aclose()
            if reloader is not None:
                await reloader.stop()
            await prober.stop()
            await tasks.drain(timeout_s=10)  # settles and journal appends of the last requests
            await pipeline.stop()
            await gateway.close()
            await engine.dispose()
            if redis_limiter is not None:
                await redis_limiter.aclose()
            metrics.apply_batched()  # the last calls' counts, into multiprocess files too
            flush_logs()

    proxied = proxy_endpoints(settings.max_body_bytes, settings.request_body_timeout_s)
    return GatewayApp(
        direct=proxied,
        routes=routes(proxied),
        middleware=[
            Middleware(
                EdgeMiddleware,
                max_body_bytes=settings.max_body_bytes,
                body_timeout_s=settings.request_body_timeout_s,
            )
        ],
        exception_handlers={
            GatewayError: web_errors.gateway_error,
            HTTPException: web_errors.http_exception,
            Exception: web_errors.unexpected_error,
        },
        lifespan=lifespan,
    )


def make_limiter(settings: Settings, clock: Clock) -> tuple[Limiter, RedisLimiter | None]:
    """In-process buckets in embedded mode; Redis (with its failure policy) in production.

    Also returns the Redis limiter itself, which owns the connection pool to close.
    """
    if settings.redis_url is None:
        return MemoryLimiter(clock), None
    primary = RedisLimiter.from_url(
        settings.redis_url,
        key_prefix=settings.redis_key_prefix,
        timeout_s=settings.redis_timeout_s,
        cluster=settings.redis_cluster,
    )
    limiter = FailoverLimiter(
        primary,
        MemoryLimiter(clock),
        mode=settings.limiter_failure_mode,
        replicas=settings.replicas,
        clock=clock,
    )
    return limiter, primary


def create_app_from_env() -> Starlette:
    """uvicorn's factory: settings from the environment, the routing file they name."""
    settings = Settings()
    configure_logging(settings.log_level)
    DeadlineHttpToolsProtocol.head_timeout_s = settings.request_head_timeout_s
    if not settings.access_log:
        logging.getLogger("gateway.access").setLevel(logging.WARNING)
    return create_app(settings, load_config(settings.config), config_path=settings.config)
