"""SIGTERM during long streams: the open streams run to their end, new requests are refused,
the process exits cleanly, and the ledger holds every stream (embedded mode: the shutdown
flush writes them to SQLite)."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests.e2e.stack import base_env, cli, create_tenant, gateway_process, simulator
from tests.e2e.test_reload import write_routing

STREAMS = 5
TOKEN_DELAY_MS = 200  # 16 tokens: a stream lasts about 3 s


async def _stream(client: httpx.AsyncClient, started: asyncio.Event) -> tuple[str, str]:
    body = {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "a long answer please"}],
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        text = ""
        async for chunk in response.aiter_text():
            text += chunk
            started.set()
        return response.headers["x-request-id"], text


def test_sigterm_lets_open_streams_finish_and_refuses_new_requests(tmp_path: Path) -> None:
    env = base_env()
    database = tmp_path / "gateway.db"
    env["GATEWAY_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    env["GATEWAY_SPOOL_DIR"] = str(tmp_path / "spool")
    with simulator("mistral", tmp_path, env) as sim_url:
        env["GATEWAY_CONFIG"] = str(
            write_routing(tmp_path / "routing.yaml", sim_url, "mistral-small-latest")
        )
        cli(env, "migrate")
        _, key = create_tenant(env, "graceful", "--residency", "eu")
        slow = [{"token_delay_ms": TOKEN_DELAY_MS}] * STREAMS
        httpx.post(f"{sim_url}/_sim/faults", json=slow, timeout=5).raise_for_status()
        with gateway_process(env, tmp_path / "gateway.log") as (base_url, proc):

            async def scenario() -> tuple[list[tuple[str, str]], float, bool]:
                headers = {"authorization": f"Bearer {key}"}
                async with httpx.AsyncClient(
                    base_url=base_url, headers=headers, timeout=30
                ) as client:
                    started = [asyncio.Event() for _ in range(STREAMS)]
                    streams = [asyncio.create_task(_stream(client, event)) for event in started]
                    await asyncio.gather(*(event.wait() for event in started))
                    proc.send_signal(signal.SIGTERM)
                    sent_at = time.monotonic()
                    await asyncio.sleep(0.5)
                    refused = False
                    try:  # a new connection while draining
                        async with httpx.AsyncClient(base_url=base_url, timeout=2) as fresh:
                            await fresh.get("/healthz")
                    except httpx.TransportError:
                        refused = True
                    results = await asyncio.gather(*streams)
                    return results, time.monotonic() - sent_at, refused

            results, drained_s, refused = asyncio.run(scenario())
            # uvicorn re-raises the signal once its graceful shutdown is done
            assert proc.wait(30) in (0, -signal.SIGTERM)
    assert refused, "a new connection was accepted after SIGTERM"
    for _, text in results:
        assert text.rstrip().endswith("data: [DONE]"), text[-200:]
        assert '"error"' not in text
    assert drained_s >= 1.0  # the streams really were still running when SIGTERM arrived
    with sqlite3.connect(database) as db:
        rows = dict(db.execute("SELECT request_id, completion_tokens FROM usage_events").fetchall())
    assert set(rows) == {request_id for request_id, _ in results}
    assert all(tokens == 16 for tokens in rows.values())
