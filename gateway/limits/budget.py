"""Budgets: a tenant's spending cap per calendar month (UTC), enforced at admission.

A budget is a limiter bucket that never refills, named after its period (`budget:2026-11`),
holding the budget in micro-units of its currency: one more bucket in the same atomic reserve
as RPM and TPM, so replicas share it exactly.
- hard: a request reserves its worst-case cost (prompt tokens + reserved output at the current
  price, rounded up) and is refused with `insufficient_quota` when that does not fit; with
  `shrink_max_tokens` the gateway first lowers `max_tokens` to what is left, if at least
  `min_output_tokens` fit. Settle corrects the reservation to the actual cost, so the
  overshoot is bounded by one request's worst case (only an upstream answer longer than its
  `max_tokens` could exceed it).
- soft: nothing is refused; the request asks the bucket for 0 (which always fits and reports
  what is left) and settle charges the actual cost. Thresholds raise alerts (ledger side).
The Redis bucket is a cache of the period's spend: the ledger is the truth and the budget
watcher raises the bucket's spend to the ledger's after a Redis loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.ledger.pricing import MICROS_PER_MTOK_DIVISOR, Price
from gateway.limits.limiter import BucketSpec

BUDGET_PREFIX = "budget:"


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """A tenant's budget as stored (amounts in micro-units of `currency`)."""

    amount_micros: int
    currency: str
    hard: bool = True
    shrink_max_tokens: bool = False
    min_output_tokens: int = 16
    thresholds_pct: tuple[int, ...] = (50, 80, 100)


@dataclass(frozen=True, slots=True)
class _Period:
    hour: int  # the hour it was computed for (a month always starts on an hour)
    start: datetime
    end: datetime
    bucket_name: str  # `budget:2026-11`
    end_text: str  # ISO 8601, `2026-12-01T00:00:00Z`


_last_period: _Period | None = None
_buckets: dict[tuple[str, int], BucketSpec] = {}  # (bucket name, capacity), this period's


def _period(now_s: float) -> _Period:
    """The calendar month (UTC) containing `now_s`, computed once an hour."""
    global _last_period
    hour = int(now_s // 3600)
    period = _last_period
    if period is None or period.hour != hour:
        now = datetime.fromtimestamp(hour * 3600, tz=UTC)
        start = datetime(now.year, now.month, 1, tzinfo=UTC)
        end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        name = f"{BUDGET_PREFIX}{start.year:04d}-{start.month:02d}"
        period = _Period(hour, start, end, name, end.isoformat().replace("+00:00", "Z"))
        _last_period = period
    return period


def period_bounds(now_s: float) -> tuple[datetime, datetime]:
    """[start, end) of the calendar month (UTC) containing `now_s`."""
    period = _period(now_s)
    return period.start, period.end


def period_end_text(now_s: float) -> str:
    """The end of the month containing `now_s`, as ISO 8601 (`x-budget-period-end`)."""
    return _period(now_s).end_text


def budget_bucket(policy: BudgetPolicy, now_s: float) -> BucketSpec:
    """This period's bucket (a new period is a new, full bucket)."""
    key = (_period(now_s).bucket_name, max(1, policy.amount_micros))
    spec = _buckets.get(key)
    if spec is None:
        if len(_buckets) >= 4096:  # budgets of another period, or changed amounts
            _buckets.clear()
        spec = _buckets[key] = BucketSpec(*key, 0)
    return spec


def is_budget(name: str) -> bool:
    """Whether a bucket name is a budget's."""
    return name.startswith(BUDGET_PREFIX)


def affordable_output_tokens(remaining_micros: int, price: Price, prompt_tokens: int) -> int:
    """The most output tokens whose worst-case cost, with the prompt, fits in what is left."""
    left = remaining_micros * MICROS_PER_MTOK_DIVISOR - prompt_tokens * price.input_micros_per_mtok
    if left < 0:
        return 0
    if price.output_micros_per_mtok == 0:
        return 2**31 - 1
    return left // price.output_micros_per_mtok


def format_amount(micros: int) -> str:
    """Micro-units as a decimal amount: 734512 -> "0.734512"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"
