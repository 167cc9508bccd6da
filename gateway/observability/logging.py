"""Structured logging: one JSON object per line, with secrets redacted.

Set up once by the process entry point (never at import). Lines are written in batches (one
write per ~64 KB, per `flush_interval_s`, or at once for a WARNING or worse), not one system
call per request: the access log is on every request's path. A process killed outright can lose
the last fraction of a second of access-log lines (the ledger, not this log, is the record of
usage). `log_fields` writes a line of ids, names and numbers (the access log's) straight into that
batch when the root handler is the only place it could go, skipping the `LogRecord` and the
handler chain that cost about as much as the rest of the request's bookkeeping; the line is the
same as `logger.info(msg, extra={"fields": fields})` would write. Anything that looks like a bearer
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

from gateway.clock import SystemClock

_SECRET = re.compile(r"(gwk_[A-Za-z0-9]{4})[A-Za-z0-9]+|((?i:bearer)\s+)[^\s\"']+")


def redact(text: str) -> str:
    """Mask API keys and bearer tokens in `text`."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


def _entry(created_s: float, level: str, logger: str, msg: str) -> dict[str, object]:
    """The fields every line starts with."""
    return {"ts": round(created_s, 3), "level": level, "logger": logger, "msg": msg}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = _entry(record.created, record.levelname, record.name, redact(record.getMessage()))
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
        self._buffer(line, now=record.levelno >= logging.WARNING)

    def add_line(self, line: str) -> None:
        """Buffer one formatted INFO line (terminator included), as `emit` would."""
        with self.lock:  # type: ignore[union-attr]
            self._buffer(line)

    def _buffer(self, line: str, *, now: bool = False) -> None:
        self._lines.append(line)
        self._size += len(line)
        if now or self._size >= self._max_bytes:
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


_configured: BatchingStreamHandler | None = None  # the root handler configure_logging set
_wall = SystemClock()  # a line's time is wall time, as `LogRecord.created` is


def _sole_handler(logger: logging.Logger) -> BatchingStreamHandler | None:
    """The handler every line of `logger` goes to, when it is ours and the only one (no
    filters on the way): then a line can be added to its batch directly."""
    handler = _configured
    if handler is None or handler.filters or handler.level > logging.INFO:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or (node.handlers and node is not logging.root):
            return None
        if not node.propagate:
            return None
        node = node.parent
    root = logging.root.handlers
    return handler if len(root) == 1 and root[0] is handler else None


def log_fields(logger: logging.Logger, msg: str, fields: dict[str, object]) -> None:
    """`logger.info(msg, extra={"fields": fields})` for a line of ids, names and numbers
    only (nothing to redact): the same JSON line, written without a `LogRecord` when
    `configure_logging`'s handler is the only one it would reach."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_handler(logger)
    if handler is None:
        logger.info(msg, extra={"fields": fields})
        return
    entry = _entry(_wall.now_s(), "INFO", logger.name, msg)
    entry.update(fields)
    handler.add_line(orjson.dumps(entry).decode() + handler.terminator)


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
    global _configured
    handler = BatchingStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    _configured = handler
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
