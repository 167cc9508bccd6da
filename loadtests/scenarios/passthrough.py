"""The floor: a bare Starlette + aiohttp pass-through, for the benchmark's reference row.

    .venv/bin/python loadtests/scenarios/passthrough.py --port 9200 --upstream http://127.0.0.1:9100

No auth, no parsing, no limits, no ledger: read the body, POST it upstream over one pooled
aiohttp session, relay the answer (streamed as it comes). Served by uvicorn with uvloop and
httptools, as `gateway serve` is. The gap between this row and the gateway's rows is what the
gateway's features cost; the gap between this row and the upstream's is the price of any
Python proxy on this stack.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    session: aiohttp.ClientSession | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal session
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        yield
        await session.close()

    async def forward(request: Request) -> Response:
        assert session is not None
        body = await request.body()
        upstream_response = await session.post(
            upstream + request.url.path, data=body, headers={"content-type": "application/json"}
        )
        media_type = upstream_response.headers.get("content-type", "application/json")
        if media_type.startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in upstream_response.content.iter_any():
                        yield chunk
                finally:
                    upstream_response.release()

            return StreamingResponse(
                relay(), status_code=upstream_response.status, media_type=media_type
            )
        data = await upstream_response.read()
        upstream_response.release()
        return Response(data, status_code=upstream_response.status, media_type=media_type)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/v1/embeddings", forward, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
