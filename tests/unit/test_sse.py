"""The SSE watcher relays bytes untouched, finds usage, and hides only the chunk we asked for."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.web.sse import SseWatcher


def event(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


CONTENT = [event({"choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) for i in range(5)]
MISTRAL_LAST = event(
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"total_tokens": 9}}
)
USAGE_ONLY = event({"choices": [], "usage": {"prompt_tokens": 3, "total_tokens": 8}})
DONE = b"data: [DONE]\n\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return [p for p in pieces if p]


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_passthrough_is_byte_identical_however_split(cuts: list[int]) -> None:
    stream = b"".join(CONTENT) + MISTRAL_LAST + DONE
    watcher = SseWatcher(hide_usage_chunk=False)
    out = b"".join(watcher.feed(piece) for piece in split(stream, cuts)) + watcher.flush()
    assert out == stream
    assert watcher.usage == {"total_tokens": 9}
    assert watcher.done
    assert watcher.content_events == 6


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_hidden_usage_chunk_removed_however_split(cuts: list[int]) -> None:
    stream = b"".join(CONTENT) + USAGE_ONLY + DONE
    watcher = SseWatcher(hide_usage_chunk=True)
    out = b"".join(watcher.feed(piece) for piece in split(stream, cuts)) + watcher.flush()
    assert out == b"".join(CONTENT) + DONE
    assert watcher.usage == {"prompt_tokens": 3, "total_tokens": 8}


def test_crlf_events_and_garbage_do_not_break_it() -> None:
    watcher = SseWatcher(hide_usage_chunk=True)
    stream = (
        b'data: {"usage": {"a": 1}, "choices": []}\r\n\r\ndata: {not json "usage"\n\n: comment\n\n'
    )
    out = watcher.feed(stream) + watcher.flush()
    assert watcher.usage == {"a": 1}
    assert out == b'data: {not json "usage"\n\n: comment\n\n'


@given(st.binary(max_size=2000))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    for hide in (True, False):
        watcher = SseWatcher(hide_usage_chunk=hide)
        watcher.feed(data)
        watcher.flush()
