"""JSON log lines: the access log's direct path writes what the logging path would."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from gateway.observability import logging as gateway_logging
from gateway.observability.logging import configure_logging, flush_logs, log_fields

FIELDS: dict[str, object] = {"request_id": "req_1", "status": 200, "error": None, "cost": 12}


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """`configure_logging` writing into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stderr", buffer)
    configure_logging("INFO")
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)
    monkeypatch.setattr(gateway_logging, "_configured", None)


def _lines(buffer: io.StringIO) -> list[dict[str, object]]:
    flush_logs()
    return [orjson.loads(line) for line in buffer.getvalue().splitlines()]


def test_the_direct_line_is_the_logging_line(stderr: io.StringIO) -> None:
    logger = logging.getLogger("gateway.test.access")
    logger.info("request", extra={"fields": FIELDS})
    log_fields(logger, "request", FIELDS)
    via_logging, direct = _lines(stderr)
    assert isinstance(direct.pop("ts"), float) and isinstance(via_logging.pop("ts"), float)
    assert direct == via_logging
    assert direct == {"level": "INFO", "logger": "gateway.test.access", "msg": "request", **FIELDS}


def test_another_handler_on_the_way_still_gets_the_line(
    stderr: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("gateway.test.access")
    with caplog.at_level(logging.INFO, logger="gateway.test.access"):
        log_fields(logger, "request", FIELDS)
    [record] = [r for r in caplog.records if r.name == "gateway.test.access"]
    assert record.getMessage() == "request"
    assert record.fields == FIELDS  # type: ignore[attr-defined]
    assert [line["request_id"] for line in _lines(stderr)] == ["req_1"]


def test_a_filter_or_a_disabled_level_is_honoured(stderr: io.StringIO) -> None:
    logger = logging.getLogger("gateway.test.filtered")
    dropped = logging.Filter("nothing.matches")
    logger.addFilter(dropped)
    try:
        log_fields(logger, "request", FIELDS)
    finally:
        logger.removeFilter(dropped)
    logger.setLevel(logging.WARNING)
    try:
        log_fields(logger, "request", FIELDS)
    finally:
        logger.setLevel(logging.NOTSET)
    assert _lines(stderr) == []


def test_secrets_in_messages_are_masked(stderr: io.StringIO) -> None:
    logging.getLogger("gateway.test").warning("bad key gwk_AbCdEfGhIjKlMnOp in Bearer s3cr3t")
    [line] = _lines(stderr)
    assert line["msg"] == "bad key gwk_AbCd*** in Bearer ***"
