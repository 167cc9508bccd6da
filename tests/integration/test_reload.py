"""Config reload in one process: the real app watching a routing file in tmp_path, upstreams
mocked so a test holds a stream open across the reload."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from gateway.config import load_config
from tests.integration.running_app import running_gateway, wait_until

JSON = {"content-type": "application/json"}


def deployment(name: str, model: str, **extra: object) -> dict:
    return {
        "name": name,
        "provider": "mistral",
        "base_url": f"http://{name}.test/v1",
        "region": "eu-west",
        "jurisdiction": "eu",
        "models": {model: model},
        # total_s + retry deadline_s + 1 s: a retired client closes 1.7 s after the reload
        "timeouts": {"total_s": 0.5},
        **extra,
    }


def write(path: Path, *deployments: dict, **top: object) -> Path:
    """Replace the routing file the way an editor or a ConfigMap update does."""
    document = {"routing": {"retries": {"deadline_s": 0.2}}, "deployments": list(deployments)}
    document.update(top)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(yaml.safe_dump(document))
    scratch.replace(path)
    return path


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Upstream:
    """Mistral-like chat answers per host; streams from `held` hosts pause until `release`."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.release = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # health checks
            return httpx.Response(200, headers=JSON, content=_once(b'{"object":"list","data":[]}'))
        body = orjson.loads(await request.aread())
        model, host = body["model"], request.url.host
        if body.get("stream"):
            events = self._events(host, model)
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, content=events
            )
        answer = {
            "id": "x",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": host}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
        return httpx.Response(200, headers=JSON, content=_once(orjson.dumps(answer)))

    async def _events(self, host: str, model: str) -> AsyncIterator[bytes]:
        for index, word in enumerate(("one ", "two ", "three")):
            if index == 1 and host in self.held:
                await self.release.wait()
            chunk = {
                "id": "x",
                "model": model,
                "choices": [{"index": 0, "delta": {"content": word}}],
            }
            if index == 2:
                chunk["choices"][0]["finish_reason"] = "stop"
                chunk["usage"] = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"


async def test_a_changed_file_adds_a_deployment_and_keeps_unchanged_clients(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.routing.reload")
    path = write(tmp_path / "routing.yaml", deployment("a", "small"))
    upstream = Upstream()
    transport = httpx.MockTransport(upstream.handle)
    async with running_gateway(tmp_path, load_config(path), transport, config_path=path) as gw:
        client_a = gw.gw.clients["a"]
        assert (await gw.chat("large")).status == 404

        write(path, deployment("a", "small", weight=2), deployment("b", "large"))
        await wait_until(lambda: "b" in gw.gw.clients, timeout_s=5)  # polled about every 1 s

        reply = await gw.chat("large")
        assert reply.status == 200
        assert reply.headers["x-gateway-deployment"] == "b"
        await reply.body()
        assert gw.gw.clients["a"] is client_a  # only its weight changed: same pool
        assert gw.gw.attempter.board["b"].active_ok
        assert (await gw.chat("small")).status == 200
    reloaded = [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]
    assert reloaded == [
        "routing file reloaded (file changed): 2 deployments; "
        "added ['b'], removed [], changed ['a']"
    ]


async def test_a_removed_deployment_finishes_its_stream_before_its_client_closes(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "routing.yaml", deployment("a", "small"), deployment("b", "large"))
    upstream = Upstream()
    upstream.held.add("b.test")
    transport = httpx.MockTransport(upstream.handle)
    loop = asyncio.get_running_loop()
    async with running_gateway(tmp_path, load_config(path), transport, config_path=path) as gw:
        old_a, old_b = gw.gw.clients["a"], gw.gw.clients["b"]
        closed: dict[str, float] = {}
        for name, client in (("a", old_a), ("b", old_b)):
            close = client.close

            async def recorded(name: str = name, close=close) -> None:
                closed[name] = loop.time()
                await close()

            client.close = recorded  # type: ignore[method-assign]

        stream = await gw.chat("large", stream=True)
        assert stream.status == 200
        first = await stream.next_chunk()
        assert first is not None and b"one" in first

        # b is removed and a gets a bigger pool (a new client) while b's stream is open
        write(path, deployment("a", "small", max_connections=8))
        assert await gw.app.state.reloader.reload("test")
        assert (await gw.chat("large")).status == 404
        assert gw.gw.clients["a"] is not old_a
        assert gw.gw.retiring == 2

        await asyncio.sleep(0.3)
        upstream.release.set()
        rest = await stream.body()
        ended = loop.time()
        text = (first + rest).decode()
        assert "three" in text and text.endswith("data: [DONE]\n\n")
        assert '"error"' not in text
        assert closed == {}  # the grace period has not passed yet

        await wait_until(lambda: gw.gw.retiring == 0, timeout_s=5)
        assert set(closed) == {"a", "b"}
        assert min(closed.values()) > ended
        assert "b" not in gw.gw.clients and "b" not in gw.gw.upstream_headers
        assert (await gw.chat("small")).status == 200


async def test_a_bad_file_is_refused_and_the_running_config_stays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.routing.reload")
    path = write(tmp_path / "routing.yaml", deployment("a", "small"))
    upstream = Upstream()
    transport = httpx.MockTransport(upstream.handle)
    async with running_gateway(tmp_path, load_config(path), transport, config_path=path) as gw:
        reloader = gw.app.state.reloader
        assert reloader.handles_sighup
        before = gw.gw.routing.config

        bad = deployment("b", "large", weigth=2)  # a misspelled key
        bad["base_url"] = "ftp://b.test"
        write(path, deployment("a", "small"), bad)
        os.kill(os.getpid(), signal.SIGHUP)

        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

        await wait_until(lambda: len(refusals()) == 1)
        await asyncio.sleep(1.1)  # the poller sees the same broken file: no second attempt
        assert len(refusals()) == 1
        line = refusals()[0]
        assert line.startswith("routing file refused (SIGHUP), keeping the running config: ")
        assert "\n" not in line
        assert "deployments[1:b].weigth: Extra inputs are not permitted" in line
        assert "deployments[1:b].base_url: URL scheme should be 'http' or 'https'" in line
        assert gw.gw.routing.config is before
        assert (await gw.chat("small")).status == 200

        write(path, deployment("a", "small"), deployment("b", "large"))  # fixed
        await wait_until(lambda: "b" in gw.gw.clients, timeout_s=5)
        assert (await gw.chat("large")).status == 200
