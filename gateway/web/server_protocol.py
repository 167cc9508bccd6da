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

`head_timeout_s` is set per process by `app.create_app_from_env` (uvicorn imports this class
by name in every worker), from `Settings.request_head_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ON_DISCONNECT = "gateway.on_disconnect"  # scope key: the connection's DisconnectSlot


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
        self.scope[ON_DISCONNECT] = self._disconnect_slot  # type: ignore[literal-required]
        super().on_headers_complete()

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
