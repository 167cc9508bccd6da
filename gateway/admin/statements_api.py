"""`/admin/v1/tenants/{tenant_id}/statements/{month}`: a tenant's monthly chargeback statement.

The document `gateway statement` prints (`ledger/statements.py` builds it from the ledger's
events and renders it); this module picks the representation from `Accept`: JSON by default
(also for `*/*` and for types we do not offer), CSV for `text/csv`, and the printable HTML page
for `text/html` (what a browser asks for first). In JSON, amounts are decimals (`cost`) next
to exact micro-units (`cost_micros`), as in `/usage`. Deployments are labelled La Plateforme
or self-hosted from the routing file this process serves now (a reload is reflected).
The HTML page carries its own Content-Security-Policy: no script, its one inline style by hash
(`STATEMENT_STYLE_SOURCE`, which the cost page's policy allows too, since a statement it opens
from a blob URL inherits that policy).
Failure mode: unknown tenant → 404; a month that is not `YYYY-MM` → 422.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel

from gateway.admin.api import READERS, Call, Operation, Reply, Unprocessable
from gateway.admin.schemas import amount_of
from gateway.errors import InvalidRequest
from gateway.ledger import statements
from gateway.ledger.statements import _CSS as STATEMENT_CSS  # the HTML page's only style

JSON, CSV, HTML = "application/json", "text/csv", "text/html"
OFFERS = (JSON, CSV, HTML)  # in order of preference when the client weighs them the same
STATEMENT_STYLE_SOURCE = (
    f"'sha256-{base64.b64encode(hashlib.sha256(STATEMENT_CSS.encode()).digest()).decode()}'"
)
FIRST_MONTH, LAST_MONTH = "0001-01", "9999-11"  # a statement's [start, end) fits in datetime
HTML_POLICY = f"default-src 'none'; style-src {STATEMENT_STYLE_SOURCE}; frame-ancestors 'none'"


class StatementLine(BaseModel):
    model: str
    deployment: str
    hosting: str
    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    cost: Decimal


class StatementPrice(BaseModel):
    version_id: int
    model: str
    deployment: str
    currency: str
    input_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    effective_from: datetime | None
    requests: int
    cost_micros: int
    cost: Decimal


class StatementUnpriced(BaseModel):
    model: str
    deployment: str
    hosting: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


class StatementTotal(BaseModel):
    currency: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micros: int
    cost: Decimal


class StatementBudget(BaseModel):
    amount: Decimal
    currency: str
    hard: bool
    spent: Decimal
    used_pct: Decimal | None
    alerts_pct: list[int]


class Statement(BaseModel):
    tenant_id: str
    tenant_name: str
    month: str
    period_start: datetime
    period_end: datetime
    lines: list[StatementLine]
    prices: list[StatementPrice]
    unpriced: list[StatementUnpriced]
    totals: list[StatementTotal]
    budget: StatementBudget | None


def _rate(micros: int | None) -> Decimal | None:
    return None if micros is None else amount_of(micros)


def as_statement(s: statements.Statement) -> Statement:
    """The wire shape of a built statement."""
    budget = None
    if (b := s.budget) is not None:
        budget = StatementBudget(
            amount=amount_of(b.amount_micros), currency=b.currency, hard=b.hard,
            spent=amount_of(b.spent_micros), used_pct=b.used_pct, alerts_pct=list(b.alerts_pct),
        )  # fmt: skip
    return Statement(
        tenant_id=s.tenant_id, tenant_name=s.tenant_name, month=s.month,
        period_start=s.period_start, period_end=s.period_end,
        lines=[StatementLine(**dataclasses.asdict(u), cost=amount_of(u.cost_micros)) for u in s.lines],
        prices=[
            StatementPrice(
                version_id=p.version_id, model=p.model, deployment=p.deployment,
                currency=p.currency, input_per_mtok=_rate(p.input_micros_per_mtok),
                output_per_mtok=_rate(p.output_micros_per_mtok),
                effective_from=p.effective_from, requests=p.requests,
                cost_micros=p.cost_micros, cost=amount_of(p.cost_micros),
            )
            for p in s.prices
        ],
        unpriced=[StatementUnpriced(**dataclasses.asdict(u)) for u in s.unpriced],
        totals=[StatementTotal(**dataclasses.asdict(t), cost=amount_of(t.cost_micros)) for t in s.totals],
        budget=budget,
    )  # fmt: skip


def preferred(accept: str | None) -> str:
    """The offer `Accept` weighs highest (most specific range wins, RFC 9110); JSON when the
    header is absent or accepts none of them."""
    ranges: dict[str, float] = {}
    for part in (accept or "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for name, _, value in (param.partition("=") for param in params):
            if name.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.setdefault(media.lower(), quality)

    def weight(offer: str) -> float:
        kind = offer.split("/")[0]
        matching = (ranges[m] for m in (offer, f"{kind}/*", "*/*") if m in ranges)
        return next(matching, 0.0)

    best = max(OFFERS, key=lambda offer: (weight(offer), -OFFERS.index(offer)))
    return best if weight(best) > 0 else JSON


def _providers(call: Call) -> dict[str, str]:
    """Deployment name -> provider, from the routing snapshot served now ({} before start)."""
    gateway = getattr(call.request.app.state, "gateway", None)
    if gateway is None:
        return {}
    return {d.name: d.provider for d in gateway.routing.config.deployments}


async def get_statement(call: Call) -> Reply:
    tenant_id, month = call.params["tenant_id"], call.params["month"]
    if re.fullmatch(r"\d{4}-\d{2}", month) and not FIRST_MONTH <= month <= LAST_MONTH:
        # A well-formed month whose bounds Python's datetime cannot hold (year 0, or 10000).
        raise Unprocessable(f"month must lie between {FIRST_MONTH} and {LAST_MONTH}, not "
                            f"{month!r}.", param="month")  # fmt: skip
    try:
        statement = await statements.build_statement(
            call.session, tenant_id, month, providers=_providers(call)
        )
    except InvalidRequest as exc:  # the month: a path segment, so 422 like any bad parameter
        raise Unprocessable(exc.message, param=exc.param) from None
    kind = preferred(call.request.headers.get("accept"))
    filename = f"statement-{statement.tenant_id}-{statement.month}"  # an id and YYYY-MM: safe
    if kind == CSV:
        return Reply(
            statements.to_csv(statement).encode(), media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{filename}.csv"',
                     "vary": "accept"},
        )  # fmt: skip
    if kind == HTML:
        return Reply(
            statements.to_html(statement).encode(), media_type="text/html; charset=utf-8",
            headers={"content-disposition": f'inline; filename="{filename}.html"',
                     "content-security-policy": HTML_POLICY, "vary": "accept"},
        )  # fmt: skip
    return Reply(as_statement(statement), headers={"vary": "accept"})


OPERATIONS = [
    Operation("GET", "/tenants/{tenant_id}/statements/{month}", get_statement,
              "A tenant's chargeback statement for a month, YYYY-MM (JSON; CSV with "
              "Accept: text/csv; printable HTML with Accept: text/html)", "statements",
              roles=READERS, response=Statement, csv=True, errors=(404, 422)),
]  # fmt: skip
