"""Fuzzing the SSE watcher (`web/sse.py`): any byte stream, split anywhere, never a crash.

Streams are built from the pieces real upstreams send (content chunks, Mistral's last chunk
with usage, vLLM's `choices: []` usage chunk, `[DONE]`, comments, multi-line data) mixed with
garbage, CRLF and bare-LF line ends, then cut at arbitrary points. Whatever the cuts:
- `feed` and `flush` never raise, in every mode (`hide_usage_chunk`, `hold_done`);
- without hiding, the bytes relayed are exactly the bytes received, in order;
- what the watcher learns (usage, `[DONE]`, content events) and what it relays when hiding
  are the same as for the whole stream fed at once: chunking changes nothing.
`test_sse.py` holds the example-based cases.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.web.sse import SseWatcher
from tests.unit.test_sse import split


def _event(obj: object, end: bytes = b"\n\n") -> bytes:
    return b"data: " + orjson.dumps(obj) + end


ENDS = st.sampled_from([b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\n\n"])
USAGE = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(-5, 10**6), "completion_tokens": st.integers(-5, 10**6)}
)
PIECES = st.one_of(
    st.builds(lambda text, end: _event({"choices": [{"delta": {"content": text}}]}, end),
              st.text(max_size=10), ENDS),
    st.builds(lambda usage, end: _event({"choices": [{"delta": {}}], "usage": usage}, end),
              USAGE, ENDS),
    st.builds(lambda usage, end: _event({"choices": [], "usage": usage}, end), USAGE, ENDS),
    st.builds(lambda end: b"data: [DONE]" + end, ENDS),
    st.sampled_from([b": keep-alive\n\n", b"event: ping\ndata: {}\n\n", b"\n\n", b"data:\n\n",
                     b'data: {"usage": \n\n', b'data: {"a":\ndata: "usage"}\n\n',
                     b'data:{"usage":{"x":1},"choices":[]}\n\n', b"retry: 10\n\n"]),
    st.binary(max_size=40),
)  # fmt: skip
STREAMS = st.lists(PIECES, max_size=25).map(b"".join)
CUTS = st.lists(st.integers(min_value=0, max_value=5000), max_size=20)


def watch(stream_pieces: list[bytes], **mode: bool) -> tuple[bytes, SseWatcher]:
    watcher = SseWatcher(**mode)  # type: ignore[arg-type]
    out = b"".join(watcher.feed(piece) for piece in stream_pieces) + watcher.flush()
    return out, watcher


def learned(watcher: SseWatcher) -> tuple[Any, ...]:
    return watcher.usage, watcher.done, watcher.content_events


@settings(max_examples=200, deadline=None)
@given(STREAMS | st.binary(max_size=3000), CUTS)
def test_relay_is_exact_and_split_invariant(stream: bytes, cuts: list[int]) -> None:
    pieces = split(stream, cuts)
    for hold_done in (False, True):
        out, watcher = watch(pieces, hide_usage_chunk=False, hold_done=hold_done)
        assert out == stream
        if not hold_done:  # holding stops examining at [DONE], as far as it came in one piece
            assert learned(watcher) == learned(watch([stream], hide_usage_chunk=False)[1])


@settings(max_examples=200, deadline=None)
@given(STREAMS | st.binary(max_size=3000), CUTS, st.booleans())
def test_hiding_the_usage_chunk_is_split_invariant(
    stream: bytes, cuts: list[int], hold_done: bool
) -> None:
    mode = {"hide_usage_chunk": True, "hold_done": hold_done}
    out, watcher = watch(split(stream, cuts), **mode)
    whole, reference = watch([stream], **mode)
    assert out == whole
    assert learned(watcher) == learned(reference)
    assert len(out) <= len(stream)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=60), st.booleans(), st.booleans())
def test_arbitrary_chunks_never_raise(chunks: list[bytes], hide: bool, hold_done: bool) -> None:
    watch(chunks, hide_usage_chunk=hide, hold_done=hold_done)


@settings(max_examples=200, deadline=None)
@given(st.lists(PIECES, min_size=1, max_size=25), USAGE, CUTS)
def test_usage_is_found_wherever_the_stream_is_cut(
    before: list[bytes], usage: dict[str, int], cuts: list[int]
) -> None:
    terminated = (b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\n\n")
    clean = [  # whole events that carry neither usage nor the end
        p for p in before if p.endswith(terminated) and b"usage" not in p and b"[DONE]" not in p
    ]
    stream = b"".join(clean) + _event({"choices": [], "usage": usage}) + b"data: [DONE]\n\n"
    for hide in (False, True):
        _, watcher = watch(split(stream, cuts), hide_usage_chunk=hide, hold_done=True)
        assert watcher.usage == usage
        assert watcher.done
