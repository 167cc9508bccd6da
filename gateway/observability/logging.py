"""Structured logging: one JSON object per line, with secrets redacted.

Set up once by the process entry point (never at import). Anything that looks like a bearer
credential (our `gwk_` keys, `Bearer ...` values) is masked before a line is written, so a
secret passed into a log call by mistake still never reaches the log.
"""

from __future__ import annotations

import logging
import re
import sys

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


def configure_logging(level: str) -> None:
    """Route every logger to stderr as JSON lines at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
