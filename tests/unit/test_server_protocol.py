"""The server protocol's hang-up hook: called once when the client leaves mid-response, never
after the response is complete; a handler can always find its connection's slot in the scope."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.web.server_protocol import ON_DISCONNECT, DeadlineHttpToolsProtocol, DisconnectSlot

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


async def _serve(answer: bool) -> tuple[list[str], DisconnectSlot | None]:
    """One request; its app sets the slot's hook, answers (or not), and the client leaves."""
    calls: list[str] = []
    slots: list[DisconnectSlot] = []
    released = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        slot = scope[ON_DISCONNECT]
        slots.append(slot)
        slot.hook = lambda: calls.append("hook")
        await receive()
        if answer:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        await released.wait()

    config = Config(app=app, lifespan="off", log_level="warning")
    protocol = DeadlineHttpToolsProtocol(config, ServerState(), {})
    transport = _Transport()
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    for _ in range(5):  # let the app run up to its wait
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    protocol.connection_lost(None)  # a second report must not call it again
    released.set()
    for _ in range(5):
        await asyncio.sleep(0)
    return calls, slots[0] if slots else None


async def test_the_hook_is_called_once_when_the_client_leaves_before_the_answer() -> None:
    calls, slot = await _serve(answer=False)
    assert isinstance(slot, DisconnectSlot)
    assert calls == ["hook"]
    assert slot.hook is None


async def test_the_hook_is_not_called_once_the_answer_is_complete() -> None:
    calls, slot = await _serve(answer=True)
    assert isinstance(slot, DisconnectSlot)
    assert calls == []
