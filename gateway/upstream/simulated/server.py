"""SIMULATOR server: run the fake upstream under uvicorn (`gateway simulate`, tests, demos)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn

from gateway.upstream.simulated.app import create_simulator_app
from gateway.upstream.simulated.options import SimulatorOptions

logger = logging.getLogger(__name__)


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
