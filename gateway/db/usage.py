"""Queries on `usage_events` and `usage_daily`: the ledger writer's batch insert and rollup.

`insert_usage` inserts a batch with ON CONFLICT (request_id) DO NOTHING and returns the rows it
actually inserted; only those are added to the daily rollup, in the same transaction, so a
re-delivered record changes neither table. Postgres and SQLite (>= 3.35) both support
ON CONFLICT ... RETURNING, through SQLAlchemy's dialect-specific `insert`.
The caller owns the session and its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.tables import UsageDaily, UsageEvent
from gateway.ledger.record import UsageRecord

NO_CURRENCY = "---"  # rollup key for unpriced requests (the key has no NULLs)


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def as_row(record: UsageRecord) -> dict[str, Any]:
    """A record as `usage_events` column values."""
    row = {
        name: getattr(record, name)
        for name in record.__slots__  # type: ignore[attr-defined]
        if name not in ("started_at_ms", "finished_at_ms")
    }
    row["started_at"] = _utc(record.started_at_ms)
    row["finished_at"] = _utc(record.finished_at_ms)
    return row


async def insert_usage(session: AsyncSession, records: Sequence[UsageRecord]) -> int:
    """Insert what is new in `records`, roll it up by day; returns how many were new."""
    if not records:
        return 0
    insert = _insert(session)
    # A record can be in one batch twice (replayed from the spool while its first append also
    # landed): insert and roll up each request once, or usage_daily would count it twice.
    unique = {r.request_id: r for r in reversed(records)}  # the first copy wins
    rows = [as_row(r) for r in reversed(unique.values())]
    events = UsageEvent.__table__
    statement = (
        insert(events)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(events.c.request_id)
    )
    # Rows as executemany parameters, not `.values(rows)`: the statement is compiled once and
    # cached, and SQLAlchemy's "insertmanyvalues" still sends multi-row INSERTs, in pages that
    # stay under the drivers' 32767 bind parameters. A `.values(rows)` statement was compiled
    # anew for every batch (about 1 ms of CPU per row) and failed outright above 1170 rows.
    inserted = set((await session.execute(statement, rows)).scalars())
    if not inserted:
        return 0
    totals: dict[tuple[date, str, str, str, str], list[int]] = {}
    for row in rows:
        if row["request_id"] not in inserted:
            continue
        key = (
            row["started_at"].date(),
            row["tenant_id"],
            row["model"],
            row["deployment"] or "",
            row["currency"] or NO_CURRENCY,
        )
        acc = totals.setdefault(key, [0, 0, 0, 0, 0])
        acc[0] += 1
        acc[1] += row["prompt_tokens"]
        acc[2] += row["completion_tokens"]
        acc[3] += row["cost_micros"] or 0
        acc[4] += 1 if row["unpriced"] else 0
    daily = [
        {
            "day": day,
            "tenant_id": tenant,
            "model": model,
            "deployment": deployment,
            "currency": currency,
            "requests": acc[0],
            "prompt_tokens": acc[1],
            "completion_tokens": acc[2],
            "cost_micros": acc[3],
            "unpriced_requests": acc[4],
        }
        for (day, tenant, model, deployment, currency), acc in sorted(totals.items())
    ]
    upsert = insert(UsageDaily.__table__)
    added = upsert.excluded
    await session.execute(
        upsert.on_conflict_do_update(
            index_elements=["day", "tenant_id", "model", "deployment", "currency"],
            set_={
                "requests": UsageDaily.requests + added.requests,
                "prompt_tokens": UsageDaily.prompt_tokens + added.prompt_tokens,
                "completion_tokens": UsageDaily.completion_tokens + added.completion_tokens,
                "cost_micros": UsageDaily.cost_micros + added.cost_micros,
                "unpriced_requests": UsageDaily.unpriced_requests + added.unpriced_requests,
            },
        ),
        daily,
    )
    return len(inserted)


async def spend_micros(
    session: AsyncSession, tenant_id: str, currency: str, since: datetime, until: datetime
) -> int:
    """A tenant's recorded spend in `currency` over [since, until)."""
    total = await session.scalar(
        select(func.coalesce(func.sum(UsageEvent.cost_micros), 0)).where(
            UsageEvent.tenant_id == tenant_id,
            UsageEvent.currency == currency,
            UsageEvent.started_at >= since,
            UsageEvent.started_at < until,
        )
    )
    return int(total or 0)


async def rows_per_hour(session: AsyncSession, since: datetime, until: datetime) -> dict[str, int]:
    """Ledger rows per UTC hour (`YYYYMMDDHH`) of `started_at`, over [since, until)."""
    if session.bind.dialect.name == "postgresql":
        hour = func.to_char(func.timezone("UTC", UsageEvent.started_at), "YYYYMMDDHH24")
    else:
        hour = func.strftime("%Y%m%d%H", UsageEvent.started_at)
    result = await session.execute(
        select(hour, func.count())
        .where(UsageEvent.started_at >= since, UsageEvent.started_at < until)
        .group_by(hour)
    )
    return {str(h): int(n) for h, n in result.all()}


ROLLUP_KEYS = ("model", "deployment", "day")
SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cost_micros", "unpriced_requests")


async def usage_totals(
    session: AsyncSession,
    first_day: date,
    end_day: date,
    *,
    keys: Sequence[str],
    tenant_id: str | None = None,
) -> list[dict[str, Any]]:
    """`usage_daily` summed over days [first_day, end_day) per tenant, `keys` (any of
    `ROLLUP_KEYS`) and currency, in that order; one dict per group with the `SUMMED` totals."""
    groups = [
        UsageDaily.tenant_id,
        *(getattr(UsageDaily, k) for k in keys if k in ROLLUP_KEYS),
        UsageDaily.currency,
    ]
    statement = (
        select(*groups, *(func.sum(getattr(UsageDaily, n)).label(n) for n in SUMMED))
        .where(UsageDaily.day >= first_day, UsageDaily.day < end_day)
        .group_by(*groups)
        .order_by(*groups)
    )
    if tenant_id is not None:
        statement = statement.where(UsageDaily.tenant_id == tenant_id)
    rows = (await session.execute(statement)).mappings().all()
    # Postgres sums BIGINT as NUMERIC: back to int.
    return [{k: int(v) if k in SUMMED else v for k, v in row.items()} for row in rows]
