"""Structured logging: one JSON object per line, with secrets redacted.

Set up once by the process entry point (never at import). Lines are written in batches (one
write per ~64 KB, per `flush_interval_s`, or at once for a WARNING or worse), not one system
call per request: the access log is on every request's path. A process killed outright can lose
the last fraction of a second of access-log lines (the ledger, not this log, is the record of
usage). Anything that looks like a bearer
credential (our `gwk_` keys, `Bearer ...` values) is masked before a line is written, so a
secret passed into a log call by mistake still never reaches the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from typing import TextIO

import orjson

_SECRET = re.compile(r"(gwk_[A-Za-z0-9]{4})[A-Za-z0-9]+|((?i:bearer)\s+)[^\s\"']+")


def redact(text: str) -> str:
    """Mask API keys and bearer tokens in `text`."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:  # structured fields (the access log): ids, names and numbers only
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes its lines in batches (see the module docstring)."""

    def __init__(self, stream: TextIO, *, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._size = 0
        self._max_bytes = max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        # `Handler.handle` holds this handler's lock around emit.
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max_bytes or record.levelno >= logging.WARNING:
            self._write()

    def _write(self) -> None:
        if self._lines:
            text, self._lines, self._size = "".join(self._lines), [], 0
            with contextlib.suppress(Exception):  # a closed or full stderr must not fail a request
                self.stream.write(text)
                self.stream.flush()

    def flush(self) -> None:
        """Write what is buffered."""
        with self.lock:  # type: ignore[union-attr]
            self._write()


def flush_logs() -> None:
    """Write every buffered log line now."""
    for handler in logging.getLogger().handlers:
        handler.flush()


async def flush_logs_forever(interval_s: float = 0.25) -> None:
    """Background task: flush the batched log lines every `interval_s`."""
    while True:
        await asyncio.sleep(interval_s)
        flush_logs()


def configure_logging(level: str) -> None:
    """Route every logger to stderr as JSON lines at `level`."""
    handler = BatchingStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
