"""The HTTP server protocol: uvicorn's httptools protocol with a deadline on request heads.

uvicorn (0.55, httptools) arms its `timeout_keep_alive` only after a response, so a client that
opens a connection and trickles its request line and headers a byte at a time (slowloris) holds
that connection, and a slot of the server's, forever. Here every head must be complete within
`head_timeout_s` of the connection opening, or of the previous request's first byte on a
kept-alive connection; else the connection is closed. Bodies have their own deadline, applied
where they are read (`web/endpoints.py`, `web/middleware.py`).

It also tells a handler at once when its client leaves: every request's scope holds, under
`ON_DISCONNECT`, its connection's `DisconnectSlot`; a handler that sets the slot's `hook` has it
called from `connection_lost` if its response was not complete, so the hot path needs no task
of its own waiting on `receive()` for `http.disconnect`. (One slot per connection: uvicorn
serves a connection's requests one at a time, and a shallow copy of the scope still shares it.)

A complete response whose body is known (every non-streamed answer) can go out in ONE write:
the scope holds, under `WHOLE_RESPONSE`, a callable that writes the status line, uvicorn's
default headers, the handler's header block (`header_block`, validated once for the whole
block instead of two regular expressions per header) and the body together, then completes
the cycle as uvicorn's own `send` does. One write is one system call and one TCP segment
instead of two, and the client wakes once (docs/performance.md). It declines (returns False)
whenever uvicorn's path is needed: a response already started, a paused transport, a client
gone, uvicorn's access log on, a HEAD request or a status uvicorn has no line for; the handler
then sends the usual ASGI messages.

It marks a request whose whole body has arrived (`BODY_COMPLETE` in its scope, usually set
before the handler even starts, the body having come with the head): such a body needs no
read deadline, and `asyncio.timeout` costs ~7 us (a uvloop timer armed and cancelled).

`head_timeout_s` is set per process by `app.create_app_from_env` (uvicorn imports this class
by name in every worker), from `Settings.request_head_timeout_s`.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Sequence

from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

ON_DISCONNECT = "gateway.on_disconnect"  # scope key: the connection's DisconnectSlot
BODY_COMPLETE = "gateway.body_complete"  # scope key: True once the whole body has arrived
WHOLE_RESPONSE = "gateway.whole_response"  # scope key: write_whole_response for this request
WholeResponse = Callable[[int, bytes, bytes], bool]

# uvicorn's own rules (httptools_impl.HEADER_RE / HEADER_VALUE_RE), for str: a name is a token,
# a value holds no control character but tab. Tab therefore joins the values for one search.
_BAD_NAME = re.compile(r'[\x00-\x1F\x7F()<>@,;:\[\]={} \t\\"]')
_BAD_VALUE = re.compile(r"[\x00-\x08\x0A-\x1F\x7F]")


class DisconnectSlot:
    """Where the request being served on a connection leaves its hang-up callback."""

    __slots__ = ("hook",)

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol`, closing connections whose request head is late."""

    head_timeout_s: float = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._disconnect_slot = DisconnectSlot()
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        scope = self.scope
        scope[ON_DISCONNECT] = self._disconnect_slot  # type: ignore[literal-required]
        super().on_headers_complete()
        # super() made this request's cycle (queued, for a pipelined request); its task has
        # not run yet, so the scope is complete before the handler reads it.
        if self.cycle is not None and self.cycle.scope is scope:
            scope[WHOLE_RESPONSE] = functools.partial(write_whole_response, self.cycle)  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        self.scope[BODY_COMPLETE] = True  # type: ignore[literal-required]
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        cycle = self.cycle
        super().connection_lost(exc)
        slot = self._disconnect_slot
        hook, slot.hook = slot.hook, None
        if hook is not None and cycle is not None and cycle.disconnected:  # response unfinished
            hook()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_late)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def header_block(headers: Sequence[tuple[str, str]]) -> bytes:
    """`name: value` lines for `write_whole_response`; raises ValueError for a name or value
    uvicorn would refuse (or one that is not latin-1), before anything is written."""
    if _BAD_NAME.search("".join([name for name, _ in headers])) or _BAD_VALUE.search(
        "\t".join([value for _, value in headers])
    ):
        raise ValueError("invalid HTTP header name or value")
    return "".join([f"{name}: {value}\r\n" for name, value in headers]).encode("latin-1")


def write_whole_response(
    cycle: RequestResponseCycle, status: int, head: bytes, body: bytes
) -> bool:
    """Write a complete response (`head` from `header_block`, without content-length or
    connection) in one write and complete `cycle` as uvicorn's `send` would; False, having
    done nothing, when uvicorn's own path must send it."""
    status_line = STATUS_LINE.get(status)
    if (
        status_line is None
        or cycle.response_started
        or cycle.disconnected
        or cycle.flow.write_paused
        or cycle.access_log
        or cycle.scope["method"] == "HEAD"
    ):
        return False
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    content = [status_line]
    for name, value in cycle.default_headers:
        content += (name, b": ", value, b"\r\n")
    content += (head, b"content-length: %d\r\n" % len(body))
    if not cycle.keep_alive:
        content.append(b"connection: close\r\n")
    content += (b"\r\n", body)
    cycle.transport.write(b"".join(content))
    cycle.expected_content_length = 0
    cycle.chunked_encoding = False
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        cycle.transport.close()
    cycle.on_response()
    return True
