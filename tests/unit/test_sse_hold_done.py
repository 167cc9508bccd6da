"""`hold_done`: the stream's end is held back until the proxy has stored the usage record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.web.sse import SseWatcher
from tests.unit.test_sse import CONTENT, DONE, MISTRAL_LAST, USAGE_ONLY, split


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    st.booleans(),
    st.binary(max_size=40),
)
def test_every_byte_relayed_once_in_order_however_split(
    cuts: list[int], hide: bool, after: bytes
) -> None:
    usage = USAGE_ONLY if hide else MISTRAL_LAST
    stream = b"".join(CONTENT) + usage + DONE + after
    pieces = split(stream, cuts)
    watcher = SseWatcher(hide_usage_chunk=hide, hold_done=True)
    fed = [watcher.feed(piece) for piece in pieces]
    before_end = b"".join(fed)
    out = before_end + watcher.flush()
    expected = stream.replace(USAGE_ONLY, b"") if hide else stream
    assert out == expected
    assert watcher.done
    # `[DONE]` is held back, unless (passing bytes through as they come) it had begun in an
    # earlier chunk than the one that completes it: that start was relayed already.
    done_start = stream.index(DONE)
    done_last_byte = done_start + len(DONE) - 1
    offset = 0
    for piece in pieces:
        if offset <= done_last_byte < offset + len(piece):
            break
        offset += len(piece)
    if hide or offset <= done_start:
        assert DONE not in before_end
        assert before_end == expected[: expected.index(DONE)]


def test_without_hold_done_nothing_is_held() -> None:
    stream = b"".join(CONTENT) + MISTRAL_LAST + DONE
    watcher = SseWatcher(hide_usage_chunk=False)
    assert watcher.feed(stream) == stream
    assert watcher.flush() == b""


def test_done_split_across_chunks_is_not_held_when_its_start_was_relayed() -> None:
    stream = b"".join(CONTENT) + MISTRAL_LAST + DONE
    cut = len(stream) - 4  # "data: [DO" relayed in the first chunk
    watcher = SseWatcher(hide_usage_chunk=False, hold_done=True)
    first = watcher.feed(stream[:cut])
    second = watcher.feed(stream[cut:])
    assert first + second + watcher.flush() == stream
    assert second == stream[cut:]
