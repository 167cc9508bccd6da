"""The SSE relay's watcher: upstream bytes go to the client as they come, never re-serialised.

The watcher splits the byte stream into events only to look at them: it picks the `usage`
object out of whichever event carries it (Mistral: the last content chunk; vLLM/OpenAI: a
separate `choices: []` chunk), notes `[DONE]`, and counts content events. When the gateway
itself asked for the usage chunk (`hide_usage_chunk`), that one event is removed and the rest
are emitted at event boundaries; otherwise every chunk is passed through exactly as received.

With `hold_done`, the `[DONE]` event (and anything after it) is held back from `feed` and
returned by `flush`, so the proxy can store the call's usage record before the client sees the
stream end; a `[DONE]` that began in an earlier chunk, already relayed, cannot be held.

Invariant: the watcher never raises on bad input; an event it cannot parse is relayed as is.
Every byte is relayed exactly once (the hidden usage chunk aside), in order, by `feed` and
`flush` together.
Memory is bounded: an event larger than `MAX_EVENT_BYTES` is relayed without being examined.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

MAX_EVENT_BYTES = 1024 * 1024
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_DONE = b"[DONE]"


class SseWatcher:
    """Feeds on an SSE byte stream; returns what to send on to the client."""

    __slots__ = (
        "_buffer",
        "_held",
        "_hide_usage_chunk",
        "_hold_done",
        "content_events",
        "done",
        "usage",
    )

    def __init__(self, *, hide_usage_chunk: bool, hold_done: bool = False) -> None:
        self._hide_usage_chunk = hide_usage_chunk
        self._hold_done = hold_done
        self._held = b""
        self._buffer = b""
        self.usage: dict[str, Any] | None = None
        self.done = False
        self.content_events = 0

    def feed(self, chunk: bytes) -> bytes:
        """Examine `chunk`; return the bytes to relay now (possibly empty)."""
        if self._held:  # after a held `[DONE]`: hold the rest too, to keep the order
            self._held += chunk
            return b""
        buffered = len(self._buffer)
        data = self._buffer + chunk if buffered else chunk
        kept: list[bytes] = []
        start = 0
        held_at = -1  # where, in `data`, a `[DONE]` event to hold back starts
        for match in _EVENT_END.finditer(data):
            event = data[start : match.end()]
            was_done = self.done
            if self._examine(event) or not self._hide_usage_chunk:
                kept.append(event)
            if self._hold_done and self.done and not was_done:
                held_at = start
                kept.pop()
                break
            start = match.end()
        if held_at >= 0:
            self._buffer = b""
            if not self._hide_usage_chunk:
                if held_at < buffered:  # it began in a chunk already relayed: too late
                    return chunk
                self._held = chunk[held_at - buffered :]
                return chunk[: held_at - buffered]
            self._held = data[held_at:]
            return b"".join(kept)
        rest = data[start:]
        if len(rest) > MAX_EVENT_BYTES:  # not SSE as we know it: stop examining, just relay
            kept.append(rest)
            rest = b""
        self._buffer = rest
        if not self._hide_usage_chunk:
            return chunk
        return b"".join(kept)

    def flush(self) -> bytes:
        """What is left when the upstream closes: a held-back `[DONE]` and what followed it,
        or an unterminated last event."""
        if self._held:
            held, self._held = self._held, b""
            return held
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self._examine(rest)
        return rest if self._hide_usage_chunk else b""

    def _examine(self, event: bytes) -> bool:
        """Note what `event` says; False if it is the usage-only chunk to hide."""
        payload = _data_of(event)
        if payload is None:
            return True
        if payload == _DONE:
            self.done = True
            return True
        if b'"usage"' not in payload:
            self.content_events += 1
            return True
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return True
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        if isinstance(usage, dict):
            self.usage = usage
            if parsed.get("choices") == []:
                return False
        self.content_events += 1
        return True


def _data_of(event: bytes) -> bytes | None:
    """The joined `data:` lines of one event, or None if it has none."""
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    if len(lines) == 1:
        return lines[0][5:].strip()
    return b"\n".join(line[5:].strip() for line in lines)
