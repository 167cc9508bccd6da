"""The gateway app running in the test's own event loop, called over ASGI without a socket.

`running_gateway` migrates a SQLite database, makes a tenant and key, and runs the app's
lifespan, so background tasks (health prober, config reloader) run beside the test.
`call` drives one request and hands back the status, headers and the body as it streams:
httpx's ASGITransport would buffer the whole body, and these tests need a stream that is
still open while something else happens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.auth.keys import display_prefix, generate_key, hash_key
from gateway.config import GatewayConfig
from gateway.db import keys, tenants
from gateway.db.engine import make_engine, make_sessionmaker
from gateway.db.migrate import upgrade
from gateway.settings import Settings
from gateway.state import Gateway

PEPPER = "test-pepper"


@dataclass
class Running:
    app: Starlette
    key: str

    @property
    def gw(self) -> Gateway:
        return self.app.state.gateway

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Reply:
        return await call(self.app, method, path, body, {"authorization": f"Bearer {self.key}"})

    async def chat(self, model: str, *, stream: bool = False) -> Reply:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        return await self.call("POST", "/v1/chat/completions", body)


async def _seed(url: str) -> str:
    await asyncio.to_thread(upgrade, url)
    engine = make_engine(Settings(database_url=url))
    key = generate_key()
    now = datetime.now(UTC)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            tenant = await tenants.create_tenant(session, name="t", now=now)
            await keys.insert_key(
                session,
                tenant_id=tenant.id,
                key_hash=hash_key(key, PEPPER.encode()),
                prefix=display_prefix(key),
                now=now,
            )
    finally:
        await engine.dispose()
    return key


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    config: GatewayConfig,
    transport: httpx.AsyncBaseTransport,
    *,
    config_path: Path | None = None,
) -> AsyncIterator[Running]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.db'}"
    key = await _seed(url)
    settings = Settings(database_url=url, key_pepper=PEPPER, default_output_tokens=50)
    app = create_app(settings, config, transport=transport, config_path=config_path)
    async with app.router.lifespan_context(app):
        yield Running(app, key)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    _chunks: asyncio.Queue[bytes | None]
    _task: asyncio.Task[None]

    async def next_chunk(self) -> bytes | None:
        """The next body chunk, None at the end."""
        return await asyncio.wait_for(self._chunks.get(), 10)

    async def body(self) -> bytes:
        """The rest of the body."""
        parts = []
        while (chunk := await self.next_chunk()) is not None:
            parts.append(chunk)
        await self._task
        return b"".join(parts)

    async def json(self) -> Any:
        return orjson.loads(await self.body())


async def call(
    app: Starlette,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
) -> Reply:
    """Start one request; return once the response headers are sent."""
    payload = b"" if body is None else orjson.dumps(body)
    raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw_headers += [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 40000),
        "server": ("gateway.test", 80),
        "state": {},
    }
    started: asyncio.Future[tuple[int, dict[str, str]]] = asyncio.Future()
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    finished = asyncio.Event()
    sent_body = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await finished.wait()  # the client stays until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = {k.decode(): v.decode() for k, v in message.get("headers", [])}
            started.set_result((message["status"], headers))
        elif message["type"] == "http.response.body":
            if message.get("body"):
                await chunks.put(message["body"])
            if not message.get("more_body", False):
                finished.set()
                await chunks.put(None)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            finished.set()
            if not started.done():
                started.set_exception(RuntimeError("the app returned without a response"))

    task = asyncio.get_running_loop().create_task(run())
    status, response_headers = await asyncio.wait_for(started, 10)
    return Reply(status, response_headers, chunks, task)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` every 10 ms until it holds; fail after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.01)
