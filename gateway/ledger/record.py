"""The usage record: one per admitted request, what the ledger stores as a `usage_events` row.

Built on the request path from what the gateway already knows (tenant, model, route, tokens,
timings), priced in process, serialised once with orjson, and handed to the journal. Field names
are the `usage_events` column names: the writer inserts a decoded record as a row unchanged
(timestamps travel as epoch milliseconds and become UTC datetimes there).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import orjson


@dataclass(slots=True)
class UsageRecord:
    """A request's usage, cost, route and outcome."""

    request_id: str
    tenant_id: str
    key_id: str
    endpoint: str
    model: str
    upstream_model: str | None
    deployment: str | None
    region: str | None
    stream: bool
    status: int
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    token_source: str
    cost_micros: int | None
    currency: str | None
    unpriced: bool
    price_version_id: int | None
    attempts: int
    residency: str
    jurisdictions: str
    route: dict[str, Any]
    upstream_id: str | None
    gateway_latency_ms: int
    upstream_latency_ms: int | None
    ttft_ms: int | None
    started_at_ms: int
    finished_at_ms: int

    def encode(self) -> bytes:
        """Compact JSON, the journal's payload (orjson serialises the dataclass itself, in
        field order: the same bytes as `asdict`, without its recursive deep copy)."""
        return orjson.dumps(self)


_FIELDS = frozenset(f.name for f in fields(UsageRecord))


def decode(payload: bytes) -> UsageRecord:
    """A record from a journal payload; raises ValueError when it is not one."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) != _FIELDS:
        raise ValueError("not a usage record (fields differ)")
    return UsageRecord(**data)


_HOUR_MS = 3_600_000
_last_hour: tuple[int, str] | None = None


def hour_of(epoch_ms: int) -> str:
    """`YYYYMMDDHH` (UTC): the reconciliation bucket of a request started at `epoch_ms`."""
    global _last_hour
    hour = epoch_ms // _HOUR_MS
    if _last_hour is None or _last_hour[0] != hour:  # formatted once an hour, not per request
        text = datetime.fromtimestamp(hour * 3600, tz=UTC).strftime("%Y%m%d%H")
        _last_hour = (hour, text)
    return _last_hour[1]


def record_hour(payload: bytes) -> str:
    """The reconciliation hour of an encoded record (an unreadable one counts as "unknown")."""
    try:
        return hour_of(int(orjson.loads(payload)["started_at_ms"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return "unknown"
