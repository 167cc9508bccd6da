"""A fixed-response upstream for benchmarks: canned Mistral-shaped answers, as cheap as possible.

    .venv/bin/python loadtests/scenarios/upstream.py --port 9100 [--prompt-tokens 500]
        [--completion-tokens 48] [--stream-events 16] [--token-delay-ms 0]

This is a SIMULATOR for load tests, not a model. It exists because the benchmark must measure
the gateway, not the upstream: the gateway's own simulator (`gateway simulate`) is a Starlette
app that counts tokens with the real tokenizer, so under load it costs about as much CPU as
the gateway itself and would share the load generator's core. This one is a raw asyncio
protocol (uvloop when installed) that parses just enough HTTP/1.1 (request line,
Content-Length, keep-alive, pipelining) and answers from pre-rendered bytes:

- `POST /v1/chat/completions`: a `chat.completion` body with a `usage` block, in Mistral's
  shape (bare hex id, no `logprobs`); with `"stream": true` in the body, a chunked
  `text/event-stream`: a role chunk, `--stream-events` content chunks (the last one carries
  `finish_reason` and `usage`, as La Plateforme does), then `data: [DONE]`.
- `POST /v1/embeddings`: a `list` of one 16-dimension embedding with `usage`.
- `GET /v1/models`: the model list (the gateway's health probe reads it).

The usage numbers are fixed (`--prompt-tokens`, `--completion-tokens`): the gateway settles
with what the upstream reports, as it would with La Plateforme. `--token-delay-ms` spaces the
stream's content chunks (0: all written at once, right after the role chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

import orjson

MODELS = ("mistral-small-latest", "mistral-large-latest", "codestral-latest", "mistral-embed")
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_ID_SLOT = b"@@ID@@"  # replaced by a fresh 32-hex id in every answer


def _canned(prompt_tokens: int, completion_tokens: int, stream_events: int) -> dict[str, object]:
    created = int(time.time())
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur"]
    text = " ".join(words[i % len(words)] for i in range(completion_tokens))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    head = {"id": "@@ID@@", "created": created, "model": "mistral-small-latest"}
    chat = head | {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "tool_calls": None},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    chunk = head | {"object": "chat.completion.chunk"}
    pieces = _split(text, stream_events)
    events = [
        chunk | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                              "finish_reason": None}]}
    ]  # fmt: skip
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1
        event = chunk | {
            "choices": [
                {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
            ]
        }
        if last:
            event["usage"] = usage
        events.append(event)
    embedding = {
        "id": "@@ID@@",
        "object": "list",
        "data": [{"object": "embedding", "embedding": [0.01 * i for i in range(16)], "index": 0}],
        "model": "mistral-embed",
        "usage": {"prompt_tokens": 16, "completion_tokens": 0, "total_tokens": 16},
    }
    models = {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "bench-upstream"}
            for m in MODELS
        ],
    }
    return {"chat": chat, "events": events, "embedding": embedding, "models": models}


def _split(text: str, parts: int) -> list[str]:
    words = text.split(" ")
    parts = max(1, min(parts, len(words)))
    size = -(-len(words) // parts)
    chunks = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
    return [c if i == 0 else " " + c for i, c in enumerate(chunks)]


class Answers:
    """Pre-rendered response bytes; only the id changes from one answer to the next."""

    def __init__(self, prompt_tokens: int, completion_tokens: int, stream_events: int) -> None:
        canned = _canned(prompt_tokens, completion_tokens, stream_events)
        self.counter = 0
        self.chat = self._whole(orjson.dumps(canned["chat"]))
        self.embedding = self._whole(orjson.dumps(canned["embedding"]))
        self.models = self._whole(orjson.dumps(canned["models"]), with_id=False)
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\nx-simulator: true\r\n\r\n"
        )
        self.events = [b"data: " + orjson.dumps(e) + b"\n\n" for e in canned["events"]]
        self.done = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    @staticmethod
    def _whole(body: bytes, *, with_id: bool = True) -> tuple[bytes, bytes]:
        """(head + body) split around the id slot; the id has a fixed length, so does the body."""
        length = len(body) - len(_ID_SLOT) + 32 if with_id else len(body)
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-simulator: true\r\n"
            b"content-length: " + str(length).encode() + b"\r\n\r\n"
        )
        if not with_id:
            return head + body, b""
        before, after = body.split(_ID_SLOT)
        return head + before, after

    def new_id(self) -> bytes:
        self.counter += 1
        return b"%032x" % self.counter

    def whole(self, parts: tuple[bytes, bytes]) -> bytes:
        before, after = parts
        return before + self.new_id() + after if after else before

    def stream(self) -> list[bytes]:
        """The chunked body of one stream, one HTTP chunk per SSE event, [DONE] and the end."""
        rid = self.new_id()
        return [_chunk(e.replace(_ID_SLOT, rid)) for e in self.events]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
)


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests (Content-Length bodies only), answer canned."""

    def __init__(self, answers: Answers, token_delay_s: float) -> None:
        self.answers = answers
        self.token_delay_s = token_delay_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            length = 0
            lower = head.lower()
            at = lower.find(b"content-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at)
                length = int(lower[at + 15 : stop if stop >= 0 else None])
            total = end + 4 + length
            if len(buffer) < total:
                break
            body = buffer[end + 4 : total]
            buffer = buffer[total:]
            self.answer(head[: head.find(b"\r\n")], body)
        self.buffer = buffer

    def answer(self, request_line: bytes, body: bytes) -> None:
        transport, answers = self.transport, self.answers
        assert transport is not None
        method, path = request_line.split(b" ", 2)[:2]
        if method == b"POST" and path.endswith(b"/chat/completions"):
            if _STREAM_TRUE.search(body):
                chunks = answers.stream()
                if self.token_delay_s > 0:
                    asyncio.get_running_loop().create_task(self.trickle(chunks))
                    return
                transport.write(answers.stream_head + chunks[0])
                transport.write(b"".join(chunks[1:]) + answers.done)
                return
            transport.write(answers.whole(answers.chat))
        elif method == b"POST" and path.endswith(b"/embeddings"):
            transport.write(answers.whole(answers.embedding))
        elif method == b"GET" and path.split(b"?")[0].endswith(b"/models"):
            transport.write(answers.whole(answers.models))
        else:
            transport.write(NOT_FOUND)

    async def trickle(self, chunks: list[bytes]) -> None:
        """A stream with a pause before each content chunk. Requests on the same connection
        wait (HTTP/1.1 without pipelining from the gateway's pool: there are none)."""
        transport = self.transport
        assert transport is not None
        transport.write(self.answers.stream_head + chunks[0])
        for chunk in chunks[1:]:
            await asyncio.sleep(self.token_delay_s)
            if transport.is_closing():
                return
            transport.write(chunk)
        transport.write(self.answers.done)


async def serve(host: str, port: int, answers: Answers, token_delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(answers, token_delay_s), host, port, backlog=1024
    )
    print(f"SIMULATED bench upstream on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--prompt-tokens", type=int, default=500)
    parser.add_argument("--completion-tokens", type=int, default=48)
    parser.add_argument("--stream-events", type=int, default=16)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    answers = Answers(args.prompt_tokens, args.completion_tokens, args.stream_events)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve(args.host, args.port, answers, args.token_delay_ms / 1000))


if __name__ == "__main__":
    main()
