"""The budget watcher: thresholds crossed, and the limiter's spend rebuilt from the ledger.

Every `interval_s` it reads each budgeted tenant's spend this period from the ledger (the truth)
and:
- records a `budget_alerts` row (once per tenant, period and threshold) and logs a warning for
  each threshold the spend has reached — soft budgets alert this way, hard ones too;
- raises the limiter's budget bucket to the ledger's spend when the bucket shows less (Redis
  lost its keys): the bucket is a cache of the spend, never the record of it.
Only one watcher acts per interval across replicas (a Redis lock in production).

Failure mode: a database or Redis error skips this round (logged); the next one catches up.
The bucket also holds in-flight reservations, so it normally shows more spend than the ledger
and the watcher leaves it alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.clock import Clock
from gateway.db.budgets import all_budgets, record_alert
from gateway.db.usage import spend_micros
from gateway.limits.budget import budget_bucket, format_amount, period_bounds
from gateway.limits.limiter import Limiter
from gateway.observability import metrics

log = logging.getLogger("gateway.budgets")


class BudgetWatcher:
    """Periodic budget checks for every tenant with a budget."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        limiter: Limiter,
        clock: Clock,
        *,
        interval_s: float = 10.0,
        acquire: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.sessions = sessions
        self.limiter = limiter
        self.clock = clock
        self.interval_s = interval_s
        self.acquire = acquire
        self.alerts = 0  # threshold alerts raised by this process
        self.rebuilt = 0  # buckets raised to the ledger's spend

    async def run_forever(self) -> None:
        """Check every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                if self.acquire is None or await self.acquire():
                    await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("budget check skipped: %s", exc)

    async def check_once(self) -> None:
        """One round over every budget."""
        now_s = self.clock.now_s()
        start, end = period_bounds(now_s)
        async with self.sessions() as session, session.begin():
            budgets = await all_budgets(session)
            spends = {
                tenant: await spend_micros(session, tenant, policy.currency, start, end)
                for tenant, policy in budgets.items()
            }
            for tenant, policy in budgets.items():
                spend = spends[tenant]
                for threshold in policy.thresholds_pct:
                    if spend * 100 < threshold * policy.amount_micros:
                        continue
                    new = await record_alert(
                        session,
                        tenant,
                        start.date(),
                        threshold,
                        spend,
                        policy.amount_micros,
                        datetime.fromtimestamp(now_s, tz=UTC),
                    )
                    if new:
                        self.alerts += 1
                        metrics.BUDGET_ALERTS.labels(tenant, str(threshold)).inc()
                        log.warning(
                            "budget threshold %d%% reached by tenant %s: %s of %s %s",
                            threshold,
                            tenant,
                            format_amount(spend),
                            format_amount(policy.amount_micros),
                            policy.currency,
                        )
        for tenant, policy in budgets.items():
            spec = budget_bucket(policy, now_s)
            decision = await self.limiter.reserve(tenant, [(spec, 0)])
            left = next((b.remaining for b in decision.buckets if b.name == spec.name), 0)
            shown = spec.capacity - left
            if left > 0 and spends[tenant] > shown:
                await self.limiter.settle(tenant, [(spec, spends[tenant] - shown)])
                self.rebuilt += 1
                log.info("budget bucket of tenant %s rebuilt from the ledger", tenant)
