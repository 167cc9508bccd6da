"""Queries on `budgets` and `budget_alerts`.

A tenant has at most one budget (per-month cap in one currency). The authenticator reads it
with the limits on a cache miss, so a change takes effect within its TTL on every replica.
The caller owns the session and its transaction: these functions flush, never commit.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.db.tables import Budget, BudgetAlert, Tenant
from gateway.errors import InvalidRequest
from gateway.limits.budget import BudgetPolicy


async def set_budget(
    session: AsyncSession, tenant_id: str, policy: BudgetPolicy, now: datetime
) -> None:
    """Create or replace a tenant's budget."""
    if policy.amount_micros < 0 or policy.min_output_tokens < 1:
        raise InvalidRequest("A budget needs an amount >= 0 and min_output_tokens >= 1.")
    if len(policy.currency) != 3 or not policy.currency.isupper():
        raise InvalidRequest("currency must be an ISO 4217 code such as EUR.", param="currency")
    if any(not 0 < t <= 1000 for t in policy.thresholds_pct):
        raise InvalidRequest("thresholds are percentages in (0, 1000].", param="thresholds")
    if await session.get(Tenant, tenant_id) is None:
        raise InvalidRequest(f"Unknown tenant {tenant_id!r}.", param="tenant")
    row = await session.get(Budget, tenant_id)
    if row is None:
        row = Budget(tenant_id=tenant_id)
        session.add(row)
    row.period = "month"
    row.amount_micros = policy.amount_micros
    row.currency = policy.currency
    row.hard = policy.hard
    row.shrink_max_tokens = policy.shrink_max_tokens
    row.min_output_tokens = policy.min_output_tokens
    row.thresholds_pct = sorted(set(policy.thresholds_pct))
    row.updated_at = now
    await session.flush()


async def clear_budget(session: AsyncSession, tenant_id: str) -> bool:
    """Remove a tenant's budget; False when it had none."""
    result = await session.execute(delete(Budget).where(Budget.tenant_id == tenant_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _policy(row: Budget) -> BudgetPolicy:
    return BudgetPolicy(
        amount_micros=row.amount_micros,
        currency=row.currency,
        hard=row.hard,
        shrink_max_tokens=row.shrink_max_tokens,
        min_output_tokens=row.min_output_tokens,
        thresholds_pct=tuple(row.thresholds_pct or ()),
    )


async def load_budget(session: AsyncSession, tenant_id: str) -> BudgetPolicy | None:
    """A tenant's budget, or None."""
    row = await session.get(Budget, tenant_id)
    return None if row is None else _policy(row)


async def all_budgets(session: AsyncSession) -> dict[str, BudgetPolicy]:
    """tenant id -> budget, for the budget watcher."""
    return {row.tenant_id: _policy(row) for row in (await session.scalars(select(Budget))).all()}


async def record_alert(
    session: AsyncSession,
    tenant_id: str,
    period_start: date,
    threshold_pct: int,
    spend_micros: int,
    amount_micros: int,
    now: datetime,
) -> bool:
    """Record that a threshold was crossed; False when it was recorded before."""
    key = (tenant_id, period_start, threshold_pct)
    if await session.get(BudgetAlert, key) is not None:
        return False
    session.add(
        BudgetAlert(
            tenant_id=tenant_id,
            period_start=period_start,
            threshold_pct=threshold_pct,
            spend_micros=spend_micros,
            amount_micros=amount_micros,
            created_at=now,
        )
    )
    await session.flush()
    return True


async def list_alerts(session: AsyncSession, tenant_id: str) -> list[BudgetAlert]:
    """A tenant's alerts, oldest first."""
    statement = (
        select(BudgetAlert)
        .where(BudgetAlert.tenant_id == tenant_id)
        .order_by(BudgetAlert.period_start, BudgetAlert.threshold_pct)
    )
    return list((await session.scalars(statement)).all())
