"""SIMULATOR delivery: how an answer reaches the client, paced, and broken on purpose.

A JSON answer arrives after the whole generation time (TTFT plus one delay per further token);
a stream waits TTFT, then one delay before each further token. Faults apply here: a hang waits
until the client leaves or the server stops, and a drop raises `SimulatedDrop` inside the body
iterator so `SimulatorEdge` leaves the response unfinished and the connection is cut. A stall
is a hang after some chunks; an endless stream never runs out of chunks. The request-log entry
counts the events a stream sent (`events_sent`), so a test can compare with what was billed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.upstream.simulated.errors import JSON
from gateway.upstream.simulated.faults import ENDLESS_MIN_DELAY_MS, Fault, SimulatedDrop
from gateway.upstream.simulated.options import SimulatorOptions
from gateway.upstream.simulated.wire import (
    SSE_DONE,
    Completion,
    Kind,
    completion_body,
    stream_events,
)

_SSE = "text/event-stream"


class Delivery:
    """Sends answers for one simulator; `shutdown` ends every hang."""

    def __init__(self, options: SimulatorOptions, shutdown: asyncio.Event) -> None:
        self.options = options
        self.shutdown = shutdown

    def delays_s(self, fault: Fault) -> tuple[float, float]:
        """(time to first token, delay between tokens) in seconds; the fault's win."""
        options = self.options
        ttft = options.ttft_ms if fault.ttft_ms is None else fault.ttft_ms
        delay = options.token_delay_ms if fault.token_delay_ms is None else fault.token_delay_ms
        return ttft / 1000, delay / 1000

    async def wait_for_whole(self, fault: Fault, tokens: int) -> None:
        """Wait as long as a client would for a whole answer of `tokens` tokens."""
        ttft_s, delay_s = self.delays_s(fault)
        wait_s = ttft_s + delay_s * max(tokens - 1, 0)
        if wait_s:
            await asyncio.sleep(wait_s)

    async def hang(self, entry: dict[str, Any], request: Request | None = None) -> NoReturn:
        """Wait until the client goes away or the server stops, then cut the connection."""
        entry["outcome"] = "hang"
        # Inside a streaming body Starlette itself cancels us on disconnect (request=None);
        # before the headers nobody listens for the disconnect, so watch `receive` here.
        waits = [asyncio.ensure_future(self.shutdown.wait())]
        if request is not None:
            waits.append(asyncio.ensure_future(request.receive()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            entry["t_end_mono"] = time.monotonic()
            for wait in waits:
                wait.cancel()
        raise SimulatedDrop("simulated hang ended: the client left or the server is stopping")

    async def answer(
        self,
        body: dict[str, Any],
        fault: Fault,
        entry: dict[str, Any],
        model: str,
        completion: Completion,
        kind: Kind,
    ) -> Response:
        """A completion as SSE when the body asks to stream, else as one JSON body."""
        style = self.options.style
        if body.get("stream") is True:
            events = stream_events(
                style, kind, model, completion, fault, body.get("stream_options")
            )
            entry["outcome"] = "streaming"
            return StreamingResponse(self._paced(events, fault, entry), media_type=_SSE)
        await self.wait_for_whole(fault, completion.completion_tokens)
        return self.json(completion_body(style, kind, model, completion, fault), fault, entry)

    def json(self, out: dict[str, Any], fault: Fault, entry: dict[str, Any]) -> Response:
        """A JSON 200, unless a fault hangs after the headers or cuts the body short."""
        payload = orjson.dumps(out)
        if fault.hang != "after_headers" and fault.drop_after_chunks is None:
            return Response(payload, media_type=JSON)

        async def faulty_body() -> AsyncIterator[bytes]:
            if fault.hang == "after_headers":
                await self.hang(entry)
            entry["outcome"] = "dropped"
            yield payload[: len(payload) // 2]
            raise SimulatedDrop("simulated fault: connection dropped mid-body")

        return StreamingResponse(faulty_body(), media_type=JSON)

    async def _paced(
        self, events: Iterator[tuple[bytes, bool]], fault: Fault, entry: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        """Emit events with TTFT and inter-token delays; apply hang and drop faults."""
        ttft_s, delay_s = self.delays_s(fault)
        if fault.endless:
            delay_s = max(delay_s, ENDLESS_MIN_DELAY_MS / 1000)
        drop_after, stall_after = fault.drop_after_chunks, fault.stall_after_chunks
        finished = False
        entry["events_sent"] = sent = 0
        try:
            if fault.hang == "after_headers":
                await self.hang(entry)
            if ttft_s:
                await asyncio.sleep(ttft_s)
            first_token = True
            for event, is_token in events:
                if drop_after is not None and sent >= drop_after:
                    break
                if stall_after is not None and sent >= stall_after:
                    await self.hang(entry)  # silent until the client leaves
                if is_token and not first_token and delay_s:
                    await asyncio.sleep(delay_s)
                first_token = first_token and not is_token
                yield event
                sent += 1
                entry["events_sent"] = sent
            if drop_after is not None:
                entry["outcome"] = "dropped"
                raise SimulatedDrop(f"simulated fault: connection dropped after {sent} chunks")
            yield SSE_DONE
            finished = True
        finally:
            entry["t_end_mono"] = time.monotonic()  # comparable across processes (Linux)
            if finished:
                entry["outcome"] = "ok"
            elif entry["outcome"] == "streaming":
                entry["outcome"] = "cancelled"
