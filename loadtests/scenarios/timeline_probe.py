"""Timestamps along one request's path, inside the gateway process (`loadtests/timeline.py`).

Imported before `gateway.cli.main` runs, it wraps a dozen functions of the request path so that
each records `(event, perf_counter_ns)` in a list; SIGUSR1 writes the list to `$TIMELINE_OUT`
as JSON. A diagnostic only: it wraps internals by name, so it follows the code, not an API,
and each wrapper costs a little (about a microsecond per event).

Events, in request order: `arrive` (the request's bytes reach the server protocol), `app`
(the ASGI app is called), `count<`/`count>` (prompt counting), `redis-send` / `redis-recv`
(a pipelined batch written to / answered by Redis: the reserve, then the usage append, then
the settle after the answer), `upstream-send` / `upstream-recv` (the request to the upstream
and its answer), `record<`/`record>` (building the usage record), `answer<`/`answer>` (the
whole answer written to the client).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import gateway.ledger.ledger as ledger
import gateway.limits.admission as admission
import gateway.redis_batch as redis_batch
import gateway.upstream.http1 as http1
import gateway.web.middleware as middleware
import gateway.web.server_protocol as server_protocol

EVENTS: list[tuple[str, int]] = []
_now = time.perf_counter_ns


def _event(name: str) -> None:
    EVENTS.append((name, _now()))


def _before(owner: Any, attribute: str, name: str) -> None:
    """Record `name` each time `owner.attribute` (a plain function or method) is called."""
    original: Callable[..., Any] = getattr(owner, attribute)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _event(name)
        return original(*args, **kwargs)

    setattr(owner, attribute, wrapped)


def _around(owner: Any, attribute: str, name: str) -> None:
    """Record `name<` and `name>` around each call of the function `owner.attribute`."""
    original: Callable[..., Any] = getattr(owner, attribute)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        _event(name + "<")
        try:
            return original(*args, **kwargs)
        finally:
            _event(name + ">")

    setattr(owner, attribute, wrapped)


def _before_async(owner: Any, attribute: str, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, attribute)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        _event(name)
        return await original(*args, **kwargs)

    setattr(owner, attribute, wrapped)


_before(server_protocol.DeadlineHttpToolsProtocol, "data_received", "arrive")
_before_async(middleware.GatewayApp, "__call__", "app")
_around(admission, "count_prompt_tokens", "count")  # the name admission calls
_before(redis_batch._Connection, "send", "redis-send")
_before(redis_batch._Connection, "data_received", "redis-recv")
_before_async(http1._Connection, "exchange", "upstream-send")
_before(http1._Connection, "data_received", "upstream-recv")
_around(ledger.Ledger, "record", "record")
_around(server_protocol, "write_whole_response", "answer")


def _dump(_signum: int, _frame: object) -> None:
    with open(os.environ["TIMELINE_OUT"], "w") as out:
        json.dump(EVENTS, out)


signal.signal(signal.SIGUSR1, _dump)
