"""Monthly chargeback statements: what one tenant used and owes for one calendar month (UTC).

Read from `usage_events`, the ledger's truth, not from the `usage_daily` rollup: only the
events know which price version priced each request. A statement lists, per model and
deployment, the requests, tokens and cost; the price versions applied (from `prices`, joined
on `price_version_id`); unpriced requests apart (they have no cost, never a silent 0); totals
per currency; and the tenant's budget against the month's spend in the budget's currency.
The month is the budget's period (`limits.budget.period_bounds`): requests by `started_at`.

`build_statement` only reads (the caller owns the session); `to_csv` and `to_html` are pure,
so the CLI (`gateway statement`) and an admin endpoint render the same document. Amounts stay
integer micro-units until rendered, exactly, with `format_amount`.
Caveat: the budget shown is the tenant's current one (budgets keep no history).
Failure mode: unknown tenant → `NotFound`; a malformed month → `InvalidRequest`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from html import escape

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.budgets import list_alerts, load_budget
from gateway.db.engine import translate_db_errors
from gateway.db.tables import Price, Tenant, UsageEvent
from gateway.errors import InvalidRequest, NotFound
from gateway.limits.budget import format_amount, period_bounds

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# How a deployment's provider (routing file) is shown: La Plateforme is Mistral's hosted API.
HOSTING_LABELS = {
    "mistral": "La Plateforme",
    "vllm": "self-hosted (vLLM)",
    "openai": "OpenAI-compatible",
}


@dataclass(frozen=True, slots=True)
class UsageLine:
    """Priced usage of one model on one deployment ("" = none reached), in one currency."""

    model: str
    deployment: str
    hosting: str  # from HOSTING_LABELS; "" when the routing file does not name the deployment
    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class PriceLine:
    """A price version applied this month, and the requests and cost it priced.

    When the `prices` row is gone (the ledger keeps only its id) the model is "?" and the
    rates and `effective_from` are None."""

    version_id: int
    model: str
    deployment: str  # the price's scope: "" = every deployment of the model
    currency: str
    input_micros_per_mtok: int | None
    output_micros_per_mtok: int | None
    effective_from: datetime | None
    requests: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class UnpricedLine:
    """Requests no price was in force for: tokens known, cost unknown."""

    model: str
    deployment: str
    hosting: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Total:
    """The month's priced usage in one currency."""

    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """The tenant's monthly budget and the month's spend in its currency."""

    amount_micros: int
    currency: str
    hard: bool
    spent_micros: int
    alerts_pct: tuple[int, ...]  # thresholds crossed this month

    @property
    def used_pct(self) -> Decimal | None:
        """Spend as a percentage of the budget, to 0.01 (rounded half up); None for a 0 cap."""
        if self.amount_micros <= 0:
            return None
        basis_points = (self.spent_micros * 10_000 * 2 + self.amount_micros) // (
            2 * self.amount_micros
        )
        return Decimal(basis_points) / 100


@dataclass(frozen=True, slots=True)
class Statement:
    """One tenant's chargeback statement for one month."""

    tenant_id: str
    tenant_name: str
    month: str  # YYYY-MM
    period_start: datetime
    period_end: datetime  # exclusive
    lines: tuple[UsageLine, ...]
    prices: tuple[PriceLine, ...]
    unpriced: tuple[UnpricedLine, ...]
    totals: tuple[Total, ...]
    budget: BudgetUse | None


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """[start, end) in UTC of a `YYYY-MM` month."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise InvalidRequest(f"month must be YYYY-MM, e.g. 2026-11, not {month!r}.", param="month")
    return period_bounds(datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC).timestamp())


async def build_statement(
    session: AsyncSession,
    tenant_id: str,
    month: str,
    *,
    providers: Mapping[str, str] | None = None,
) -> Statement:
    """The statement of `tenant_id` for `month` (`YYYY-MM`).

    `providers` maps deployment names to their routing-file provider (`{d.name: d.provider for
    d in config.deployments}`) to label lines La Plateforme or self-hosted; optional."""
    start, end = month_bounds(month)
    with translate_db_errors():
        tenant = await session.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"No tenant with id {tenant_id!r}.", param="tenant_id")
        groups = await _usage_groups(session, tenant_id, start, end)
        versions = {g[4] for g in groups if g[4] is not None}
        price_rows = {}
        if versions:
            rows = await session.scalars(select(Price).where(Price.id.in_(versions)))
            price_rows = {row.id: row for row in rows}
        policy = await load_budget(session, tenant_id)
        alerts = await list_alerts(session, tenant_id) if policy else []
    lines, unpriced, prices = _fold(groups, price_rows, providers or {})
    totals = _totals(lines)
    budget = None
    if policy is not None:
        spent = next((t.cost_micros for t in totals if t.currency == policy.currency), 0)
        crossed = tuple(a.threshold_pct for a in alerts if a.period_start == start.date())
        budget = BudgetUse(policy.amount_micros, policy.currency, policy.hard, spent, crossed)
    return Statement(
        tenant_id, tenant.name, month, start, end, lines, prices, unpriced, totals, budget
    )


_Group = tuple[str, str, str | None, int | None, int | None, int, int, int, int]


async def _usage_groups(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[_Group]:
    """(model, deployment, currency, unpriced, price version, requests, prompt, completion,
    cost) per group of the month's events."""
    deployment = func.coalesce(UsageEvent.deployment, "")
    keys = (
        UsageEvent.model,
        deployment,
        UsageEvent.currency,
        UsageEvent.unpriced,
        UsageEvent.price_version_id,
    )
    result = await session.execute(
        select(
            *keys,
            func.count(),
            func.coalesce(func.sum(UsageEvent.prompt_tokens), 0),
            func.coalesce(func.sum(UsageEvent.completion_tokens), 0),
            func.coalesce(func.sum(UsageEvent.cost_micros), 0),
        )
        .where(
            UsageEvent.tenant_id == tenant_id,
            UsageEvent.started_at >= start,
            UsageEvent.started_at < end,
        )
        .group_by(*keys)
    )
    # Postgres sums bigints as numeric (Decimal): int() is exact.
    return [
        (m, d, c, bool(u), v, int(n), int(p), int(o), int(cost))
        for m, d, c, u, v, n, p, o, cost in result.all()
    ]


def _fold(
    groups: list[_Group], price_rows: Mapping[int, Price], providers: Mapping[str, str]
) -> tuple[tuple[UsageLine, ...], tuple[UnpricedLine, ...], tuple[PriceLine, ...]]:
    lines: dict[tuple[str, str, str], list[int]] = {}
    unpriced: dict[tuple[str, str], list[int]] = {}
    by_version: dict[int, list[int]] = {}
    for model, deployment, currency, is_unpriced, version, n, prompt, completion, cost in groups:
        if is_unpriced or currency is None:
            _add(unpriced.setdefault((model, deployment), [0, 0, 0]), n, prompt, completion)
            continue
        line = lines.setdefault((currency, model, deployment), [0, 0, 0, 0])
        _add(line, n, prompt, completion, cost)
        if version is not None:
            _add(by_version.setdefault(version, [0, 0]), n, cost)

    def hosting(deployment: str) -> str:
        return HOSTING_LABELS.get(providers.get(deployment, ""), "")

    usage = tuple(
        UsageLine(model, deployment, hosting(deployment), currency, *figures)
        for (currency, model, deployment), figures in sorted(lines.items())
    )
    missing = tuple(
        UnpricedLine(model, deployment, hosting(deployment), *figures)
        for (model, deployment), figures in sorted(unpriced.items())
    )
    prices = sorted(
        (
            _price_line(version, price_rows.get(version), *figures)
            for version, figures in by_version.items()
        ),
        key=lambda p: (p.model, p.deployment, p.currency, p.effective_from or _EPOCH, p.version_id),
    )
    return usage, missing, tuple(prices)


def _add(accumulator: list[int], *values: int) -> None:
    for index, value in enumerate(values):
        accumulator[index] += value


def _price_line(version: int, row: Price | None, requests: int, cost: int) -> PriceLine:
    if row is None:
        return PriceLine(version, "?", "", "", None, None, None, requests, cost)
    return PriceLine(
        version,
        row.model,
        row.deployment,
        row.currency,
        row.input_micros_per_mtok,
        row.output_micros_per_mtok,
        row.effective_from,
        requests,
        cost,
    )


def _totals(lines: tuple[UsageLine, ...]) -> tuple[Total, ...]:
    sums: dict[str, list[int]] = {}
    for line in lines:
        acc = sums.setdefault(line.currency, [0, 0, 0, 0])
        _add(acc, line.requests, line.prompt_tokens, line.completion_tokens, line.cost_micros)
    return tuple(Total(currency, *figures) for currency, figures in sorted(sums.items()))


# --- rendering ---------------------------------------------------------------------------------

CSV_COLUMNS = (
    "section", "tenant_id", "tenant", "month", "model", "deployment", "hosting", "currency",
    "price_version_id", "price_effective_from", "input_per_mtok", "output_per_mtok",
    "requests", "prompt_tokens", "completion_tokens", "cost", "budget", "budget_used_pct",
)  # fmt: skip


def to_csv(statement: Statement) -> str:
    """The statement as one CSV table; `section` says what a row is.

    Sections: `usage` (per model, deployment and currency), `price` (per price version
    applied), `unpriced`, `total` (per currency) and `budget`. The `cost` of the usage rows,
    like that of the price rows, adds up to the total of their currency. Amounts are decimal
    currency units exact to the micro-unit."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, restval="")
    writer.writeheader()
    head = {
        "tenant_id": _cell(statement.tenant_id),
        "tenant": _cell(statement.tenant_name),
        "month": statement.month,
    }
    for line in statement.lines:
        writer.writerow({**head, "section": "usage", **_where(line), **_figures(line)})
    for price in statement.prices:
        writer.writerow({**head, "section": "price", **_price_cells(price)})
    for gap in statement.unpriced:
        writer.writerow({**head, "section": "unpriced", **_where(gap), **_figures(gap)})
    for total in statement.totals:
        writer.writerow({**head, "section": "total", "currency": total.currency, **_figures(total)})
    if (budget := statement.budget) is not None:
        used = budget.used_pct
        writer.writerow(
            {
                **head,
                "section": "budget",
                "currency": budget.currency,
                "cost": format_amount(budget.spent_micros),
                "budget": format_amount(budget.amount_micros),
                "budget_used_pct": "" if used is None else str(used),
            }
        )
    return out.getvalue()


def _cell(text: str) -> str:
    """Text a spreadsheet will not run as a formula (OWASP CSV injection)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _where(line: UsageLine | UnpricedLine) -> dict[str, str]:
    cells = {"model": _cell(line.model), "deployment": _cell(line.deployment)}
    cells["hosting"] = line.hosting
    if isinstance(line, UsageLine):
        cells["currency"] = line.currency
    return cells


def _figures(line: UsageLine | UnpricedLine | Total) -> dict[str, str]:
    cells = {
        "requests": str(line.requests),
        "prompt_tokens": str(line.prompt_tokens),
        "completion_tokens": str(line.completion_tokens),
    }
    if not isinstance(line, UnpricedLine):
        cells["cost"] = format_amount(line.cost_micros)
    return cells


def _rate(micros: int | None) -> str:
    return "" if micros is None else format_amount(micros)


def _price_cells(price: PriceLine) -> dict[str, str]:
    return {
        "model": _cell(price.model),
        "deployment": _cell(price.deployment),
        "currency": price.currency,
        "price_version_id": str(price.version_id),
        "price_effective_from": price.effective_from.isoformat() if price.effective_from else "",
        "input_per_mtok": _rate(price.input_micros_per_mtok),
        "output_per_mtok": _rate(price.output_micros_per_mtok),
        "requests": str(price.requests),
        "cost": format_amount(price.cost_micros),
    }


_CSS = """
body { font: 10.5pt/1.4 system-ui, sans-serif; color: #111; margin: 2em auto; max-width: 60em; }
h1 { font-size: 1.5em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .4em; border-bottom: 1px solid #999; }
p.meta { color: #444; margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: .25em .5em; border-bottom: 1px solid #ddd; text-align: left; }
.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: bold; border-top: 2px solid #111; }
p.note { color: #555; font-size: .9em; }
@page { size: A4; margin: 15mm; }
@media print {
  body { margin: 0; max-width: none; font-size: 9.5pt; }
  thead { display: table-header-group; }
  tr { break-inside: avoid; }
  h2 { break-after: avoid-page; }
}
"""
_COUNTS = ("Requests", "Prompt tokens", "Completion tokens")
_TOTALS = ("Currency", *_COUNTS, "Cost")
_USAGE = ("Model", "Deployment", "Hosting", "Currency", *_COUNTS, "Cost")
_PRICES = ("Version", "Model", "Deployment", "Effective from", "Input per 1M tokens",
           "Output per 1M tokens", "Requests", "Cost")  # fmt: skip
_UNPRICED = ("Model", "Deployment", "Hosting", *_COUNTS)
_BUDGET = ("Monthly budget", "Kind", "Spent this month", "Used", "Alerts raised")


def to_html(statement: Statement) -> str:
    """The statement as a printable, self-contained HTML page (inline CSS, no external asset;
    every value escaped)."""
    s = statement
    usage = [(u.model, u.deployment or "-", u.hosting, u.currency, *_numbers(u)) for u in s.lines]
    totals = [("Total", "", "", t.currency, *_numbers(t)) for t in s.totals]
    unpriced = [(u.model, u.deployment or "-", u.hosting, *_numbers(u)) for u in s.unpriced]
    no_usage = "No priced usage this month."
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>',
            escape(f"Statement {s.month}: {s.tenant_name}"),
            f"</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<h1>Chargeback statement: ",
            f'{escape(s.tenant_name)}</h1>\n<p class="meta">Tenant id {escape(s.tenant_id)}, '
            f"month {escape(s.month)}: requests started from {s.period_start:%Y-%m-%d} "
            f"00:00 UTC to {s.period_end:%Y-%m-%d} 00:00 UTC (exclusive)</p>\n",
            "<h2>Totals</h2>\n",
            _table(_TOTALS, [(t.currency, *_numbers(t)) for t in s.totals], 1, empty=no_usage),
            "<h2>Budget</h2>\n",
            _budget_html(s.budget),
            "<h2>Usage by model and deployment</h2>\n",
            _table(_USAGE, usage, 4, totals=totals, empty=no_usage),
            "<h2>Price versions applied</h2>\n",
            _table(_PRICES, [_price_row(p) for p in s.prices], 4, empty="No price applied."),
            "<h2>Unpriced requests</h2>\n",
            _table(_UNPRICED, unpriced, 3, empty="None: every request was priced."),
            '<p class="note">Unpriced requests had no price in force when they started and are '
            "not in the totals. Amounts are in the currency shown, exact to 0.000001. Source: "
            "the gateway's usage ledger.</p>\n</body>\n</html>\n",
        ]
    )


def _numbers(line: UsageLine | UnpricedLine | Total) -> tuple[str, ...]:
    counts = (f"{line.requests:,}", f"{line.prompt_tokens:,}", f"{line.completion_tokens:,}")
    if isinstance(line, UnpricedLine):
        return counts
    return (*counts, format_amount(line.cost_micros))


def _price_row(p: PriceLine) -> tuple[str, ...]:
    unit = f" {p.currency}" if p.currency else ""
    return (
        str(p.version_id),
        p.model,
        p.deployment or "all deployments",
        p.effective_from.strftime("%Y-%m-%d %H:%M UTC") if p.effective_from else "unknown",
        f"{_rate(p.input_micros_per_mtok) or 'unknown'}{unit}",
        f"{_rate(p.output_micros_per_mtok) or 'unknown'}{unit}",
        f"{p.requests:,}",
        f"{format_amount(p.cost_micros)}{unit}",
    )


def _budget_html(budget: BudgetUse | None) -> str:
    if budget is None:
        return '<p class="meta">No budget set.</p>\n'
    used = budget.used_pct
    row = (
        f"{format_amount(budget.amount_micros)} {budget.currency}",
        "hard cap" if budget.hard else "soft (alerts only)",
        f"{format_amount(budget.spent_micros)} {budget.currency}",
        "n/a" if used is None else f"{used}%",
        ", ".join(f"{t}%" for t in budget.alerts_pct) or "none",
    )
    return _table(_BUDGET, [row], len(_BUDGET), empty="")


def _table(
    headers: tuple[str, ...],
    rows: list[tuple[str, ...]],
    numeric_from: int,
    *,
    totals: Sequence[tuple[str, ...]] = (),
    empty: str,
) -> str:
    """An escaped HTML table; columns from `numeric_from` on are right-aligned numbers."""
    if not rows:
        return f'<p class="meta">{escape(empty)}</p>\n'

    def cells(row: tuple[str, ...]) -> str:
        return "".join(
            f'<td class="n">{escape(v)}</td>' if i >= numeric_from else f"<td>{escape(v)}</td>"
            for i, v in enumerate(row)
        )

    head = "".join(
        f'<th class="n">{escape(h)}</th>' if i >= numeric_from else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = [f"<tr>{cells(row)}</tr>" for row in rows]
    body += [f'<tr class="total">{cells(row)}</tr>' for row in totals]
    return "<table>\n<thead><tr>{}</tr></thead>\n<tbody>\n{}\n</tbody>\n</table>\n".format(
        head, "\n".join(body)
    )
