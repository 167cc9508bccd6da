"""`/admin/v1/usage`: requests, tokens and cost per tenant, grouped, from the daily rollup.

Reads `usage_daily` (never the event table), so a month of a busy gateway answers quickly. The
rollup is by whole UTC day: the report covers every day that overlaps [start, end). Rows are
per tenant and currency plus the `group_by` dimensions; requests that had no price in force
have currency null (empty in CSV) and count in `unpriced_requests`. The same report is
JSON by default and CSV when the client asks for `text/csv`.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.admin.api import READERS, Call, Operation, Reply, Unprocessable
from gateway.admin.schemas import UsageQuery, UsageReport, UsageRow, amount_of
from gateway.db.usage import NO_CURRENCY, SUMMED, usage_totals

DEFAULT_WINDOW = timedelta(days=30)
CSV_TOTALS = ("requests", "prompt_tokens", "completion_tokens", "cost", "unpriced_requests")


def _day_span(start: datetime, end: datetime) -> tuple[date, date]:
    """The UTC days [first, end) that overlap [start, end)."""
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    at_midnight = end.time() == datetime.min.time()
    return start.date(), end.date() if at_midnight else end.date() + timedelta(days=1)


def _fold_months(rows: list[dict[str, Any]], dimensions: list[str]) -> list[dict[str, Any]]:
    """Daily groups summed per month (when `month` was asked for and `day` was not)."""
    folded: dict[tuple[Any, ...], dict[str, Any]] = {}
    for daily in rows:
        group = {**daily, "month": daily["day"].strftime("%Y-%m")}
        del group["day"]
        key = (group["tenant_id"], *(group[d] for d in dimensions), group["currency"])
        total = folded.setdefault(key, {**group, **dict.fromkeys(SUMMED, 0)})
        for name in SUMMED:
            total[name] += group[name]
    return [folded[key] for key in sorted(folded)]


def as_usage_row(group: dict[str, Any], dimensions: list[str]) -> UsageRow:
    """One report row from a group of the rollup."""
    day = group.get("day")
    labels = {
        "model": group.get("model"),
        "deployment": group.get("deployment"),
        "day": day.isoformat() if day else None,
        "month": group.get("month") or (day.strftime("%Y-%m") if day else None),
    }
    currency = group["currency"]
    return UsageRow(
        tenant_id=group["tenant_id"],
        **{name: labels[name] for name in dimensions},
        currency=None if currency == NO_CURRENCY else currency,
        **{name: group[name] for name in SUMMED},
        cost=amount_of(group["cost_micros"]),
    )


def wants_csv(accept: str | None) -> bool:
    """Whether `Accept` prefers `text/csv` over JSON (absent or `*/*`: JSON)."""
    best_csv = best_json = 0.0
    for part in (accept or "").split(","):
        media, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.strip().lower() == "text/csv":
            best_csv = max(best_csv, quality)
        elif media.strip().lower() in ("application/json", "application/*", "*/*"):
            best_json = max(best_json, quality)
    return best_csv > best_json


def render_csv(report: UsageReport) -> bytes:
    """A header line, then one line per row (cost as a decimal, unpriced currency empty)."""
    columns = ["tenant_id", *report.group_by, "currency", *CSV_TOTALS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in report.data:
        values = row.model_dump(mode="json")
        writer.writerow(["" if values[c] is None else values[c] for c in columns])
    return out.getvalue().encode()


async def usage_report(call: Call) -> Reply:
    query: UsageQuery = call.query
    end = query.end or call.now
    try:
        start = query.start or end - DEFAULT_WINDOW
        first_day, end_day = _day_span(start, end)
    except OverflowError:  # the default start, or a whole UTC day, before year 1 or after 9999
        raise Unprocessable(
            "start and end must lie within years 1-9999 (UTC, whole days)."
        ) from None
    if end <= start:
        raise Unprocessable("end must be after start (start defaults to 30 days before end).",
                            param="end")  # fmt: skip
    dimensions = query.dimensions()
    months_only = "month" in dimensions and "day" not in dimensions
    keys = [d for d in dimensions if d != "month"] + (["day"] if months_only else [])
    groups = await usage_totals(
        call.session, first_day, end_day, keys=keys, tenant_id=query.tenant_id
    )
    if months_only:
        groups = _fold_months(groups, dimensions)
    report = UsageReport(
        start=start,
        end=end,
        group_by=dimensions,
        data=[as_usage_row(g, dimensions) for g in groups],
    )
    if wants_csv(call.request.headers.get("accept")):
        return Reply(render_csv(report), media_type="text/csv; charset=utf-8")
    return Reply(report)


OPERATIONS = [
    Operation("GET", "/usage", usage_report,
              "Usage and cost per tenant, grouped (JSON, or CSV with Accept: text/csv)", "usage",
              roles=READERS, query=UsageQuery, response=UsageReport, csv=True, errors=()),
]  # fmt: skip
